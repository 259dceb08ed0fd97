"""The endpoint scraped DURING a real ``metersync sync`` loop (CLI in a subprocess) against the
embedded PostgreSQL and the reference server, checked against both databases; the loop's JSON
log lines parse, carry tenant and cycle, and hold no secret."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from _scrape import get, sample, scrape

from fix_engine import Engine

N = 1500  # readings queued for the good tenant: 15 batches of 100
DSN_PASSWORD = "NotThePassword-7d41c9"  # trust auth ignores it; it must never be logged


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _until(what: str, check: Any, timeout: float = 60.0, every: float = 0.1) -> Any:
    """Poll ``check()`` (run in a thread) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        got = await asyncio.to_thread(check)
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(every)


def _metrics_or_none(url: str) -> dict | None:
    try:
        return scrape(url)
    except OSError:
        return None


@pytest.mark.slow
async def test_scrape_during_a_real_sync_loop(engine: Engine, tmp_path: Path) -> None:
    good = await engine.tenant(upload=100)
    bad = await engine.tenant(server=False)  # the server does not know its key: 401s
    await engine.seed(good, N)
    # The first POST of the loop hangs 4 s: the "before" scrape sees the cycle running
    # (a batch fetched) with nothing marked yet.
    engine.server.set_faults("delay=4:1")

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "stderr.log"
    env = {
        **os.environ,
        "METERSYNC_DSN": f"{engine.dsn} password={DSN_PASSWORD}",
        "METERSYNC_API_URL": engine.server.base_url,
    }
    env.pop("METERSYNC_TENANT", None)
    argv = [sys.executable, "-m", "metersync", "--log-format", "json", "-vvv"]
    argv += ["sync", "--all-tenants", "--interval", "1", "--metrics-port", str(port)]
    with log_path.open("wb") as stderr:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr, env=env)
    try:
        # -- during the first cycle, before anything is marked --------------------------------
        def fetched() -> dict | None:
            samples = _metrics_or_none(url)
            if samples and sample(
                samples, "metersync_batch_phase_seconds_count", tenant_id=good, phase="fetch"
            ):
                return samples
            return None

        before = await _until("the first batch fetched", fetched, timeout=30)
        (row,) = await engine.db.queue_status(good)
        assert row.pending == N
        assert sample(before, "metersync_readings_pending", tenant_id=good) == N
        assert not sample(before, "metersync_readings_uploaded_total", tenant_id=good)
        assert sample(before, "metersync_sync_database_up") == 1
        status, body = await asyncio.to_thread(get, f"{url}/healthz")
        assert status == 200, body

        # -- after the backlog went up ---------------------------------------------------------
        def drained() -> dict | None:
            samples = _metrics_or_none(url)
            if (
                samples
                and sample(samples, "metersync_readings_uploaded_total", tenant_id=good) == N
                and sample(samples, "metersync_readings_pending", tenant_id=good) == 0
            ):
                return samples
            return None

        after = await _until("the backlog uploaded and the gauge refreshed", drained)
        (row,) = await engine.db.queue_status(good)
        assert (row.pending, row.failed, row.synchronized) == (0, 0, N)
        assert engine.server.rows(good) == N
        assert not sample(after, "metersync_readings_rejected_total", tenant_id=good)
        assert sample(after, "metersync_oldest_pending_age_seconds", tenant_id=good) == 0
        ok = dict(tenant_id=good, operation="upload", outcome="ok", error_kind="none")
        assert sample(after, "metersync_cycles_total", **ok) >= 1
        refused = [
            labels
            for (name, labels), value in after.items()
            if name == "metersync_cycles_total"
            and dict(labels)["tenant_id"] == str(bad)
            and dict(labels)["outcome"] == "error"
            and value >= 1
        ]
        assert refused and dict(refused[0])["error_kind"] == "AuthError", after
        sizes = {
            dict(labels)["direction"]: value
            for (name, labels), value in after.items()
            if name == "metersync_batch_size" and dict(labels)["tenant_id"] == str(good)
        }
        assert sizes["upload"] == 100
        assert sample(after, "metersync_client_profile", profile="metersync") == 1
        for phase in ("fetch", "encode", "post", "mark"):
            count = sample(
                after, "metersync_batch_phase_seconds_count", tenant_id=good, phase=phase
            )
            assert count is not None and count >= N // 100, (phase, count)

        # Statements counted == statements recorded in sync_log (between two cycles).
        async def statements_agree() -> bool:
            counted = sample(
                await asyncio.to_thread(scrape, url),
                "metersync_sql_statements_total",
                tenant_id=good,
            )
            logged = await engine.scalar(
                "SELECT coalesce(sum(statements), 0) FROM sync_log WHERE tenant_id = %s", good
            )
            return counted == logged

        for _ in range(50):
            if await statements_agree():
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("metersync_sql_statements_total never matched sync_log")

        status, body = await asyncio.to_thread(get, f"{url}/healthz")
        doc = orjson.loads(body)
        assert status == 200, body
        assert doc["checks"]["database"]["ok"] and doc["checks"]["cycles"]["ok"]
        assert str(good) in doc["tenants"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(proc.wait, 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        finally:
            if proc.stdout is not None:
                proc.stdout.close()
    text = log_path.read_text()
    assert code == 0, text[-3000:]

    # -- the logs -------------------------------------------------------------------------------
    for secret in (engine.keys[good], engine.keys[bad], DSN_PASSWORD):
        assert secret not in text
    lines = [orjson.loads(line) for line in text.splitlines() if line.strip()]
    assert lines, "no log lines"
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line), line
    mine = [x for x in lines if x.get("tenant") == good]
    assert any(x.get("operation") == "upload" and "cycle" in x for x in mine), mine[:5]
    summary = [x for x in mine if x["logger"] == "metersync.engine.upload" and "counts" in x]
    assert sum(x["counts"]["confirmed"] for x in summary) == N
    assert all("seconds" in x for x in summary)
    assert any(x.get("tenant") == bad and x["level"] == "ERROR" for x in lines)

"""``metersync demo`` end to end: with injected faults it still verifies exactly-once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import orjson

import metersync
from metersync.tools.demo import DEMO_TENANTS, split_readings


def test_split_gives_every_tenant_pending_and_preloaded_readings() -> None:
    plan = split_readings(20_000)
    assert [t for t, _, _ in plan] == list(DEMO_TENANTS)
    assert sum(local + preload for _, local, preload in plan) == 20_000
    assert all(local > preload > 0 for _, local, preload in plan)
    sizes = {(t.upload_batch_size, t.download_batch_size) for t, _, _ in plan}
    assert len(sizes) == len(DEMO_TENANTS)  # different batch sizes per tenant


def test_demo_with_faults_verifies_exactly_once(pg_admin_dsn: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERSYNC_")}
    env["METERSYNC_IMPL"] = metersync.__impl__
    proc = subprocess.run(
        [sys.executable, "-m", "metersync", "demo", "--readings", "20000", "--faults", "--json",
         "--dsn", pg_admin_dsn],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    # Injected faults are not failures: no aiohttp traceback. Piped, it still says what it does.
    assert "Traceback" not in proc.stderr and "ConnectionResetError" not in proc.stderr
    for phase in ("generating", "download phase", "upload phase", "verifying"):
        assert f"demo: {phase}" in proc.stderr, proc.stderr
    doc = orjson.loads(proc.stdout)  # exactly one JSON document on stdout
    assert doc["lost"] == 0 and doc["duplicates"] == 0
    assert doc["exactly_once"] is True
    assert doc["readings"] == 20_000 and doc["client_rows"] == 20_000
    preloaded = sum(t["preloaded"] for t in doc["tenants"])
    assert doc["downloaded"] == preloaded > 0
    assert doc["uploaded"] == 20_000 - preloaded
    assert doc["impl"] == metersync.__impl__
    assert doc["faults"] is True and sum(doc["faults_injected"].values()) > 0
    # Lost responses after commit were absorbed by the Client System's idempotency.
    assert doc["server"]["inserted"] == doc["uploaded"]
    assert doc["upload_readings_per_s"] > 0 and doc["statements_per_100k_upload"] > 0


def test_demo_stops_cleanly_on_sigterm(pg_admin_dsn: str) -> None:
    import psycopg

    def demo_databases() -> set[str]:
        with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE 'metersync_demo_%'"
            ).fetchall()
        return {r[0] for r in rows}

    before = demo_databases()
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERSYNC_")}
    env["METERSYNC_IMPL"] = metersync.__impl__
    with subprocess.Popen(
        [sys.executable, "-m", "metersync", "demo", "--readings", "500000", "--dsn", pg_admin_dsn],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    ) as proc:  # fmt: skip
        assert proc.stderr is not None
        for line in proc.stderr:  # wait until the demo is under way
            if "reference Client System on" in line:
                break
        assert len(demo_databases() - before) == 2  # sync + Client System scratch databases
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert demo_databases() == before  # both scratch databases dropped

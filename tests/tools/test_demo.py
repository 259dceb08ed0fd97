"""``metersync demo`` end to end: with injected faults it still verifies exactly-once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import orjson
import psycopg

import metersync
from fix_server import ServerHandle
from metersync import codec
from metersync.tools.demo import (
    DEMO_TENANTS,
    TenantOutcome,
    _pending_ids,
    _verify,
    split_readings,
)
from metersync.tools.synthetic import reading_batch


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


def test_demo_against_metertrack_with_faults_resolves_what_is_in_doubt(
    pg_admin_dsn: str,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERSYNC_")}
    env["METERSYNC_IMPL"] = metersync.__impl__
    proc = subprocess.run(
        [sys.executable, "-m", "metersync", "demo", "--readings", "3000", "--faults", "--json",
         "--client-profile", "metertrack", "--dsn", pg_admin_dsn],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "demo: no download phase" in proc.stderr
    doc = orjson.loads(proc.stdout)
    assert doc["client_profile"] == "metertrack"
    assert (doc["readings"], doc["client_rows"], doc["lost"], doc["duplicates"]) == (
        3000,
        3000,
        0,
        0,
    )
    assert doc["exactly_once"] is True and doc["downloaded"] == 0
    # Delays past the read timeout and drops after commit left batches in doubt; the demo
    # looked at the kept ids and resolved every one of them.
    assert doc["faults_injected"].get("delay", 0) + doc["faults_injected"]["drop_after_commit"] > 0
    resolution = doc["in_doubt_resolution"]
    assert doc["in_doubt"] > 0
    assert resolution["marked_synchronized"] + resolution["resent"] == doc["in_doubt"]
    assert resolution["unresolved"] == 0
    assert doc["server"]["duplicate_copies"] == 0 and doc["server"]["inserted"] == 3000


def _tenant_outcome(tenant_id: int, pending: int) -> TenantOutcome:
    return TenantOutcome(tenant_id, "t", 100, 100, local_pending=pending)


async def _site_with_readings(dsn: str, tenant_id: int, n: int) -> tuple[bytes, set[str]]:
    from metersync.store.database import SyncDatabase

    async with await SyncDatabase.connect(dsn) as db:
        await db.migrate()
        await db.add_tenant(tenant_id, "t", "k")
        batch = reading_batch(n, seed=tenant_id, tenant_id=tenant_id)
        await db.insert_readings(batch, 100)
    ids = await _pending_ids(dsn, [tenant_id])
    return codec.json_rows(batch.drop_columns(["tenant_id"]), profile="metertrack"), ids[tenant_id]


async def test_duplicate_count_counts_copies_on_metertrack(
    fresh_dsn: str, metertrack_server: ServerHandle
) -> None:
    tenant_id, key = metertrack_server.new_tenant()
    rows, ids = await _site_with_readings(fresh_dsn, tenant_id, 3)
    for _ in range(2):  # a resend: the MeterTrack Client System stores a second copy
        answer = httpx.post(
            f"{metertrack_server.base_url}/sync/readings/batch",
            content=b'{"readings":' + rows + b"}",
            headers={"X-API-Key": key, "Content-Type": "application/json"},
        )
        assert answer.json()["inserted"] == 3
    outcome = _tenant_outcome(tenant_id, 3)
    stats = metertrack_server.stats()
    await _verify([outcome], fresh_dsn, metertrack_server.dsn, stats, {tenant_id: ids},
                  metertrack=True)  # fmt: skip
    assert (outcome.client_rows, outcome.duplicates, outcome.lost) == (6, 3, 0)


async def test_duplicate_count_does_not_rest_on_the_reference_servers_key(
    fresh_dsn: str, reference_server: ServerHandle
) -> None:
    tenant_id, key = reference_server.new_tenant()
    rows, ids = await _site_with_readings(fresh_dsn, tenant_id, 3)
    url = f"{reference_server.base_url}/sync/readings/batch"
    for attempt in range(2):
        answer = httpx.post(url, content=b'{"readings":' + rows + b"}", headers={"X-API-Key": key})
        assert answer.json()["inserted"] == 3
        if attempt == 0:
            # The server loses what it stored: the resend is stored again, a second insert of
            # the same readings that its primary key alone would never show.
            with psycopg.connect(reference_server.dsn, autocommit=True) as conn:
                conn.execute("DELETE FROM cs_meter_reading WHERE tenant_id = %s", (tenant_id,))
    outcome = _tenant_outcome(tenant_id, 3)
    stats = reference_server.stats()
    assert stats["inserted_per_tenant"] == {str(tenant_id): 6}
    await _verify([outcome], fresh_dsn, reference_server.dsn, stats, {tenant_id: ids})
    assert (outcome.client_rows, outcome.duplicates, outcome.lost) == (3, 3, 0)


def test_demo_tables_show_the_verdict_as_a_plain_word(pg_admin_dsn: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERSYNC_")}
    proc = subprocess.run(
        [sys.executable, "-m", "metersync", "demo", "--readings", "2000",
         "--client-profile", "metertrack", "--dsn", pg_admin_dsn],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "VERIFIED" in proc.stdout and "[bold" not in proc.stdout
    assert "metertrack" in proc.stdout

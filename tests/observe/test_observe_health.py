"""/healthz, /readyz, /livez and the queue gauges against a real sync database."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import orjson
import pytest
from _scrape import get, sample, scrape

from fix_engine import Engine
from fix_pg import create_database, drop_database
from metersync import observe
from metersync.observe import ACTIVITY


@pytest.fixture
def clean_activity() -> Iterator[None]:
    """Liveness stamps of this test only (the hooks write a process-wide table)."""
    ACTIVITY.reset()
    yield
    ACTIVITY.reset()


async def _migrate(dsn: str) -> None:
    from metersync.store.database import SyncDatabase

    async with await SyncDatabase.connect(dsn) as db:
        await db.migrate()


def test_healthz_is_503_naming_the_database_when_it_goes_away(pg_admin_dsn: str) -> None:
    dsn = create_database(pg_admin_dsn, "ms_health")
    try:
        asyncio.run(_migrate(dsn))
        with observe.serve(0, dsn=dsn) as server:
            status, body = get(f"{server.url}/healthz")
            doc = orjson.loads(body)
            assert status == 200, body
            assert doc["status"] == "ok" and doc["checks"]["database"]["ok"] is True
            assert get(f"{server.url}/readyz")[0] == 200

            drop_database(pg_admin_dsn, dsn)  # terminates the endpoint's session too

            status, body = get(f"{server.url}/healthz")
            doc = orjson.loads(body)
            assert status == 503, body
            assert doc["failed"] == ["database"]
            assert "unreachable" in doc["checks"]["database"]["detail"]
            assert get(f"{server.url}/readyz")[0] == 503
            # The queue gauges are left out rather than stale; the up gauge says why.
            samples = scrape(server.url)
            assert sample(samples, "metersync_sync_database_up") == 0
            assert not [k for k in samples if k[0] == "metersync_readings_pending"]
    finally:
        drop_database(pg_admin_dsn, dsn)


def test_healthz_is_503_naming_the_stale_tenant(clean_activity: None) -> None:
    interval = 0.4  # stale after 3 x 0.4 s without progress
    with observe.serve(0, interval=interval) as server:
        observe.cycle(770_001, "upload", "ok", None)
        observe.cycle(770_002, "upload", "error", "RemoteUnavailableError")  # alive all the same
        status, body = get(f"{server.url}/healthz")
        assert status == 200, body
        assert orjson.loads(body)["tenants"]["770002"]["last_outcome"] == "error"

        deadline = time.monotonic() + 1.6
        while time.monotonic() < deadline:  # 770_002 keeps moving (batches), 770_001 does not
            observe.phase("post", 770_002, 0.01)
            time.sleep(0.1)

        status, body = get(f"{server.url}/healthz")
        doc = orjson.loads(body)
        assert status == 503, body
        assert doc["failed"] == ["cycles"]
        assert "tenant 770001: last progress" in doc["checks"]["cycles"]["detail"]
        assert "770002" not in doc["checks"]["cycles"]["detail"]
        assert get(f"{server.url}/livez")[0] == 503

        observe.cycle(770_001, "download", "ok", None)
        assert get(f"{server.url}/healthz")[0] == 200


def test_no_cycle_at_all_is_stale_too(clean_activity: None) -> None:
    with observe.serve(0, interval=0.2, stale_intervals=2) as server:
        assert get(f"{server.url}/livez")[0] == 200
        time.sleep(0.5)
        status, body = get(f"{server.url}/livez")
        assert status == 503
        assert "no progress at all" in body


def test_extra_checks_of_the_daemon() -> None:
    verdict: dict[str, str | None] = {"listener": None}
    with observe.serve(0, health=lambda: verdict) as server:
        assert get(f"{server.url}/healthz")[0] == 200
        verdict["listener"] = "LISTEN connection lost"
        status, body = get(f"{server.url}/healthz")
        doc = orjson.loads(body)
        assert status == 503 and doc["failed"] == ["listener"]
        assert doc["checks"]["listener"]["detail"] == "LISTEN connection lost"


async def test_queue_gauges_equal_the_database_and_are_cached(engine: Engine) -> None:
    tenant = await engine.tenant()
    await engine.seed(tenant, 300)
    server = await asyncio.to_thread(observe.serve, 0, dsn=engine.dsn, queue_ttl=30)
    try:
        samples = await asyncio.to_thread(scrape, server.url)
        (row,) = await engine.db.queue_status(tenant)
        assert sample(samples, "metersync_readings_pending", tenant_id=tenant) == row.pending == 300
        assert sample(samples, "metersync_readings_failed", tenant_id=tenant) == 0
        assert sample(samples, "metersync_readings_quarantined", tenant_id=tenant) == 0
        age = sample(samples, "metersync_oldest_pending_age_seconds", tenant_id=tenant)
        # Synthetic readings are dated in the past: compare with the database's own figure.
        assert age == pytest.approx(row.oldest_pending_age_s, abs=5)

        # Within the TTL a scrape does not query again: the new readings are not seen yet.
        await engine.seed(tenant, 50)
        samples = await asyncio.to_thread(scrape, server.url)
        assert sample(samples, "metersync_readings_pending", tenant_id=tenant) == 300

        # Five readings held in doubt (what the upload does when an outcome is unknown).
        await engine.scalar(
            "UPDATE meter_reading SET sync_status = 'in_doubt', in_doubt_since = now() "
            "WHERE meter_reading_id IN (SELECT meter_reading_id FROM meter_reading "
            "WHERE tenant_id = %s ORDER BY created_at LIMIT 5)",
            tenant,
        )
        observe.metrics.QUEUE.refresh(force=True)
        samples = await asyncio.to_thread(scrape, server.url)
        (row,) = await engine.db.queue_status(tenant)
        assert row.in_doubt == 5
        assert sample(samples, "metersync_readings_pending", tenant_id=tenant) == row.pending == 345
        assert sample(samples, "metersync_readings_in_doubt", tenant_id=tenant) == 5
        held = sample(samples, "metersync_oldest_in_doubt_age_seconds", tenant_id=tenant)
        assert held is not None and 0 <= held < 60
    finally:
        await asyncio.to_thread(server.close)


def test_a_tenant_waiting_in_a_long_cycle_is_not_stale_one_skipped_is(
    clean_activity: None,
) -> None:
    first = observe.loop_cycle(1)  # also binds the log field `cycle`: unbound at the end
    with observe.serve(0, interval=0.2, stale_intervals=2) as server:  # limit 0.4 s
        observe.cycle(770_011, "upload", "ok", None)  # A's turn in cycle 1
        observe.loop_cycle(2)
        observe.cycle(770_011, "upload", "ok", None)  # A's turn in cycle 2, then B drains...
        deadline = time.monotonic() + 0.8
        while time.monotonic() < deadline:
            observe.phase("post", 770_012, 0.01)
            time.sleep(0.05)
        status, body = get(f"{server.url}/livez")
        assert status == 200, body  # A waits for cycle 3: not stale

        observe.loop_cycle(3)  # cycle 3 runs without serving A at all ...
        observe.cycle(770_012, "upload", "ok", None)
        observe.loop_cycle(4)  # ... and is complete now
        observe.cycle(770_012, "upload", "ok", None)
        status, body = get(f"{server.url}/livez")
        assert status == 503, body
        detail = orjson.loads(body)["checks"]["cycles"]["detail"]
        assert "tenant 770011" in detail and "770012" not in detail
    observe.unbind(first)

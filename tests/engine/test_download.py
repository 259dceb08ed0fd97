"""Download cycle against the real sync database and the real reference server (spec §5)."""

from __future__ import annotations

import math

import pytest

from fix_engine import Engine
from metersync.errors import TenantBusyError
from metersync.store.database import SyncDatabase

VALUES_SQL = (
    "SELECT meter_reading_id::text, created_at, meter_id, meter_element_id, active_energy, "
    "power, voltage_thd FROM meter_reading WHERE tenant_id = %s ORDER BY meter_reading_id"
)


async def _uploaded_then_wiped(engine: Engine, tenant: int, n: int) -> list[tuple[object, ...]]:
    """Upload n readings, remember them, delete them locally (a wiped site)."""
    await engine.seed(tenant, n)
    report = await engine.uploader(tenant).upload()
    assert report.confirmed == n
    before = await engine.rows(VALUES_SQL, tenant)
    await engine.scalar("DELETE FROM meter_reading WHERE tenant_id = %s RETURNING 1", tenant)
    assert await engine.status_counts(tenant) == {}
    return before


async def test_backfill_restores_every_reading_exactly(engine: Engine) -> None:
    tenant = await engine.tenant(upload=4, download=10)
    before = await _uploaded_then_wiped(engine, tenant, 25)
    report = await engine.downloader(tenant).download()
    assert report.error is None
    assert (report.download_batch_size, report.upload_batch_size) == (10, 4)
    assert (report.pages, report.readings, report.inserted, report.skipped) == (3, 25, 25, 0)
    # COPY chunks of upload_batch_size: pages of 10, 10, 5 → 3 + 3 + 2 chunks.
    assert report.chunks == 3 + 3 + 2
    assert await engine.rows(VALUES_SQL, tenant) == before
    # Stored synchronized: never uploaded back.
    assert await engine.status_counts(tenant) == {"synchronized:true": 25}
    received = engine.server.stats()["readings_received"]
    again = await engine.uploader(tenant).upload()
    assert again.readings_sent == 0
    assert engine.server.stats()["readings_received"] == received


async def test_cursor_resumes_and_nothing_is_inserted_twice(engine: Engine) -> None:
    tenant = await engine.tenant(upload=100, download=8)
    await _uploaded_then_wiped(engine, tenant, 20)
    first = await engine.downloader(tenant, max_pages=1).download()
    assert (first.pages, first.inserted) == (1, 8)
    cursor = await engine.db.get_download_cursor(tenant)
    assert cursor is not None and cursor == first.cursor
    rest = await engine.downloader(tenant).download()
    assert rest.inserted == 12
    again = await engine.downloader(tenant).download()
    # The cursor of the last (short) page was kept: a caught-up tenant reads nothing again.
    assert (again.readings, again.inserted) == (0, 0)
    assert await engine.status_counts(tenant) == {"synchronized:true": 20}


async def test_readings_already_present_are_skipped(engine: Engine) -> None:
    tenant = await engine.tenant(upload=6, download=50)
    await engine.seed(tenant, 15)
    await engine.uploader(tenant).upload()
    report = await engine.downloader(tenant).download()
    assert (report.readings, report.inserted, report.skipped) == (15, 0, 15)
    assert await engine.status_counts(tenant) == {"synchronized:true": 15}


async def test_only_our_tenants_readings_come_down(engine: Engine) -> None:
    ours = await engine.tenant(download=100)
    theirs = await engine.tenant(download=100)
    await engine.seed(theirs, 9)
    await engine.uploader(theirs).upload()
    report = await engine.downloader(ours).download()
    assert report.readings == 0
    assert await engine.status_counts(ours) == {}


async def test_statements_per_page(engine: Engine) -> None:
    tenant = await engine.tenant(upload=5, download=20)
    await _uploaded_then_wiped(engine, tenant, 40)
    report = await engine.downloader(tenant).download()
    assert report.inserted == 40
    # Per page: existing-id check + ceil(20/5) COPY + cursor, inside one transaction; plus
    # cursor read, layout, lock/unlock and the cache's load per cycle.
    pages = math.ceil(40 / 20)
    assert report.statements <= pages * (3 + math.ceil(20 / 5) + 2) + 10


async def test_second_downloader_is_busy(engine: Engine) -> None:
    tenant = await engine.tenant()
    async with await SyncDatabase.connect(engine.dsn) as other:
        assert await other.try_lock_tenant(tenant, "download")
        with pytest.raises(TenantBusyError, match="download lock"):
            await engine.downloader(tenant).download()
        await other.unlock_tenant(tenant, "download")
    assert engine.server.stats()["readings_served"] == 0


EXTREMES = [
    "99999999999999.9999",
    "-99999999999999.9999",
    "0.0001",
    "-0.0001",
    "12345678901234.5678",
]


async def test_extreme_numeric_values_round_trip_through_the_client_system(engine: Engine) -> None:
    tenant = await engine.tenant(upload=10, download=10)
    await engine.seed(tenant, len(EXTREMES))
    ids = sorted(await engine.local_ids(tenant))
    for rid, value in zip(ids, EXTREMES, strict=True):
        await engine.scalar(
            "UPDATE meter_reading SET active_energy = %s::numeric WHERE meter_reading_id = %s",
            value,
            rid,
        )
    await engine.uploader(tenant).upload()
    await engine.scalar("DELETE FROM meter_reading WHERE tenant_id = %s", tenant)
    report = await engine.downloader(tenant).download()
    assert report.inserted == len(EXTREMES)
    rows = await engine.rows(
        "SELECT meter_reading_id::text, active_energy::text FROM meter_reading "
        "WHERE tenant_id = %s ORDER BY 1",
        tenant,
    )
    assert [v for _, v in rows] == EXTREMES

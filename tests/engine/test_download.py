"""Download cycle against the real sync database and the real reference server (spec §5)."""

from __future__ import annotations

import asyncio
import logging
import math
import re
import uuid
from typing import Any

import pytest

from fix_engine import Engine
from metersync.engine.download import UNIT_PAGES, DownloadManager
from metersync.engine.tenant_cache import TenantCache
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
    # COPY chunks of upload_batch_size, per page: pages of 10, 10, 5 → 3 + 3 + 2 chunks.
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


class _Recorder:
    """Delegates to the real object, noting when chosen coroutine methods start and end."""

    def __init__(self, inner: Any, events: list[str], *names: str, delay: float = 0.0) -> None:
        self._inner = inner
        self._events = events
        self._names = names
        self._delay = delay

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in self._names:
            return attr

        async def recorded(*args: Any, **kwargs: Any) -> Any:
            self._events.append(f"{name} start")
            try:
                await asyncio.sleep(self._delay)
                return await attr(*args, **kwargs)
            finally:
                self._events.append(f"{name} end")

        return recorded


async def test_next_page_is_fetched_while_the_previous_is_written(engine: Engine) -> None:
    tenant = await engine.tenant(upload=5, download=10)
    await _uploaded_then_wiped(engine, tenant, 30)
    events: list[str] = []
    db = _Recorder(engine.db, events, "store_download_pages")
    client = _Recorder(engine.client(tenant), events, "get_readings")
    manager = DownloadManager(db, client, TenantCache(engine.db), tenant_id=tenant)
    report = await manager.download()
    assert (report.pages, report.inserted) == (3, 30)
    stored = [i for i, e in enumerate(events) if e == "store_download_pages end"]
    fetches = [i for i, e in enumerate(events) if e == "get_readings start"]
    # (the third page is full, so a fourth, empty one is asked for too)
    assert len(fetches) == 4 and 1 <= len(stored) <= 3
    # Page 2 is asked for before page 1 is stored: the fetcher does not wait for the writer.
    assert fetches[1] < stored[0]
    # ... yet the pages commit with their cursor: the last one's is stored.
    assert await engine.db.get_download_cursor(tenant) == report.cursor


class _MisleadingHints:
    """The real client, except that the engine's early look at each body (``on_body``) sees
    a cursor that is not the page's: every early request then asks for the wrong page."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.asked: list[str | None] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def get_readings(self, limit: int, after: str | None = None, **kwargs: Any) -> Any:
        self.asked.append(after)
        on_body = kwargs.pop("on_body", None)

        def mislead(body: bytes) -> None:
            if on_body is not None:
                on_body(re.sub(rb'"next_cursor":\s*"[^"]*"', b'"next_cursor":"bogus"', body))

        return await self._inner.get_readings(limit, after, on_body=mislead, **kwargs)


async def test_hints_the_parse_contradicts_are_dropped_with_their_chain(engine: Engine) -> None:
    """Early requests go out on the body's cursor hint, chained a few pages ahead; when the
    parse says another cursor, those requests (and the ones chained on them) are dropped and
    the right page is asked for: every reading stored once, the cursor where the pages end."""
    tenant = await engine.tenant(upload=10, download=10)
    await _uploaded_then_wiped(engine, tenant, 45)
    client = _MisleadingHints(engine.client(tenant))
    report = await DownloadManager(
        engine.db, client, TenantCache(engine.db), tenant_id=tenant
    ).download()
    assert (report.pages, report.inserted, report.skipped) == (5, 45, 0)
    assert "bogus" in client.asked  # the hint was followed ... and then not used
    assert len(await engine.local_ids(tenant, "is_synchronized")) == 45
    assert await engine.db.get_download_cursor(tenant) == report.cursor


async def test_pages_waiting_for_a_slow_writer_commit_together(engine: Engine) -> None:
    tenant = await engine.tenant(upload=4, download=10)
    before = await _uploaded_then_wiped(engine, tenant, 60)
    events: list[str] = []
    # A writer slower than the Client System: pages pile up (at most UNIT_PAGES) meanwhile.
    db = _Recorder(engine.db, events, "store_download_pages", delay=0.2)
    manager = DownloadManager(
        db, engine.client(tenant), TenantCache(engine.db), tenant_id=tenant, second_writer=False
    )
    report = await manager.download()
    assert report.error is None
    assert (report.pages, report.readings, report.inserted) == (6, 60, 60)
    stores = events.count("store_download_pages end")
    # Page 1 alone (nothing waits yet), then the pages that waited, UNIT_PAGES at most at once.
    assert math.ceil(6 / UNIT_PAGES) + 1 <= stores < 6
    # Each page still COPYs in chunks of upload_batch_size (4 + 4 + 2 rows).
    assert report.chunks == 6 * 3
    assert await engine.rows(VALUES_SQL, tenant) == before
    assert await engine.db.get_download_cursor(tenant) == report.cursor
    assert await engine.status_counts(tenant) == {"synchronized:true": 60}


class _TwoWriters(_Recorder):
    """The lock's session, slowed down, whose second session (``download_writer``) is recorded
    too; ``fail_on``: its own store of that number raises after the delay."""

    def __init__(self, inner: Any, delay: float, fail_on: int = 0) -> None:
        super().__init__(inner, [], "store_download_pages", delay=delay)
        self.second_events: list[str] = []
        self.calls = 0
        self.fail_on = fail_on

    async def store_download_pages(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        self._events.append("first store")
        await asyncio.sleep(self._delay)
        if self.calls == self.fail_on:
            raise RuntimeError("injected: the lock's session fails its unit")
        return await self._inner.store_download_pages(*args, **kwargs)

    async def download_writer(self) -> Any:
        second = await self._inner.download_writer()
        return _Recorder(second, self.second_events, "store_download_pages")


async def _ids_up_to(engine: Engine, tenant: int, cursor: str | None, size: int) -> set[bytes]:
    """The ids the Client System serves on its pages up to (and including) the one that ends
    at ``cursor``."""
    schema = (await engine.db.layout()).upload_schema
    ids: set[bytes] = set()
    after: str | None = None
    client = engine.client(tenant)
    while after != cursor:
        page = await client.get_readings(size, after, schema=schema, tenant_id=tenant)
        assert page.batch.num_rows, f"cursor {cursor!r} is not where a page ends"
        ids.update(page.batch.column("meter_reading_id").to_pylist())
        after = page.next_cursor
    return ids


async def test_a_second_session_stores_units_while_the_first_commits(engine: Engine) -> None:
    tenant = await engine.tenant(upload=4, download=10)
    before = await _uploaded_then_wiped(engine, tenant, 80)
    db = _TwoWriters(engine.db, delay=0.1)
    manager = DownloadManager(db, engine.client(tenant), TenantCache(engine.db), tenant_id=tenant)
    report = await manager.download()
    assert report.error is None
    assert (report.pages, report.readings, report.inserted) == (8, 80, 80)
    assert db.second_events.count("store_download_pages end") >= 1  # the second session wrote
    assert await engine.rows(VALUES_SQL, tenant) == before
    assert await engine.db.get_download_cursor(tenant) == report.cursor


async def test_a_unit_after_a_failed_one_never_commits(engine: Engine) -> None:
    """Cursors commit in page order across the two sessions: when the lock's session fails a
    unit, the unit after it (on the second session, waiting to commit) rolls back, so the
    stored cursor never passes a page that is not stored."""
    tenant = await engine.tenant(upload=4, download=10)
    before = await _uploaded_then_wiped(engine, tenant, 100)
    db = _TwoWriters(engine.db, delay=0.15, fail_on=2)
    manager = DownloadManager(db, engine.client(tenant), TenantCache(engine.db), tenant_id=tenant)
    with pytest.raises(RuntimeError, match="injected"):
        await manager.download()
    assert db.second_events.count("store_download_pages end") >= 1
    cursor = await engine.db.get_download_cursor(tenant)
    stored = {uuid.UUID(i).bytes for i in await engine.local_ids(tenant)}
    # Exactly the readings of the pages up to the cursor: nothing of a unit after the failed one.
    assert cursor is not None and 0 < len(stored) < 100
    assert stored == await _ids_up_to(engine, tenant, cursor, 10)
    again = await engine.downloader(tenant).download()
    assert again.error is None and again.inserted == 100 - len(stored)
    assert await engine.rows(VALUES_SQL, tenant) == before


async def test_no_download_from_a_client_system_without_it(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    tenant = await engine.tenant()
    served = engine.server.stats()["readings_served"]
    with caplog.at_level(logging.WARNING, logger="metersync.engine.download"):
        for _ in range(2):
            client = engine.client(tenant, client_profile="metertrack")
            report = await engine.downloader(tenant, client=client).download()
            assert report.success and (report.pages, report.readings) == (0, 0)
    said = [r for r in caplog.records if "offers no download" in r.getMessage()]
    assert len(said) == 1  # once per run, not once per cycle
    assert engine.server.stats()["readings_served"] == served


async def test_a_site_does_not_download_back_what_it_uploaded(engine: Engine) -> None:
    tenant = await engine.tenant(upload=1000, download=1000)
    await engine.seed(tenant, 3000)
    here = engine.client(tenant, site_id="site-here")
    assert (await engine.uploader(tenant, client=here).upload()).confirmed == 3000
    served = engine.server.stats()["readings_served"]
    report = await engine.downloader(
        tenant, client=engine.client(tenant, site_id="site-here")
    ).download()
    assert report.success
    assert (report.pages, report.readings) == (0, 0)
    assert engine.server.stats()["readings_served"] == served
    # The cursor moved past this site's own readings: the next cycle does not look at them again.
    assert await engine.db.get_download_cursor(tenant) is not None
    # Another site (another sync database, starting from no cursor) does get them.
    await engine.scalar("DELETE FROM sync_state WHERE tenant_id = %s", tenant)
    other = await engine.downloader(
        tenant, client=engine.client(tenant, site_id="site-there"), max_pages=1
    ).download()
    assert (other.pages, other.readings, other.skipped) == (1, 1000, 1000)

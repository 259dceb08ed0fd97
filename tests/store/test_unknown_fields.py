"""Issue 11 item 10: a download into a ``meter_reading`` with fewer columns than the Client
System sends is refused by default, with an error naming the setting that drops the extra
fields; with ``drop_unknown_fields`` (names or ``"*"``) the page is stored."""

from __future__ import annotations

import psycopg
import pytest

from fix_engine import Engine
from metersync.engine.scheduler import EngineOptions, Scheduler
from metersync.errors import MalformedPageError
from metersync.store.database import SyncDatabase


async def _download(db: SyncDatabase, engine: Engine, tenant: int, drop: object) -> object:
    scheduler = Scheduler(database=db, options=EngineOptions(drop_unknown_fields=drop))
    await scheduler.open()
    try:
        scheduler.add_tenant(tenant, engine.client(tenant))
        return await scheduler.run_operation(tenant, "download")
    finally:
        await scheduler.close()


@pytest.mark.parametrize("drop", [("voltage_thd", "frequency"), "*"])
async def test_unknown_fields_refused_by_default_and_dropped_when_named(
    engine: Engine, fresh_dsn: str, drop: object
) -> None:
    tenant = await engine.tenant(upload=50, download=20)
    await engine.seed(tenant, 30)
    assert (await engine.uploader(tenant).upload()).confirmed == 30  # the Client System has them
    async with await SyncDatabase.connect(fresh_dsn) as db:
        await db.migrate()
        await db.add_tenant(tenant, "narrow site", engine.keys[tenant])
        with psycopg.connect(fresh_dsn, autocommit=True) as conn:
            conn.execute("ALTER TABLE meter_reading DROP COLUMN voltage_thd, DROP COLUMN frequency")

        refused = await _download(db, engine, tenant, None)
        assert isinstance(refused.error, MalformedPageError), refused
        message = str(refused.error)
        assert "unknown field" in message and "drop_unknown_fields = [" in message, message
        assert '"*"' in message and "cursor unchanged" in message
        assert await db.get_download_cursor(tenant) is None

        stored = await _download(db, engine, tenant, drop)
        assert stored.error is None, stored
        assert stored.report.inserted == 30
        ours = await db.fetch_unsynchronized(tenant, 100)
        assert ours.num_rows == 0  # stored synchronized, never uploaded back
        query = "SELECT meter_reading_id, power FROM meter_reading WHERE tenant_id = %s ORDER BY 1"
        with psycopg.connect(fresh_dsn, autocommit=True) as conn:
            got = conn.execute(query, (tenant,)).fetchall()
        assert len(got) == 30 and got == await engine.rows(query, tenant)  # values kept exactly

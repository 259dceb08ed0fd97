"""SyncManager: initialization, cycles with their sync_log rows, status, auto-sync, deprecation."""

from __future__ import annotations

import logging

import psycopg
import pytest

from fix_engine import Engine, eventually
from metersync.engine.manager import SyncManager, SyncOptions
from metersync.errors import ConfigError
from metersync.store.database import SyncDatabase


async def test_initialize_logs_sizes_and_source(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    tenant = await engine.tenant(upload=123, download=4567)
    caplog.set_level(logging.INFO, logger="metersync.engine.manager")
    async with SyncManager(
        tenant_id=tenant, dsn=engine.dsn, api_url=engine.server.base_url
    ) as manager:
        assert manager.cache is not None and manager.cache.listening
        assert manager.client is not None
    text = caplog.text
    assert f"tenant {tenant}" in text
    assert "download_batch_size=4567 upload_batch_size=123 (source: tenant)" in text
    assert engine.keys[tenant] not in text
    assert manager.db is None  # opened by the manager, closed by it


async def test_missing_tenant_row_uses_defaults(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    tenant = await engine.tenant()
    client = engine.client(tenant)
    caplog.set_level(logging.INFO)
    ghost = 777_000_111
    async with SyncManager(tenant_id=ghost, database=engine.db, api_client=client) as manager:
        status = await manager.status()
    assert status["batch"] == {
        "download_batch_size": 1000,
        "upload_batch_size": 100,
        "source": "default",
    }
    assert "(source: default)" in caplog.text
    assert any(
        r.levelno == logging.WARNING and str(ghost) in r.getMessage() for r in caplog.records
    )


async def test_run_cycle_uploads_then_downloads_and_writes_sync_log(engine: Engine) -> None:
    tenant = await engine.tenant(upload=6, download=9)
    await engine.seed(tenant, 20)
    async with SyncManager(
        tenant_id=tenant, database=engine.db, api_client=engine.client(tenant)
    ) as manager:
        report = await manager.run_cycle()
        status = await manager.status()
    assert report.success
    assert report.upload is not None and report.download is not None
    assert (report.upload.batches, report.upload.confirmed) == (4, 20)
    # What went up comes down again, already present locally: nothing new is stored.
    assert (report.download.readings, report.download.inserted) == (20, 0)
    log_rows = await engine.rows(
        "SELECT operation, batches, records, statements, duration_s, success, error "
        "FROM sync_log WHERE tenant_id = %s ORDER BY id",
        tenant,
    )
    assert [r[0] for r in log_rows] == ["upload", "download"]
    upload_row, download_row = log_rows
    assert upload_row[1:3] == (4, 20)
    assert upload_row[3] == report.upload.statements
    assert upload_row[5] is True and upload_row[6] is None
    assert download_row[1] == report.download.pages
    assert status["totals"]["uploaded"] == 20
    assert status["totals"]["cycles"] == 1
    assert status["last_cycle"]["success"] is True
    assert status["batch"]["upload_batch_size"] == 6
    assert engine.keys[tenant] not in repr(status)


async def test_failed_operation_is_logged_with_its_error(engine: Engine) -> None:
    tenant = await engine.tenant(upload=5)
    await engine.seed(tenant, 5)
    engine.server.set_faults("fail=100:503")
    async with SyncManager(
        tenant_id=tenant, database=engine.db, api_client=engine.client(tenant, max_retries=0)
    ) as manager:
        report = await manager.upload_readings()
        status = await manager.status()
    assert report.error is not None
    row = await engine.rows(
        "SELECT success, error FROM sync_log WHERE tenant_id = %s AND operation = 'upload'",
        tenant,
    )
    assert len(row) == 1 and row[0][0] is False and "nothing marked" in row[0][1]
    assert status["totals"]["failed_operations"] == 1
    assert status["last_error"] == report.error


async def test_deprecated_batch_size_warns_and_never_overrides(engine: Engine) -> None:
    tenant = await engine.tenant(upload=4)
    await engine.seed(tenant, 10)
    with pytest.warns(DeprecationWarning, match="batch_size is deprecated"):
        config = SyncOptions(
            tenant_id=tenant, database=engine.db, api_client=engine.client(tenant), batch_size=1000
        )
    async with SyncManager(config) as manager:
        report = await manager.upload_readings()
    assert report.upload_batch_size == 4
    assert report.batches == 3


async def test_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="tenant_id is required"):
        SyncOptions(dsn="postgresql://x", api_url="http://127.0.0.1:1/api")
    with pytest.raises(ConfigError, match="database"):
        SyncOptions(tenant_id=1, api_url="http://127.0.0.1:1/api")
    with pytest.raises(ConfigError, match="api_client"):
        SyncOptions(tenant_id=1, dsn="postgresql://x")
    with pytest.raises(ConfigError, match="sync_interval_minutes"):
        SyncOptions(tenant_id=1, dsn="x", api_url="http://127.0.0.1:1/api", sync_interval_minutes=0)
    with pytest.raises(RuntimeError, match="initialize"):
        await SyncManager(tenant_id=1, dsn="x", api_url="http://127.0.0.1:1/api").run_cycle()


async def test_auto_sync_runs_and_stops_without_half_marked_batches(engine: Engine) -> None:
    tenant = await engine.tenant(upload=5, download=1000)
    await engine.seed(tenant, 60)
    engine.server.set_faults("delay=0.05")  # every batch takes a while: stop lands mid-cycle
    manager = SyncManager(
        tenant_id=tenant,
        database=engine.db,
        api_client=engine.client(tenant),
        enable_auto_sync=True,
        sync_interval_minutes=0.001,
    )
    await manager.initialize()
    try:
        assert manager.running

        async def some_marked() -> bool:
            return bool(await engine.local_ids(tenant, "is_synchronized"))

        assert await eventually(some_marked, step=0.05)
        await manager.stop()
        assert not manager.running
    finally:
        await manager.close()
    engine.server.clear_faults()
    marked = await engine.local_ids(tenant, "is_synchronized")
    # Every batch that went up was marked before the loop stopped, and nothing else was.
    assert await engine.server_ids(tenant) == marked
    assert len(marked) % 5 == 0
    assert (
        await engine.local_ids(tenant, "sync_status = 'pending'")
        == (await engine.local_ids(tenant)) - marked
    )


async def test_auto_sync_picks_up_new_readings(engine: Engine) -> None:
    tenant = await engine.tenant(upload=50)
    async with (
        await SyncDatabase.connect(engine.dsn) as own_db,
        SyncManager(
            tenant_id=tenant,
            database=own_db,
            api_client=engine.client(tenant),
            sync_interval_minutes=0.002,
        ) as manager,
    ):
        await manager.start()
        await engine.seed(tenant, 7)  # arrives while the loop runs (another connection)

        async def all_synced() -> bool:
            return len(await engine.local_ids(tenant, "is_synchronized")) == 7

        assert await eventually(all_synced, step=0.05)
    assert engine.server.rows(tenant) == 7


async def test_status_reports_the_queue(engine: Engine) -> None:
    tenant = await engine.tenant(upload=5)
    await engine.seed(tenant, 8)
    async with SyncManager(
        tenant_id=tenant, database=engine.db, api_client=engine.client(tenant), max_retries=3
    ) as manager:
        before = await manager.status()
        await manager.upload_readings()
        after = await manager.status()
    assert before["queue"]["pending"] == 8 and before["queue"]["synchronized"] == 0
    assert after["queue"]["pending"] == 0 and after["queue"]["synchronized"] == 8
    assert before["last_cycle"] is None
    assert set(after) >= {"queue", "last_cycle", "connectivity", "totals", "auto_sync"}
    assert after["auto_sync"] is False


async def test_uploads_carry_the_site_id_stored_by_migrate(engine: Engine) -> None:
    """The library path sends the sync database's own site id, so a Client System with a site
    filter never serves this site's uploads back to it on download."""
    tenant = await engine.tenant(upload=50)
    await engine.seed(tenant, 120)
    site = await engine.db.site_id()
    assert site
    async with SyncManager(
        tenant_id=tenant, dsn=engine.dsn, api_url=engine.server.base_url
    ) as manager:
        report = await manager.upload_readings()
    assert report.confirmed == 120
    with psycopg.connect(engine.server.dsn, autocommit=True) as conn:
        sites = conn.execute(
            "SELECT site_id, count(*) FROM cs_meter_reading WHERE tenant_id = %s GROUP BY 1",
            (tenant,),
        ).fetchall()
    assert sites == [(site, 120)]

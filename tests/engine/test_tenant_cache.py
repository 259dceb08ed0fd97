"""Tenant cache: served from memory, reloaded after invalidate / NOTIFY / time-to-live."""

from __future__ import annotations

import asyncio
import logging

import psycopg
import pytest

from fix_engine import Engine, eventually
from fix_server import ServerHandle
from metersync.batch_sizes import BatchSizes
from metersync.engine.manager import SyncManager
from metersync.engine.tenant_cache import NOTIFY_CHANNEL, TenantCache, TenantSettings
from metersync.errors import ConfigError, DatabaseUnavailableError
from metersync.store.database import SyncDatabase


async def test_get_loads_once_and_serves_from_memory(engine: Engine) -> None:
    tenant = await engine.tenant(upload=250, download=3000)
    cache = TenantCache(engine.db)
    settings = await cache.get(tenant)
    assert settings.batch.upload_batch_size == 250
    assert settings.batch.download_batch_size == 3000
    assert settings.batch.source == "tenant"
    assert settings.api_key == engine.keys[tenant]
    before = engine.db.statements
    again = await cache.get(tenant)
    assert again is settings
    assert engine.db.statements == before  # no database trip
    assert cache.loads == 1


async def test_repr_hides_the_key(engine: Engine) -> None:
    tenant = await engine.tenant()
    settings = await TenantCache(engine.db).get(tenant)
    assert engine.keys[tenant] not in repr(settings)
    assert engine.keys[tenant] not in str(settings)
    assert "<set>" in repr(settings)
    unset = TenantSettings(tenant_id=1, api_key=None, batch=BatchSizes())
    assert "api_key=None" in repr(unset)


async def test_invalidate_reloads_the_new_sizes(engine: Engine) -> None:
    tenant = await engine.tenant(upload=10, download=20)
    other = await engine.tenant(upload=30, download=40)
    cache = TenantCache(engine.db)
    assert (await cache.get(tenant)).batch.upload_batch_size == 10
    await cache.get(other)
    await engine.db.set_tenant_batch_sizes(tenant, upload=11, download=21)
    # Still cached: a change is seen only after invalidation.
    assert (await cache.get(tenant)).batch.upload_batch_size == 10
    cache.invalidate(tenant)
    assert not cache.cached(tenant)
    assert cache.cached(other)  # only the named tenant was dropped
    reloaded = await cache.get(tenant)
    assert (reloaded.batch.upload_batch_size, reloaded.batch.download_batch_size) == (11, 21)
    cache.invalidate()
    assert not cache.cached(other)


async def test_time_to_live_is_a_safety_net(engine: Engine) -> None:
    tenant = await engine.tenant(upload=5)
    cache = TenantCache(engine.db, ttl_seconds=0.05)
    assert (await cache.get(tenant)).batch.upload_batch_size == 5
    # Changed by hand, without NOTIFY and without invalidate():
    await engine.scalar("UPDATE tenant SET upload_batch_size = 6 WHERE tenant_id = %s", tenant)
    await asyncio.sleep(0.1)
    assert (await cache.get(tenant)).batch.upload_batch_size == 6
    with pytest.raises(ValueError, match="ttl_seconds"):
        TenantCache(engine.db, ttl_seconds=-1)


async def test_missing_tenant_gives_defaults_and_no_key(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    settings = await TenantCache(engine.db).get(987_654_321)
    assert settings.batch.upload_batch_size == 100
    assert settings.batch.download_batch_size == 1000
    assert settings.batch.source == "default"
    assert settings.api_key is None
    assert "987654321" in caplog.text


async def test_notify_from_another_connection_invalidates(engine: Engine) -> None:
    tenant = await engine.tenant(upload=7)
    bystander = await engine.tenant(upload=8)
    cache = TenantCache(engine.db, ttl_seconds=3600)
    await cache.listen(engine.dsn)
    try:
        assert cache.listening
        assert (await cache.get(tenant)).batch.upload_batch_size == 7
        await cache.get(bystander)
        async with await SyncDatabase.connect(engine.dsn) as other:
            await other.set_tenant_batch_sizes(tenant, upload=70)
        assert await eventually(lambda: not cache.cached(tenant), 10.0)
        assert cache.notifications >= 1
        assert cache.cached(bystander)
        assert (await cache.get(tenant)).batch.upload_batch_size == 70
    finally:
        await cache.stop_listening()
    assert not cache.listening


async def test_listen_to_a_bad_dsn_fails_clearly(engine: Engine) -> None:
    cache = TenantCache(engine.db)
    bad = engine.dsn.replace("dbname=", "dbname=no_such_db_") if "dbname=" in engine.dsn else None
    if bad is None:
        bad = engine.dsn.rsplit("/", 1)[0] + "/no_such_db_xyz"
    with pytest.raises(DatabaseUnavailableError, match="no_such_db") as info:
        await cache.listen(bad, timeout=10)
    assert "listener cannot connect" in str(info.value)
    assert not cache.listening


async def _listeners(dsn: str) -> int:
    """Sessions of this database whose last statement was our LISTEN."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND query = %s",
            (f"LISTEN {NOTIFY_CHANNEL}",),
        )
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


async def test_managers_sharing_a_cache_share_its_one_listener(engine: Engine) -> None:
    """The CLI's --all-tenants worker: one cache, one LISTEN connection, however many tenants."""
    tenants = [await engine.tenant(upload=5 + i) for i in range(3)]
    before = await _listeners(engine.dsn)
    cache = TenantCache(engine.db, ttl_seconds=3600)
    await cache.listen(engine.dsn)
    try:
        managers = [
            SyncManager(
                tenant_id=t,
                dsn=engine.dsn,
                database=engine.db,
                cache=cache,
                api_client=engine.client(t),
            )
            for t in tenants
        ]
        for manager in managers:
            await manager.initialize()
            assert manager.cache is cache
        assert await _listeners(engine.dsn) == before + 1
        assert all(cache.cached(t) for t in tenants)
        # A NOTIFY heard on the one connection reaches the tenant's manager.
        async with await SyncDatabase.connect(engine.dsn) as other:
            await other.set_tenant_batch_sizes(tenants[1], upload=50)
        assert await eventually(lambda: not cache.cached(tenants[1]), 10.0)
        assert (await managers[1].cache.get(tenants[1])).batch.upload_batch_size == 50
        # Closing a manager leaves the shared listener to its owner.
        await managers[0].close()
        assert cache.listening
        for manager in managers[1:]:
            await manager.close()
        assert cache.listening
    finally:
        await cache.stop_listening()
    assert not cache.listening


async def test_a_missing_size_column_warns_and_the_cycle_uses_the_default(
    fresh_dsn: str, reference_server: ServerHandle, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 11 item 9: a ``tenant`` table without ``upload_batch_size`` (a migration not run
    after an upgrade) is a WARNING and the default at run time, not a failed cycle; ``tenant
    set`` on it is a ConfigError asking for ``metersync migrate``."""
    from metersync.engine.upload import MeterReadingUploadManager
    from metersync.remote.client import ClientSystemApiClient
    from metersync.tools.synthetic import reading_batch

    tenant_id, key = reference_server.new_tenant()
    async with await SyncDatabase.connect(fresh_dsn) as db:
        await db.migrate()
        await db.add_tenant(tenant_id, "old", key, download_batch_size=300)
        async with await psycopg.AsyncConnection.connect(fresh_dsn, autocommit=True) as conn:
            await conn.execute("ALTER TABLE tenant DROP COLUMN upload_batch_size")
        await db.insert_readings(reading_batch(250, seed=5, tenant_id=tenant_id), 1000)
        cache = TenantCache(db)
        with caplog.at_level(logging.WARNING, logger="metersync"):
            settings = await cache.get(tenant_id)
        assert settings.batch == BatchSizes(300, 100, "tenant+default")
        assert settings.api_key == key
        assert any(
            "upload_batch_size" in r.getMessage() and "migrate" in r.getMessage()
            for r in caplog.records
            if r.levelno == logging.WARNING
        )
        client = ClientSystemApiClient(reference_server.base_url, key, verify=False)
        try:
            uploader = MeterReadingUploadManager(db, client, cache, tenant_id=tenant_id)
            report = await uploader.upload()
        finally:
            await client.aclose()
        assert report.error is None and report.confirmed == 250 and report.batches == 3
        row = await db.get_tenant(tenant_id)
        assert row is not None and row.upload_batch_size == 100  # shown as used
        with pytest.raises(ConfigError, match="run `metersync migrate`"):
            await db.set_tenant_batch_sizes(tenant_id, upload=50)
        with pytest.raises(ConfigError, match="run `metersync migrate`"):
            await db.add_tenant(tenant_id + 1, "new", None)

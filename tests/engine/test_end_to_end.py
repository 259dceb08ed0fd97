"""End to end: the orchestrator, the real sync database and the real Client System together."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys

import pytest

from fix_engine import Engine, eventually
from fix_pg import create_database, drop_database
from metersync.engine.manager import SyncManager
from metersync.store.database import SyncDatabase


async def test_two_tenants_every_reading_arrives_exactly_once(engine: Engine) -> None:
    sizes = {await engine.tenant(upload=7, download=11): 83, await engine.tenant(upload=50): 230}
    for tenant, n in sizes.items():
        await engine.seed(tenant, n)
    for tenant, n in sizes.items():
        async with SyncManager(
            tenant_id=tenant, dsn=engine.dsn, api_url=engine.server.base_url
        ) as manager:
            report = await manager.run_cycle()
        assert report.success
        assert report.upload is not None
        size = report.upload.upload_batch_size
        assert report.upload.batches == math.ceil(n / size)
    stats = engine.server.stats()
    assert stats["duplicates_seen"] == 0
    assert stats["readings_received"] == sum(sizes.values())
    for tenant, n in sizes.items():
        assert engine.server.rows(tenant) == n
        assert await engine.server_ids(tenant) == await engine.local_ids(tenant)
        assert await engine.status_counts(tenant) == {"synchronized:true": n}


CHANGE_SIZES = """
import asyncio, sys
from metersync.store.database import SyncDatabase

async def main() -> None:
    async with await SyncDatabase.connect(sys.argv[1]) as db:
        await db.set_tenant_batch_sizes(int(sys.argv[2]), upload=int(sys.argv[3]))

asyncio.run(main())
"""


async def test_config_change_in_another_process_applies_next_cycle(engine: Engine) -> None:
    tenant = await engine.tenant(upload=10)
    await engine.seed(tenant, 25)
    async with SyncManager(
        tenant_id=tenant, dsn=engine.dsn, api_url=engine.server.base_url
    ) as manager:
        assert manager.cache is not None
        first = await manager.upload_readings()
        assert (first.upload_batch_size, first.batches) == (10, 3)
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", CHANGE_SIZES, engine.dsn, str(tenant), "4"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        cache = manager.cache
        assert await eventually(lambda: not cache.cached(tenant))  # NOTIFY arrived
        await engine.seed(tenant, 9)
        second = await manager.upload_readings()
        assert (second.upload_batch_size, second.batches) == (4, 3)
    assert engine.server.rows(tenant) == 34


async def test_second_site_downloads_and_never_uploads_back(
    engine: Engine, pg_admin_dsn: str
) -> None:
    tenant = await engine.tenant(upload=20, download=30)
    await engine.seed(tenant, 75)
    async with SyncManager(
        tenant_id=tenant, dsn=engine.dsn, api_url=engine.server.base_url
    ) as site1:
        await site1.upload_readings()
    site2_dsn = create_database(pg_admin_dsn, "ms_site2")
    try:
        async with await SyncDatabase.connect(site2_dsn) as db2:
            await db2.migrate()
            await db2.add_tenant(
                tenant, "site 2", engine.keys[tenant], upload_batch_size=20, download_batch_size=30
            )
        received = engine.server.stats()["readings_received"]
        async with SyncManager(
            tenant_id=tenant, dsn=site2_dsn, api_url=engine.server.base_url
        ) as site2:
            cycle = await site2.run_cycle()
            again = await site2.run_cycle()
        assert cycle.download is not None and cycle.download.inserted == 75
        assert cycle.upload is not None and cycle.upload.readings_sent == 0
        assert again.upload is not None and again.upload.readings_sent == 0
        assert again.download is not None and again.download.inserted == 0
        assert engine.server.stats()["readings_received"] == received
        async with await SyncDatabase.connect(site2_dsn) as db2:
            batch = await db2.fetch_unsynchronized(tenant, 1000)
            assert batch.num_rows == 0
    finally:
        drop_database(pg_admin_dsn, site2_dsn)
    assert engine.server.rows(tenant) == 75


@pytest.mark.parametrize("size", [100, 1000])
async def test_statements_per_100k_readings(
    engine: Engine, size: int, capsys: pytest.CaptureFixture[str]
) -> None:
    n = 3 * size + 17
    tenant = await engine.tenant(upload=size)
    await engine.seed(tenant, n)
    async with SyncManager(
        tenant_id=tenant, database=engine.db, api_client=engine.client(tenant)
    ) as manager:
        report = await manager.upload_readings()
    assert report.confirmed == n
    assert report.statements <= 2 * math.ceil(n / size) + 10
    per_100k = report.statements * 100_000 / n
    with capsys.disabled():
        print(
            f"\nupload_batch_size={size}: {n} readings, {report.statements} statements "
            f"(≈{per_100k:.0f} per 100,000), {report.readings_per_second:.0f} readings/s"
        )
    # Extrapolated: about 2 statements per batch.
    assert per_100k <= 2 * 100_000 / size + 10 * 100_000 / n

"""SQL statements per upload in both Client System profiles, against the zero-cost sink.

    .venv/bin/python benchmarks/statements_per_profile.py [N] [B]

Profile ``auto`` (the sink advertises the idempotent metersync contract: keyset fetch + mark)
and ``metertrack`` forced (claim-and-fetch ``COPY (UPDATE … RETURNING)`` + mark), N wide
readings, upload batch size B. Prints batches, statements and the bound 2⌈N/B⌉+10.
"""

from __future__ import annotations

import asyncio
import sys
import time

from metersync.engine.tenant_cache import TenantCache
from metersync.engine.upload import MeterReadingUploadManager
from metersync.remote.client import ClientSystemApiClient
from metersync.server import AdminClient, ServerThread
from metersync.store.database import SyncDatabase
from metersync.tools import embedded
from metersync.tools.embedded import EmbeddedPostgres
from metersync.tools.synthetic import reading_batch

CHUNK = 10_000


async def upload_once(
    dsn: str, url: str, admin: AdminClient, tenant: int, profile: str, n: int, b: int
) -> None:
    key = f"key-{tenant}-statements"
    async with await SyncDatabase.connect(dsn) as db:
        await db.add_tenant(tenant, f"t{tenant}", key, upload_batch_size=b)
        admin.register_tenant(tenant, key)
        for start in range(0, n, CHUNK):
            batch = reading_batch(min(CHUNK, n - start), seed=start + tenant, tenant_id=tenant)
            await db.insert_readings(batch, CHUNK)
        client = ClientSystemApiClient(url, key, client_profile=profile)
        manager = MeterReadingUploadManager(db, client, TenantCache(db), tenant_id=tenant)
        began = time.perf_counter()
        report = await manager.upload()
        seconds = time.perf_counter() - began
        await client.aclose()
    bound = 2 * -(-n // b) + 10
    print(
        f"profile={profile:10} N={n} B={b}: batches={report.batches} "
        f"confirmed={report.confirmed} statements={report.statements} (bound {bound}) "
        f"{seconds:.2f} s error={report.error}"
    )


async def main(n: int, b: int) -> None:
    pg = EmbeddedPostgres()
    admin_dsn = pg.start()
    dsn = embedded.create_database(admin_dsn, "ms_statements")
    try:
        async with await SyncDatabase.connect(dsn) as db:
            await db.migrate()
        server = ServerThread("", profile="sink").start()
        try:
            with AdminClient(server.admin_url, server.admin_token) as admin:
                await upload_once(dsn, server.base_url, admin, 1, "auto", n, b)
                await upload_once(dsn, server.base_url, admin, 2, "metertrack", n, b)
        finally:
            server.stop()
    finally:
        embedded.drop_database(admin_dsn, dsn)
        pg.stop()


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    asyncio.run(main(*(args + [100_000, 1000][len(args) :])))

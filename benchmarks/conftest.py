"""Session fixtures of the benchmark suite.

- a PostgreSQL server: ``METERSYNC_BENCH_DSN`` (a server where we may create databases) or the
  embedded one, started once per session;
- ``database(prefix)``: a new database migrated by ``SyncDatabase.migrate()`` (the product's own
  schema and indexes, so every peer writes to exactly the table metersync uses); dropped at the end;
- the wide synthetic data (``metersync.tools.synthetic.reading_batch``), built once and shared;
- one asyncio event loop for the whole session: the adapter and asyncpg are async, the
  benchmark fixture is not, so each timed call is ``loop.run_until_complete(...)``.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Iterator
from functools import cache

import psycopg
import pyarrow as pa
import pytest

import metersync
from _support import TENANT, run
from metersync.store.database import SyncDatabase
from metersync.tools.embedded import EmbeddedPostgres, create_database, drop_database
from metersync.tools.synthetic import reading_batch


def pytest_report_header(config: pytest.Config) -> str:
    return f"metersync {metersync.__version__}, codec implementation: {metersync.__impl__}"


@pytest.fixture(scope="session")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """The session's event loop (adapter, asyncpg, the engine all run on it)."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="session")
def admin_dsn() -> Iterator[str]:
    """DSN of the server the benchmarks may create and drop databases on."""
    external = os.environ.get("METERSYNC_BENCH_DSN")
    if external:
        yield external
        return
    server = EmbeddedPostgres()
    dsn = server.start()
    try:
        yield dsn
    finally:
        server.stop()


@pytest.fixture(scope="session")
def database(admin_dsn: str, loop: asyncio.AbstractEventLoop) -> Iterator[Callable[[str], str]]:
    """Factory: a new database with the migrated metersync schema; returns its DSN."""
    made: list[str] = []

    def make(prefix: str) -> str:
        name = f"ms_bench_{prefix}_{uuid.uuid4().hex[:8]}"
        dsn = create_database(admin_dsn, name)
        made.append(name)

        async def migrate() -> None:
            async with await SyncDatabase.connect(dsn) as db:
                await db.migrate()
                if await db.get_tenant(TENANT) is None:
                    await db.add_tenant(TENANT, "bench", "bench-key")

        run(loop, migrate())
        return dsn

    yield make
    for name in made:
        drop_database(admin_dsn, name)


@cache
def wide(rows: int, seed: int = 7) -> pa.RecordBatch:
    """``rows`` wide synthetic readings of the bench tenant (with a leading ``tenant_id``)."""
    return reading_batch(rows, seed=seed, tenant_id=TENANT)


def copy_load(dsn: str, batch: pa.RecordBatch) -> None:
    """Load ``batch`` (tenant_id + upload columns) with the pre-encoded binary COPY."""
    from _support import copy_in_sql, pieces
    from metersync.codec import copy_binary, slices

    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        for chunk in slices(batch, 50_000):
            with cur.copy(copy_in_sql(chunk.schema.names)) as copy:
                for piece in pieces(copy_binary(chunk)):
                    copy.write(piece)
        conn.commit()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE meter_reading")

"""COPY OUT read through psycopg's per-row API vs the adapter's buffer reader (issue 12).

Reads the same fetch (100,000 wide rows, then 1000-row pages, then a 16-tenant group fetch of
100 rows each) in alternating rounds, on the async connection (``async for data in copy``
against :func:`metersync.store.copy_out.read_copy_out`, its rows gathered by the chosen twin of
:mod:`metersync.store.copy_rows` and by the pure-Python one) and on a synchronous one in a worker
thread (``for data in copy`` against ``read_copy_out_sync``, the companion's way). Wall time
and this process's CPU time per read; the figures are in docs/store-notes.md.

Run: .venv/bin/python benchmarks/copy_read_api.py  (a script, not collected by `make bench`)
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from metersync.store import copy_out
from metersync.store import sql as q
from metersync.store.copy_out import read_copy_out, read_copy_out_sync
from metersync.store.copy_rows import IMPL, PyCopyRows
from metersync.store.database import SyncDatabase
from metersync.tools.embedded import EmbeddedPostgres, create_database, drop_database
from metersync.tools.synthetic import reading_batch

ROWS = 100_000
TENANTS = 16


async def main(dsn: str) -> None:
    async with await SyncDatabase.connect(dsn) as db:
        await db.migrate()
        await db.add_tenant(1, "bench", None)
        for i in range(0, ROWS, 20_000):
            await db.insert_readings(reading_batch(20_000, seed=i + 1, tenant_id=1), 10_000)
        for t in range(2, 2 + TENANTS):
            await db.add_tenant(t, f"bench-{t}", None)
            await db.insert_readings(reading_batch(100, seed=t, tenant_id=t), 100)
        await db._execute("ANALYZE meter_reading")  # the plans the engine gets (a bench script)
        layout = await db.layout()
        group = q.copy_out(
            q.queue_select_many(
                layout.upload_columns, [(t, 1000) for t in range(2, 2 + TENANTS)], 5
            )
        )
        cases = (
            (f"{ROWS:,} rows", db.fetch_statement(1, ROWS, layout=layout), 7),
            ("1000 rows", db.fetch_statement(1, 1000, layout=layout), 60),
            (f"group {TENANTS} x 100 rows", group, 60),
        )
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as aconn:
        with psycopg.Connection.connect(dsn, autocommit=True) as sconn:
            for name, statement, rounds in cases:
                await measure(aconn, sconn, name, statement, rounds)


async def measure(
    aconn: psycopg.AsyncConnection[Any],
    sconn: psycopg.Connection[Any],
    name: str,
    statement: Any,
    rounds: int,
) -> None:
    async def async_public() -> int:
        async with aconn.cursor() as cur, cur.copy(statement) as copy:
            rows = [data async for data in copy]  # kept, as the adapter keeps them
        return sum(map(len, rows))

    async def async_buffer() -> int:
        async with aconn.cursor() as cur, cur.copy(statement):
            data = await read_copy_out(aconn)
        return len(data)

    async def async_twin() -> int:  # the same reader, rows gathered by the pure-Python twin
        copy_out.new_copy_rows = PyCopyRows
        try:
            return await async_buffer()
        finally:
            copy_out.new_copy_rows = chosen

    def sync_twin() -> int:
        copy_out.new_copy_rows = PyCopyRows
        try:
            return sync_buffer()
        finally:
            copy_out.new_copy_rows = chosen

    def sync_public() -> int:
        with sconn.cursor() as cur, cur.copy(statement) as copy:
            rows = list(copy)
        return sum(map(len, rows))

    def sync_buffer() -> int:
        with sconn.cursor() as cur, cur.copy(statement):
            data = read_copy_out_sync(sconn)
        return len(data)

    ways: dict[str, Callable[[], Awaitable[int]]] = {
        "async: async for (psycopg)": async_public,
        f"async: read_copy_out ({IMPL})": async_buffer,
        "async: read_copy_out (python)": async_twin,
        "thread: for (psycopg)": lambda: asyncio.to_thread(sync_public),
        f"thread: read_copy_out_sync ({IMPL})": lambda: asyncio.to_thread(sync_buffer),
        "thread: read_copy_out_sync (python)": lambda: asyncio.to_thread(sync_twin),
    }
    chosen = copy_out.new_copy_rows
    wall: dict[str, list[float]] = {k: [] for k in ways}
    cpu: dict[str, list[float]] = {k: [] for k in ways}
    sizes = set()
    for _ in range(rounds):
        for way, fn in ways.items():  # alternating rounds: load drifts hit all alike
            c0, t0 = time.process_time(), time.perf_counter()
            sizes.add(await fn())
            wall[way].append(time.perf_counter() - t0)
            cpu[way].append(time.process_time() - c0)
    assert len(sizes) == 1, sizes
    print(f"{name}: {sizes.pop() / 1e6:.2f} MB of COPY data, {rounds} rounds (medians)")
    for way in ways:
        print(
            f"  {way:36s} wall {statistics.median(wall[way]) * 1000:7.2f} ms  "
            f"client CPU {statistics.median(cpu[way]) * 1000:7.2f} ms"
        )


if __name__ == "__main__":
    server = EmbeddedPostgres()
    admin = server.start()
    try:
        dsn = create_database(admin, "ms_copy_bench")
        try:
            asyncio.run(main(dsn))
        finally:
            drop_database(admin, dsn)
    finally:
        server.stop()

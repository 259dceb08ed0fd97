"""COPY OUT read through psycopg's private ``_read_gen`` vs its public API (issue 9 item 7).

Reads the same fetch (100,000 wide rows, then 1000-row pages) three ways in alternating rounds;
the figures are in docs/store-notes.md. The adapter uses the public ``async for``.

Run: .venv/bin/python benchmarks/copy_read_api.py  (a script, not collected by `make bench`)
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Generator
from typing import Any

from metersync.store.database import SyncDatabase
from metersync.tools.embedded import EmbeddedPostgres, create_database, drop_database
from metersync.tools.synthetic import reading_batch

ROWS = 100_000


def _drain(copy: Any) -> Generator[Any, Any, list[Any]]:
    """The adapter's former private path: psycopg's per-row generator in one ``conn.wait``."""
    chunks: list[Any] = []
    while True:
        data = yield from copy._read_gen()
        if not data:
            return chunks
        chunks.append(data)


ROUNDS = 11


async def main(dsn: str) -> None:
    async with await SyncDatabase.connect(dsn) as db:
        await db.migrate()
        await db.add_tenant(1, "bench", None)
        for i in range(0, ROWS, 20_000):
            await db.insert_readings(reading_batch(20_000, seed=i + 1, tenant_id=1), 10_000)
        layout = await db.layout()
        for rows, rounds in ((ROWS, ROUNDS), (1000, 60)):
            await measure(db, db.fetch_statement(1, rows, layout=layout), rows, rounds)


async def measure(db: SyncDatabase, statement: object, rows: int, rounds: int) -> None:
    conn = db._conn

    async def private() -> int:
        async with conn.cursor() as cur, cur.copy(statement) as copy:
            chunks = await conn.wait(_drain(copy))
        return sum(map(len, chunks))

    async def public_iter() -> int:
        async with conn.cursor() as cur, cur.copy(statement) as copy:
            chunks = [data async for data in copy]
        return sum(map(len, chunks))

    async def public_read() -> int:
        chunks = []
        async with conn.cursor() as cur, cur.copy(statement) as copy:
            while data := await copy.read():
                chunks.append(data)
        return sum(map(len, chunks))

    ways = {
        "private _read_gen": private,
        "public async for": public_iter,
        "public copy.read()": public_read,
    }
    times: dict[str, list[float]] = {k: [] for k in ways}
    sizes = set()
    for _ in range(rounds):
        for name, fn in ways.items():  # alternating rounds: load drifts hit all alike
            t0 = time.perf_counter()
            sizes.add(await fn())
            times[name].append(time.perf_counter() - t0)
    assert len(sizes) == 1, sizes
    print(f"{rows} wide rows, {sizes.pop() / 1e6:.2f} MB of COPY data, {rounds} rounds")
    base = statistics.median(times["private _read_gen"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(
            f"  {name:20s} median {med * 1000:7.1f} ms  best {min(ts) * 1000:7.1f} ms  "
            f"{med / base:5.2f}x"
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

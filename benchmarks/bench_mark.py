"""Mark group: mark 100 / 1000 / 10000 readings synchronized.

The table holds BACKLOG_ROWS readings of one tenant, all synchronized except the ids under test:
each round's setup (untimed) resets those ids to pending, so every peer updates exactly the same
rows, and the set-based limit (no id list) updates exactly them too. Per-row peers commit every
1000 rows, as the old flow did. The schema (queue index, fillfactor) is whatever
``SyncDatabase.migrate()`` chose; the group reports whether the marks were HOT updates.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pyarrow as pa
import pytest

from _support import BACKLOG_ROWS, TENANT, run
from conftest import copy_load, wide
from metersync.store.database import SyncDatabase

SIZES = (100, 1000, 10_000)
ROUNDS = {100: 20, 1000: 10, 10_000: 3}
SLOW_ROUNDS = {100: 5, 1000: 3, 10_000: 1}
COMMIT_EVERY = 1000
SET_SYNCED = "SET is_synchronized = true, sync_status = 'synchronized'"
ONE = f"UPDATE meter_reading {SET_SYNCED} WHERE tenant_id = %s AND meter_reading_id = %s"
ANY = f"UPDATE meter_reading {SET_SYNCED} WHERE tenant_id = %s AND meter_reading_id = ANY(%s)"
RESET = (
    "UPDATE meter_reading SET is_synchronized = false, sync_status = 'pending' "
    "WHERE tenant_id = %s AND meter_reading_id = ANY(%s)"
)


@pytest.fixture(scope="module")
def dsn(database: Callable[[str], str]) -> str:
    dsn = database("mark")
    copy_load(dsn, wide(BACKLOG_ROWS))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"UPDATE meter_reading {SET_SYNCED} WHERE tenant_id = %s", (TENANT,))
        conn.execute("VACUUM ANALYZE meter_reading")
    return dsn


@pytest.fixture(scope="module")
def conn(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(dsn) as conn:
        yield conn


def _ids(size: int) -> pa.Array:
    """The ``size`` oldest ids (an upload batch is the oldest pending readings)."""
    return wide(BACKLOG_ROWS).column("meter_reading_id").slice(0, size)


def _uuids(size: int) -> list[uuid.UUID]:
    return [uuid.UUID(bytes=b) for b in _ids(size).to_pylist()]


@pytest.fixture
def reset(dsn: str) -> Callable[[int], Callable[[], None]]:
    def make(size: int) -> Callable[[], None]:
        ids = _uuids(size)

        def setup() -> None:
            with psycopg.connect(dsn, autocommit=True) as admin:
                done = admin.execute(RESET, (TENANT, ids)).rowcount
                assert done == size

        return setup

    return make


def _pending(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        "SELECT count(*) FROM meter_reading WHERE tenant_id = %s AND NOT is_synchronized",
        (TENANT,),
    ).fetchone()
    conn.commit()
    assert row is not None
    return int(row[0])


def _start(benchmark: Any, size: int) -> None:
    benchmark.group = f"mark-{size}"
    benchmark.extra_info.update({"group": f"mark-{size}", "rows": size})


def _schema_facts(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Indexes and fillfactor of meter_reading, and whether a 1000-id mark is HOT (probe)."""
    indexes = [
        r[0]
        for r in conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'meter_reading' ORDER BY indexname"
        )
    ]
    row = conn.execute(
        "SELECT reloptions FROM pg_class WHERE oid = 'meter_reading'::regclass"
    ).fetchone()
    ids = _uuids(1000)
    conn.execute(RESET, (TENANT, ids))
    conn.commit()
    before = conn.execute(
        "SELECT pg_stat_get_xact_tuples_updated('meter_reading'::regclass), "
        "pg_stat_get_xact_tuples_hot_updated('meter_reading'::regclass)"
    ).fetchone()
    conn.execute(ANY, (TENANT, ids))
    after = conn.execute(
        "SELECT pg_stat_get_xact_tuples_updated('meter_reading'::regclass), "
        "pg_stat_get_xact_tuples_hot_updated('meter_reading'::regclass)"
    ).fetchone()
    conn.commit()
    assert before is not None and after is not None
    updated, hot = after[0] - before[0], after[1] - before[1]
    return {
        "indexes": indexes,
        "reloptions": row[0] if row else None,
        "hot_fraction_1000_marks": round(hot / updated, 3) if updated else None,
    }


@pytest.mark.parametrize("size", SIZES)
def bench_mark_metersync(benchmark, dsn, conn, reset, loop: asyncio.AbstractEventLoop, size):
    """The adapter: ``SyncDatabase.mark_synchronized`` (one statement, binary uuid[] of the ids)."""
    _start(benchmark, size)
    ids = _ids(size)
    db = run(loop, SyncDatabase.connect(dsn))
    counts: list[int] = []

    def mark() -> None:
        before = db.statements
        assert run(loop, db.mark_synchronized(TENANT, ids)) == size
        counts.append(db.statements - before)

    try:
        benchmark.pedantic(mark, setup=reset(size), rounds=ROUNDS[size], iterations=1)
    finally:
        run(loop, db.close())
    assert _pending(conn) == 0
    benchmark.extra_info["statements"] = max(counts)
    if size == 1000:
        benchmark.extra_info.update(_schema_facts(conn))


@pytest.mark.parametrize("size", SIZES)
def bench_mark_limit_set_based(benchmark, conn, reset, size):
    """The limit: one set-based UPDATE with no id list (exactly the ids under test are pending)."""
    _start(benchmark, size)

    def mark() -> None:
        cur = conn.execute(
            f"UPDATE meter_reading {SET_SYNCED} WHERE tenant_id = %s AND NOT is_synchronized",
            (TENANT,),
        )
        assert cur.rowcount == size
        conn.commit()

    benchmark.pedantic(mark, setup=reset(size), rounds=ROUNDS[size], iterations=1)
    benchmark.extra_info["statements"] = 1


@pytest.mark.parametrize("size", SIZES)
def bench_mark_psycopg_any_uuid_list(benchmark, conn, reset, size):
    """``UPDATE ... = ANY(%s)`` with a list of ``uuid.UUID`` built from the batch (untimed)."""
    _start(benchmark, size)
    ids = _uuids(size)

    def mark() -> None:
        assert conn.execute(ANY, (TENANT, ids)).rowcount == size
        conn.commit()

    benchmark.pedantic(mark, setup=reset(size), rounds=ROUNDS[size], iterations=1)
    benchmark.extra_info["statements"] = 1


@pytest.mark.parametrize("size", SIZES)
def bench_mark_executemany(benchmark, conn, reset, size):
    """psycopg ``executemany`` of per-row UPDATEs, commit every 1000 rows."""
    _start(benchmark, size)
    params = [(TENANT, i) for i in _uuids(size)]

    def mark() -> None:
        with conn.cursor() as cur:
            for start in range(0, size, COMMIT_EVERY):
                cur.executemany(ONE, params[start : start + COMMIT_EVERY])
                conn.commit()

    benchmark.pedantic(mark, setup=reset(size), rounds=SLOW_ROUNDS[size], iterations=1)
    assert _pending(conn) == 0
    benchmark.extra_info["statements"] = size


@pytest.mark.parametrize("size", SIZES)
def bench_mark_per_row_update(benchmark, conn, reset, size):
    """One ``UPDATE ... WHERE meter_reading_id = %s`` per row, commit every 1000 rows."""
    _start(benchmark, size)
    params = [(TENANT, i) for i in _uuids(size)]

    def mark() -> None:
        with conn.cursor() as cur:
            for n, p in enumerate(params, 1):
                cur.execute(ONE, p)
                if n % COMMIT_EVERY == 0:
                    conn.commit()
        conn.commit()

    benchmark.pedantic(mark, setup=reset(size), rounds=SLOW_ROUNDS[size], iterations=1)
    assert _pending(conn) == 0
    benchmark.extra_info["statements"] = size

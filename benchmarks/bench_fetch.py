"""Fetch group: the oldest unsynchronized page of a tenant into Arrow, pages of 100/1000/10000.

The table holds BACKLOG_ROWS pending readings of one tenant (loaded once, then VACUUM ANALYZE).
Fetching does not change state, so every round reads the same page: the steady-state cost of
the upload loop's fetch step. All peers run the same query (same predicate, order and limit).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pyarrow as pa
import pytest
from psycopg import sql

from _support import BACKLOG_ROWS, TENANT, queue_query, rows_to_arrow, run, upload_schema
from conftest import copy_load, wide
from metersync.store.database import SyncDatabase
from metersync.tools.embedded import as_url

PAGES = (100, 1000, 10_000)
ROUNDS = {100: 40, 1000: 20, 10_000: 5}


@pytest.fixture(scope="module")
def dsn(database: Callable[[str], str]) -> str:
    dsn = database("fetch")
    copy_load(dsn, wide(BACKLOG_ROWS))
    return dsn


@pytest.fixture(scope="module")
def schema() -> pa.Schema:
    return upload_schema(wide(BACKLOG_ROWS))


@pytest.fixture(scope="module")
def db(dsn: str, loop: asyncio.AbstractEventLoop) -> Iterator[SyncDatabase]:
    db = run(loop, SyncDatabase.connect(dsn))
    yield db
    run(loop, db.close())


@pytest.fixture(scope="module")
def conn(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


def _group(benchmark: Any, page: int) -> None:
    """Name the group before timing (pytest-benchmark reads it when the stats are created)."""
    benchmark.group = f"fetch-{page}"
    benchmark.extra_info.update({"group": f"fetch-{page}", "rows": page})


def _check(result: pa.RecordBatch | pa.Table, page: int, schema: pa.Schema) -> None:
    assert result.num_rows == page
    assert result.schema.names == schema.names


@pytest.mark.parametrize("page", PAGES)
def bench_fetch_metersync(benchmark, db, schema, loop, page):
    """The adapter: ``SyncDatabase.fetch_unsynchronized`` straight into an Arrow record batch."""
    _group(benchmark, page)
    before = db.statements
    result = benchmark.pedantic(
        lambda: run(loop, db.fetch_unsynchronized(TENANT, page)),
        rounds=ROUNDS[page],
        warmup_rounds=1,
    )
    calls = ROUNDS[page] + 1
    _check(result, page, schema)
    benchmark.extra_info.setdefault("statements", 1)
    assert result.schema == schema, "the adapter's Arrow types differ from the canonical ones"
    benchmark.extra_info["statements"] = (db.statements - before) / calls


@pytest.mark.parametrize("page", PAGES)
def bench_fetch_adbc_fetch_arrow_table(benchmark, dsn, schema, page):
    """ADBC ``execute`` + ``fetch_arrow_table`` (numeric comes as strings, uuid as extension)."""
    _group(benchmark, page)
    import adbc_driver_postgresql.dbapi as adbc

    query = queue_query(schema.names, "$")
    with adbc.connect(as_url(dsn), autocommit=True) as aconn, aconn.cursor() as cur:

        def fetch() -> pa.Table:
            cur.execute(query, (TENANT, page))
            return cur.fetch_arrow_table()

        result = benchmark.pedantic(fetch, rounds=ROUNDS[page], warmup_rounds=1)
    _check(result, page, schema)
    benchmark.extra_info.setdefault("statements", 1)


@pytest.mark.parametrize("page", PAGES)
def bench_fetch_psycopg_fetchall_to_arrow(benchmark, conn, schema, page):
    """psycopg ``fetchall()`` of tuples, then typed Arrow arrays built from the Python values."""
    _group(benchmark, page)
    query = queue_query(schema.names)

    def fetch() -> pa.RecordBatch:
        rows = conn.execute(query, (TENANT, page)).fetchall()
        return rows_to_arrow(rows, schema)

    result = benchmark.pedantic(fetch, rounds=ROUNDS[page], warmup_rounds=1)
    _check(result, page, schema)
    benchmark.extra_info.setdefault("statements", 1)


@pytest.mark.parametrize("page", PAGES)
def bench_fetch_limit_copy_out(benchmark, conn, schema, page):
    """The limit: ``COPY (same query) TO STDOUT (FORMAT BINARY)`` read into bytes, not decoded."""
    _group(benchmark, page)
    query = sql.SQL("COPY ({}) TO STDOUT (FORMAT BINARY)").format(
        sql.SQL(queue_query(schema.names, "{}")).format(sql.Literal(TENANT), sql.Literal(page))
    )

    def fetch() -> bytes:
        out = bytearray()
        with conn.cursor() as cur, cur.copy(query) as copy:
            for data in copy:
                out += data
        return bytes(out)

    payload = benchmark.pedantic(fetch, rounds=ROUNDS[page], warmup_rounds=1)
    # header (19) + per row a 2-byte field count + trailer: a sanity check on the row count.
    assert payload[:11] == b"PGCOPY\n\xff\r\n\x00" and len(payload) > 21 + 2 * page
    benchmark.extra_info.update({"bytes": len(payload), "statements": 1})

"""Insert group: INSERT_ROWS wide readings into the migrated ``meter_reading`` (PK + queue index).

Every peer writes the same rows (tenant_id + upload columns) to the same table, which already
holds RESIDENT_ROWS readings of the same tenant (stored synchronized): on an empty table the
primary-key probes of the existing-id check and the index inserts cost next to nothing, which
flatters every peer. Before each round (untimed) the rows of the previous round are deleted,
``VACUUM ANALYZE`` and a ``CHECKPOINT`` run. Rounds: FAST_ROUNDS for the fast peers (enough to
see the spread on a shared 2-core machine; pytest-benchmark reports min/median/stddev).
Peers that need Python objects get them prepared once, untimed, which favours them: in a real
pipeline building 2.2 M ``Decimal``s is part of the bill. Each timed call includes its commit.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pyarrow as pa
import pytest

from _support import (
    INSERT_ROWS,
    asyncpg_params,
    copy_in_sql,
    pieces,
    python_rows,
    run,
    with_uuid_extension,
)
from conftest import wide
from metersync.codec import copy_binary
from metersync.store.database import SyncDatabase
from metersync.tools.embedded import as_url

GROUP = "insert"
#: Rows per COPY statement in the adapter's path (the largest valid chunk size).
CHUNK_ROWS = 10_000
#: Rows per executemany call.
EXECUTEMANY_ROWS = 1000
FAST_ROUNDS = int(os.environ.get("METERSYNC_BENCH_INSERT_ROUNDS", "7"))
SLOW_ROUNDS = 1
#: Readings already in the table (same tenant, other ids) before every round.
RESIDENT_ROWS = int(os.environ.get("METERSYNC_BENCH_INSERT_RESIDENT", str(2 * INSERT_ROWS)))

pytestmark = pytest.mark.benchmark(group=GROUP)


@pytest.fixture(scope="module")
def dsn(database: Callable[[str], str]) -> str:
    dsn = database("insert")
    resident = wide(RESIDENT_ROWS, seed=99)
    n = resident.num_rows
    resident = resident.append_column("is_synchronized", pa.repeat(True, n)).append_column(
        "sync_status", pa.array(["synchronized"] * n)
    )
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        with cur.copy(copy_in_sql(resident.schema.names)) as copy:
            for piece in pieces(copy_binary(resident)):
                copy.write(piece)
        conn.commit()
    return dsn


@pytest.fixture(scope="module")
def batch() -> pa.RecordBatch:
    return wide(INSERT_ROWS)


@pytest.fixture(scope="module")
def conn(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(dsn) as conn:
        yield conn


@pytest.fixture
def truncate(dsn: str) -> Callable[[], None]:
    """Remove the previous round's rows (the resident ones stay), VACUUM ANALYZE, CHECKPOINT."""

    def reset() -> None:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute("DELETE FROM meter_reading WHERE NOT is_synchronized")
            admin.execute("VACUUM ANALYZE meter_reading")
            admin.execute("CHECKPOINT")

    return reset


def _count(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM meter_reading WHERE NOT is_synchronized").fetchone()
    conn.commit()
    assert row is not None
    return int(row[0])


def _finish(benchmark: Any, conn: psycopg.Connection[Any], rows: int, **extra: Any) -> None:
    assert _count(conn) == rows, "the peer did not insert every row"
    benchmark.extra_info.update(
        {"group": GROUP, "rows": rows, "resident_rows": RESIDENT_ROWS, **extra}
    )


def bench_insert_metersync(benchmark, dsn, batch, conn, truncate, loop: asyncio.AbstractEventLoop):
    """The adapter: ``SyncDatabase.insert_readings`` (binary COPY per chunk, skips duplicates)."""
    db = run(loop, SyncDatabase.connect(dsn))
    statements: list[int] = []

    def insert() -> None:
        before = db.statements
        run(loop, db.insert_readings(batch, chunk_rows=CHUNK_ROWS))
        statements.append(db.statements - before)

    try:
        benchmark.pedantic(insert, setup=truncate, rounds=FAST_ROUNDS, iterations=1)
    finally:
        run(loop, db.close())
    _finish(benchmark, conn, batch.num_rows, statements=statements[-1], chunk_rows=CHUNK_ROWS)


def bench_insert_limit_precoded_copy(benchmark, dsn, batch, conn, truncate):
    """The limit: a COPY payload encoded beforehand, written with psycopg ``copy.write``."""
    payload = copy_binary(batch)
    stmt = copy_in_sql(batch.schema.names)

    def insert() -> None:
        with conn.cursor() as cur, cur.copy(stmt) as copy:
            for piece in pieces(payload):
                copy.write(piece)
        conn.commit()

    benchmark.pedantic(insert, setup=truncate, rounds=FAST_ROUNDS, iterations=1)
    _finish(benchmark, conn, batch.num_rows, statements=1, payload_bytes=len(payload))


def bench_insert_pgpq_copy(benchmark, dsn, batch, conn, truncate):
    """pgpq's ``ArrowToPostgresBinaryEncoder`` (timed) + psycopg ``copy.write``."""
    from pgpq import ArrowToPostgresBinaryEncoder

    stmt = copy_in_sql(batch.schema.names)

    def insert() -> None:
        encoder = ArrowToPostgresBinaryEncoder(batch.schema)
        payload = encoder.write_header() + encoder.write_batch(batch) + encoder.finish()
        with conn.cursor() as cur, cur.copy(stmt) as copy:
            for piece in pieces(payload):
                copy.write(piece)
        conn.commit()

    benchmark.pedantic(insert, setup=truncate, rounds=FAST_ROUNDS, iterations=1)
    _finish(benchmark, conn, batch.num_rows, statements=1)


def bench_insert_adbc_ingest(benchmark, dsn, batch, conn, truncate):
    """ADBC ``adbc_ingest(mode="append")`` from Arrow (uuid as pyarrow's uuid extension type)."""
    import adbc_driver_postgresql.dbapi as adbc

    data = with_uuid_extension(batch)
    with adbc.connect(as_url(dsn)) as aconn:

        def insert() -> None:
            with aconn.cursor() as cur:
                cur.adbc_ingest("meter_reading", data, mode="append")
            aconn.commit()

        benchmark.pedantic(insert, setup=truncate, rounds=FAST_ROUNDS, iterations=1)
    _finish(benchmark, conn, batch.num_rows, statements=1)


@pytest.fixture(scope="module")
def rows(batch: pa.RecordBatch) -> list[tuple[Any, ...]]:
    return python_rows(batch)


def bench_insert_psycopg_write_row(benchmark, dsn, batch, rows, conn, truncate):
    """psycopg binary COPY ``copy.write_row`` from prepared tuples (UUID, datetime, Decimal)."""
    stmt = copy_in_sql(batch.schema.names)
    types = ["int8", "uuid", "timestamptz", "int8", "int8"] + ["numeric"] * (batch.num_columns - 5)

    def insert() -> None:
        with conn.cursor() as cur, cur.copy(stmt) as copy:
            copy.set_types(types)
            for row in rows:
                copy.write_row(row)
        conn.commit()

    benchmark.pedantic(insert, setup=truncate, rounds=SLOW_ROUNDS, iterations=1)
    _finish(benchmark, conn, batch.num_rows, statements=1)


def bench_insert_asyncpg_copy_records(benchmark, dsn, batch, rows, conn, truncate, loop):
    """asyncpg ``copy_records_to_table`` from prepared tuples."""
    import asyncpg

    aconn = run(loop, asyncpg.connect(**asyncpg_params(dsn)))
    columns = batch.schema.names

    def insert() -> None:
        run(loop, aconn.copy_records_to_table("meter_reading", records=rows, columns=columns))

    try:
        benchmark.pedantic(insert, setup=truncate, rounds=SLOW_ROUNDS, iterations=1)
    finally:
        run(loop, aconn.close())
    _finish(benchmark, conn, batch.num_rows, statements=1)


def bench_insert_executemany(benchmark, dsn, batch, rows, conn, truncate):
    """psycopg ``executemany`` of a one-row INSERT (pipelined), 1000 rows per call.

    (A 1000-row ``VALUES`` list with ``%s`` placeholders was slower still, 181 s for 50,000 wide
    rows in one run, about 5x this: psycopg re-parses a 45,000-parameter query on every execute.)
    """
    cols = ", ".join(batch.schema.names)
    query = f"INSERT INTO meter_reading ({cols}) VALUES ({', '.join(['%s'] * batch.num_columns)})"
    chunks = [rows[i : i + EXECUTEMANY_ROWS] for i in range(0, len(rows), EXECUTEMANY_ROWS)]

    def insert() -> None:
        with conn.cursor() as cur:
            for chunk in chunks:
                cur.executemany(query, chunk)
        conn.commit()

    benchmark.pedantic(insert, setup=truncate, rounds=SLOW_ROUNDS, iterations=1)
    _finish(benchmark, conn, batch.num_rows, statements=batch.num_rows)

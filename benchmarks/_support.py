"""Helpers shared by the benchmark groups: sizes, peers' data shapes, the event loop runner.

The RSS sampler and the reference Client System subprocess are :mod:`metersync.tools.measure`
(shared with ``metersync bench``), re-exported here as ``PeakRss`` and ``ServerProcess``.

Not collected by pytest (only ``bench_*.py`` files are, see ``benchmarks/pytest.ini``).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pyarrow as pa
from psycopg import sql

# One RSS sampler and one server subprocess for `metersync bench` and this suite (re-exported).
from metersync.tools.measure import PeakRss, ServerProcess

T = TypeVar("T")

__all__ = [
    "BACKLOG_ROWS",
    "COPY_PIECE",
    "E2E_ROWS",
    "INSERT_ROWS",
    "TENANT",
    "PeakRss",
    "ServerProcess",
    "asyncpg_params",
    "copy_in_sql",
    "pieces",
    "python_rows",
    "queue_query",
    "rows_to_arrow",
    "run",
    "upload_schema",
    "with_uuid_extension",
]

#: The tenant every benchmark row belongs to (the groups use separate databases).
TENANT = 1

#: Rows of the insert group. 200,000 is the issue's size; 50,000 keeps `make bench` within
#: ~10 minutes on 2 cores because the slow peers (write_row, asyncpg, executemany) need
#: 10-20 s each per 50,000 wide rows. Override with METERSYNC_BENCH_INSERT_ROWS.
INSERT_ROWS = int(os.environ.get("METERSYNC_BENCH_INSERT_ROWS", "50000"))

#: Rows held by the fetch and mark groups' tables (the backlog the queries run against).
BACKLOG_ROWS = int(os.environ.get("METERSYNC_BENCH_BACKLOG_ROWS", "200000"))

#: Readings of the end-to-end backlog. The issue's size is 200,000, but the reference Client
#: System stores only ~1,000-2,000 readings/s on 2 cores, so 200,000 readings at two batch
#: sizes alone would take 4-7 minutes; 100,000 keeps `make bench` near 10 minutes and gives the
#: statement count for exactly 100,000 readings. METERSYNC_BENCH_E2E_ROWS=200000 for full size.
E2E_ROWS = int(os.environ.get("METERSYNC_BENCH_E2E_ROWS", "100000"))

#: psycopg splits large writes anyway; feeding it ~256 KiB pieces keeps the copy buffer small.
COPY_PIECE = 256 * 1024


def run(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on the benchmark session's event loop."""
    return loop.run_until_complete(coro)


def asyncpg_params(dsn: str) -> dict[str, Any]:
    """asyncpg's connect() keywords for a libpq DSN (its URL parser ignores ``?host=`` when
    the URL also names a host, so a unix socket directory must be passed explicitly)."""
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(dsn)
    out: dict[str, Any] = {
        "host": params.get("host", "localhost"),
        "user": params.get("user", "postgres"),
        "database": params.get("dbname", "postgres"),
    }
    if params.get("port"):
        out["port"] = int(params["port"])
    if params.get("password"):
        out["password"] = params["password"]
    return out


def pieces(payload: bytes, size: int = COPY_PIECE) -> Iterator[memoryview]:
    """Yield ``payload`` in zero-copy pieces of ``size`` bytes."""
    view = memoryview(payload)
    for start in range(0, len(view), size):
        yield view[start : start + size]


def copy_in_sql(columns: list[str]) -> sql.Composed:
    """``COPY meter_reading (columns) FROM STDIN (FORMAT BINARY)``."""
    return sql.SQL("COPY meter_reading ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.SQL(", ").join(map(sql.Identifier, columns))
    )


def queue_query(columns: list[str], style: str = "%s") -> str:
    """The upload queue query (oldest unsynchronized of a tenant), as plain text for the peers.

    Same predicate and order as the adapter's ``fetch_unsynchronized`` (quarantined readings,
    ``retry_count >= 5``, are skipped). ``style``: ``"%s"`` (psycopg), ``"$"`` (ADBC, asyncpg) or
    ``"{}"`` (a ``psycopg.sql.SQL`` template).
    """
    cols = ", ".join(f'"{c}"' for c in columns)
    p1, p2 = {"%s": ("%s", "%s"), "$": ("$1", "$2"), "{}": ("{}", "{}")}[style]
    return (
        f"SELECT {cols} FROM meter_reading WHERE tenant_id = {p1} AND NOT is_synchronized "
        f"AND retry_count < 5 ORDER BY created_at, meter_reading_id LIMIT {p2}"
    )


def python_rows(batch: pa.RecordBatch) -> list[tuple[Any, ...]]:
    """The batch as Python tuples the way a driver wants them (uuid.UUID, datetime, Decimal)."""
    columns: list[list[Any]] = []
    for field, column in zip(batch.schema, batch.columns, strict=True):
        values = column.to_pylist()
        if pa.types.is_fixed_size_binary(field.type):
            values = [None if v is None else uuid.UUID(bytes=v) for v in values]
        columns.append(values)
    return list(zip(*columns, strict=True))


def with_uuid_extension(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Replace ``fixed_size_binary(16)`` columns by pyarrow's ``uuid`` type (ADBC: uuid)."""
    arrays = [
        pa.ExtensionArray.from_storage(pa.uuid(), col)
        if pa.types.is_fixed_size_binary(col.type) and col.type.byte_width == 16
        else col
        for col in batch.columns
    ]
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


def rows_to_arrow(rows: list[tuple[Any, ...]], schema: pa.Schema) -> pa.RecordBatch:
    """What a psycopg user does to get Arrow from ``fetchall()``: column lists → typed arrays."""
    if not rows:
        return schema.empty_table().to_batches()[0] if schema else pa.record_batch([])
    arrays = []
    for i, field in enumerate(schema):
        values = [row[i] for row in rows]
        if pa.types.is_fixed_size_binary(field.type):
            values = [None if v is None else v.bytes for v in values]
        arrays.append(pa.array(values, type=field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def upload_schema(batch: pa.RecordBatch) -> pa.Schema:
    """Schema of the upload columns (the synthetic batch without ``tenant_id``)."""
    return pa.schema([f for f in batch.schema if f.name != "tenant_id"])

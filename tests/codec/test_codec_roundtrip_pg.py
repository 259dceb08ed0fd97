"""Round trips of the codec through PostgreSQL itself (both twins).

Our ``copy_binary`` bytes go in with ``COPY ... FROM STDIN (FORMAT BINARY)``; PostgreSQL's own
``COPY (SELECT ...) TO STDOUT (FORMAT BINARY)`` comes back byte-identical (PostgreSQL stores
numerics stripped, with the column's scale, just as we encode them) and decodes through
``from_copy_binary`` to the batch we started from; a plain SELECT gives the same values.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from types import ModuleType

import psycopg
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings

from fix_arrow import batches, decimal_from_unscaled, make_array
from metersync.codec import _types

ROUND_TRIP = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def conn(module_dsn: str) -> Iterator[psycopg.Connection]:
    # No server-side prepared statements: the same query text meets a new table every example.
    with psycopg.connect(module_dsn, autocommit=True, prepare_threshold=None) as connection:
        connection.execute("SET TIME ZONE 'UTC'")
        yield connection


def _create(conn: psycopg.Connection, schema: pa.Schema) -> str:
    columns = ", ".join(f'"{f.name}" {_types.arrow_to_pg(f.type, f.name)}' for f in schema)
    conn.execute("DROP TABLE IF EXISTS codec_rt")
    conn.execute(f"CREATE TABLE codec_rt (rn serial, {columns})")
    return ", ".join(f'"{f.name}"' for f in schema)


def copy_in(conn: psycopg.Connection, schema: pa.Schema, data: bytes) -> str:
    """Create the matching table and COPY ``data`` into it; return the column list."""
    names = _create(conn, schema)
    with (
        conn.cursor() as cur,
        cur.copy(f"COPY codec_rt ({names}) FROM STDIN (FORMAT BINARY)") as cp,
    ):
        cp.write(data)
    return names


def copy_out(conn: psycopg.Connection, names: str) -> bytes:
    query = f"COPY (SELECT {names} FROM codec_rt ORDER BY rn) TO STDOUT (FORMAT BINARY)"
    with conn.cursor() as cur, cur.copy(query) as cp:
        return b"".join(bytes(chunk) for chunk in cp)


def _python_value(type_: pa.DataType, scalar: pa.Scalar) -> object:
    """What psycopg returns for this Arrow value."""
    value = scalar.as_py()
    if value is None:
        return None
    if isinstance(type_, pa.BaseExtensionType) or pa.types.is_fixed_size_binary(type_):
        return value if isinstance(value, uuid.UUID) else uuid.UUID(bytes=value)
    if type_ == pa.float32():
        return float(value)
    return value


def _check_select(conn: psycopg.Connection, batch: pa.RecordBatch, names: str) -> None:
    with conn.cursor(binary=True) as cur:  # binary: float4 arrives exact, not as shortest text
        rows = cur.execute(f"SELECT {names} FROM codec_rt ORDER BY rn").fetchall()
    assert len(rows) == batch.num_rows
    for r, row in enumerate(rows):
        for got, field, column in zip(row, batch.schema, batch.columns, strict=True):
            expected = _python_value(field.type, column[r])
            assert got == expected, (field.name, r, got, expected)
            if isinstance(got, Decimal):
                assert got.as_tuple().exponent == -field.type.scale


@given(batch=batches(max_rows=10, max_cols=8))
@ROUND_TRIP
def test_round_trip_through_postgres(
    batch: pa.RecordBatch, impl: ModuleType, conn: psycopg.Connection
) -> None:
    data = impl.copy_binary(batch)
    names = copy_in(conn, batch.schema, data)
    back = copy_out(conn, names)
    assert back == data
    decoded = impl.from_copy_binary(back, batch.schema)
    assert decoded.equals(batch)
    _check_select(conn, batch, names)


def _edge_batch() -> pa.RecordBatch:
    """The numeric, time and text edge cases of the spec, all types with nulls, sliced."""
    big = 999_999_999_999_999_999  # 99999999999999.9999 in numeric(18,4)
    dec4 = [None, 0, 1, -1, big, -big, 125000, -125000, 10_000, 7, None]
    n = len(dec4)
    pg_epoch = 946_684_800_000_000
    stamps = [None, 0, -1, 1, pg_epoch, pg_epoch - 1, pg_epoch + 1, -62135596800000000,
              253402300799999999, -86_400_000_001, None]  # fmt: skip
    texts = [None, "", "é€😀", 'q"\\', "\n\r\t\x01\x1f", "'; DROP TABLE x; --", "a" * 300,
             " lead", "trail ", "\u2028", None]  # fmt: skip
    arrays = {
        "id": make_array(pa.uuid(), [None] + [uuid.UUID(int=i).bytes for i in range(n - 1)]),
        "id2": make_array(pa.binary(16), [uuid.uuid4().bytes for _ in range(n - 1)] + [None]),
        "n18_4": decimal_from_unscaled(dec4, pa.decimal128(18, 4)),
        "n38_0": decimal_from_unscaled(
            [10**38 - 1, -(10**38 - 1), 0, None, 1, -1, 10**20, 42, 5, 6, 7], pa.decimal128(38, 0)
        ),
        "n38_10": decimal_from_unscaled(
            [10**38 - 1, -(10**38 - 1), 0, None, 1, -1, 10**10, 10**9, 5, 1230, 7],
            pa.decimal128(38, 10),
        ),
        "n5_5": decimal_from_unscaled(
            [99999, -99999, 0, 1, None, 10, 100, 1000, 10000, 2, 3], pa.decimal128(5, 5)
        ),
        "tz": make_array(pa.timestamp("us", tz="UTC"), stamps),
        "ts": make_array(pa.timestamp("us"), stamps[::-1]),
        "d": make_array(pa.date32(), [None, 0, -1, 10957, 10956, -719162, 2932896, 1, 2, 3, None]),
        "i2": pa.array([None, 0, -1, 32767, -32768, 1, 2, 3, 4, 5, 6], pa.int16()),
        "i4": pa.array([2**31 - 1, -(2**31), None, 0, 1, 2, 3, 4, 5, 6, 7], pa.int32()),
        "i8": pa.array([2**63 - 1, -(2**63), 0, None, 1, 2, 3, 4, 5, 6, 7], pa.int64()),
        "f4": pa.array([0.5, -1.25, None, 3.4e38, 1e-45, 0.0, -0.0, 1, 2, 3, 4], pa.float32()),
        "f8": pa.array([0.1, 5e-324, float("inf"), None, -1e308, 0.0, 1, 2, 3, 4, 5]),
        "b": pa.array([True, False, None, True, False, True, True, False, None, True, False]),
        "s": pa.array(texts),
        "ls": pa.array(texts[::-1], pa.large_string()),
    }
    return pa.RecordBatch.from_arrays(list(arrays.values()), names=list(arrays)).slice(1, n - 2)


def test_edge_cases_round_trip(impl: ModuleType, conn: psycopg.Connection) -> None:
    batch = _edge_batch()
    assert batch.num_rows == 9 and batch.column(0).offset == 1
    data = impl.copy_binary(batch)
    names = copy_in(conn, batch.schema, data)
    assert copy_out(conn, names) == data
    assert impl.from_copy_binary(copy_out(conn, names), batch.schema).equals(batch)
    _check_select(conn, batch, names)


def test_decimal_json_text_matches_postgres(impl: ModuleType, conn: psycopg.Connection) -> None:
    """PostgreSQL's own text form of numeric(p,s) shows exactly s digits, as our JSON must."""
    batch = _edge_batch()
    names = copy_in(conn, batch.schema, impl.copy_binary(batch))
    decimals = [f.name for f in batch.schema if pa.types.is_decimal(f.type)]
    rows = json.loads(impl.json_rows(batch.select(decimals)), parse_float=str, parse_int=str)
    texts = conn.execute(
        f"SELECT {', '.join(f'{c}::text' for c in decimals)} FROM codec_rt ORDER BY rn"
    ).fetchall()
    assert names
    for row, pg_row in zip(rows, texts, strict=True):
        assert [row[c] for c in decimals] == list(pg_row)


def test_timestamp_json_matches_postgres(impl: ModuleType, conn: psycopg.Connection) -> None:
    batch = _edge_batch().select(["tz", "ts", "d"])
    names = copy_in(conn, batch.schema, impl.copy_binary(batch))
    rows = json.loads(impl.json_rows(batch))
    pg_rows = conn.execute(
        'SELECT to_char(tz, \'YYYY-MM-DD"T"HH24:MI:SS.US"Z"\'),'
        " to_char(ts, 'YYYY-MM-DD\"T\"HH24:MI:SS.US'), to_char(d, 'YYYY-MM-DD')"
        f" FROM codec_rt ORDER BY rn /* {names} */"
    ).fetchall()
    for row, pg_row in zip(rows, pg_rows, strict=True):
        assert (row["tz"], row["ts"], row["d"]) == pg_row


def test_empty_batch_round_trip(impl: ModuleType, conn: psycopg.Connection) -> None:
    batch = _edge_batch().slice(0, 0)
    data = impl.copy_binary(batch)
    names = copy_in(conn, batch.schema, data)
    assert conn.execute("SELECT count(*) FROM codec_rt").fetchone() == (0,)
    back = impl.from_copy_binary(copy_out(conn, names), batch.schema)
    assert back.num_rows == 0 and back.schema == batch.schema


def test_uuid_array_binds_to_any(impl: ModuleType, conn: psycopg.Connection) -> None:
    """The uuid[] value works as a binary parameter of ``= ANY($1)``."""
    ids = [uuid.uuid4() for _ in range(5)]
    batch = pa.RecordBatch.from_arrays([pa.array([u.bytes for u in ids], pa.binary(16))], ["id"])
    copy_in(conn, batch.schema, impl.copy_binary(batch))
    wanted = make_array(pa.uuid(), [ids[1].bytes, ids[3].bytes, uuid.uuid4().bytes]).slice(0)
    for value, count in ((wanted, 2), (wanted.slice(0, 0), 0)):
        payload = impl.uuid_array_binary(value)
        with conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM codec_rt WHERE id = ANY(%b)",
                [_UuidArray(payload)],
                binary=True,
            )
            assert cur.fetchone() == (count,)


class _UuidArray:
    """A pre-encoded binary uuid[] parameter (what the database adapter passes)."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload


class _UuidArrayDumper(psycopg.adapt.Dumper):
    format = psycopg.pq.Format.BINARY
    oid = 2951  # uuid[]

    def dump(self, obj: _UuidArray) -> bytes:
        return obj.payload


@pytest.fixture(autouse=True)
def _register_dumper(conn: psycopg.Connection) -> None:
    conn.adapters.register_dumper(_UuidArray, _UuidArrayDumper)


def test_timestamps_keep_microseconds(impl: ModuleType, conn: psycopg.Connection) -> None:
    moment = datetime(2026, 3, 29, 1, 59, 59, 999_999)
    us = int((moment - datetime(1970, 1, 1)).total_seconds()) * 1_000_000 + moment.microsecond
    batch = pa.RecordBatch.from_arrays([make_array(pa.timestamp("us"), [us])], names=["ts"])
    copy_in(conn, batch.schema, impl.copy_binary(batch))
    assert conn.execute("SELECT ts FROM codec_rt").fetchone() == (moment,)

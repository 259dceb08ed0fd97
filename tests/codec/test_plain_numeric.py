"""Plain ``numeric`` (no typmod) carried exactly as text (issue 11 item 8, SPEC §2/§6).

The column's Arrow type is ``metersync.numeric`` (string storage). Through PostgreSQL itself:
our binary COPY of a literal is what PostgreSQL stores for the same literal (byte for byte when
copied back out), decoding PostgreSQL's COPY gives PostgreSQL's own text (display scale and
trailing zeros kept), and the JSON number carries exactly those digits. Both twins agree on every
byte and every error.
"""

from __future__ import annotations

import json
import re
import struct
import uuid
from collections.abc import Iterator
from decimal import Decimal
from types import ModuleType

import psycopg
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metersync.codec import _numeric, _page_py, _types
from metersync.errors import CodecValueError, MalformedPageError

PG = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def numeric_batch(values: list[str | None], name: str = "x") -> pa.RecordBatch:
    storage = pa.array(values, pa.string())
    return pa.RecordBatch.from_arrays(
        [pa.ExtensionArray.from_storage(_types.numeric_type(), storage)], names=[name]
    )


@st.composite
def literals(draw: st.DrawFn, exponent: bool = False) -> str:
    """Decimal literals with 0..60 digits before and after the point (leading and trailing
    zeros included), either sign, optionally an exponent."""
    digits = st.text("0123456789", max_size=60)
    whole = draw(st.one_of(digits, st.sampled_from(["0", "000", "1", "9999", "10000"])))
    frac = draw(st.one_of(digits, st.sampled_from(["", "0", "5000", "0001"])))
    if not whole and not frac:
        whole = "0"
    text = draw(st.sampled_from(["", "-", "+"])) + whole
    if frac or draw(st.booleans()):
        text += "." + frac
    if text in ("+.", "-.", "."):
        text = text[:-1] + "0"
    if exponent and draw(st.booleans()):
        text += draw(st.sampled_from("eE")) + draw(st.sampled_from(["", "+", "-"]))
        text += str(draw(st.integers(0, 80)))
    return text


@pytest.fixture(scope="module")
def conn(module_dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(module_dsn, autocommit=True, prepare_threshold=None) as connection:
        connection.execute("DROP TABLE IF EXISTS plain_numeric")
        connection.execute("CREATE TABLE plain_numeric (rn serial, x numeric)")
        yield connection


def _copy_in(conn: psycopg.Connection, data: bytes) -> None:
    conn.execute("TRUNCATE plain_numeric RESTART IDENTITY")
    with conn.cursor() as cur, cur.copy("COPY plain_numeric (x) FROM STDIN (FORMAT BINARY)") as cp:
        cp.write(data)


def _copy_out(conn: psycopg.Connection) -> bytes:
    query = "COPY (SELECT x FROM plain_numeric ORDER BY rn) TO STDOUT (FORMAT BINARY)"
    with conn.cursor() as cur, cur.copy(query) as cp:
        return b"".join(bytes(chunk) for chunk in cp)


def _pg_texts(conn: psycopg.Connection, literals: list[str | None]) -> list[str | None]:
    """PostgreSQL's own text of each literal (its numeric_in, then numeric_out)."""
    rows = conn.execute(
        "SELECT v::numeric::text FROM unnest(%s::text[]) WITH ORDINALITY AS t(v, i) ORDER BY i",
        (literals,),
    ).fetchall()
    return [r[0] for r in rows]


@given(values=st.lists(st.one_of(st.none(), literals(exponent=True)), min_size=1, max_size=12))
@PG
def test_round_trip_through_postgres(
    values: list[str | None], c_impl: ModuleType, py_impl: ModuleType, conn: psycopg.Connection
) -> None:
    batch = numeric_batch(values)
    data = c_impl.copy_binary(batch)
    assert py_impl.copy_binary(batch) == data  # twins byte-identical
    _copy_in(conn, data)
    stored = conn.execute("SELECT x::text FROM plain_numeric ORDER BY rn").fetchall()
    expected = _pg_texts(conn, values)  # what PostgreSQL makes of the literal itself
    assert [r[0] for r in stored] == expected
    # PostgreSQL copies out exactly the bytes we wrote (stripped digits, dscale kept).
    back = _copy_out(conn)
    assert back == data
    for impl in (c_impl, py_impl):
        decoded = impl.from_copy_binary(back, batch.schema)
        assert decoded.schema.field("x").type == _types.numeric_type()
        assert decoded.column(0).storage.to_pylist() == expected
    # JSON: a number with exactly PostgreSQL's digits (metersync), a string (metertrack).
    body = c_impl.json_rows(batch)
    assert py_impl.json_rows(batch) == body
    rows = json.loads(body, parse_float=Decimal, parse_int=Decimal)
    for row, text in zip(rows, expected, strict=True):
        if text is None:
            assert row["x"] is None
        else:
            assert row["x"] == Decimal(text)
            assert b'"x":' + text.encode() + b"}" in body
    quoted = c_impl.json_rows(batch, profile="metertrack")
    assert py_impl.json_rows(batch, profile="metertrack") == quoted
    assert [r.get("x") for r in json.loads(quoted)] == expected
    for profile in ("metersync", "metertrack"):
        sizes = c_impl.json_row_sizes(batch, profile=profile).to_pylist()
        assert sizes == py_impl.json_row_sizes(batch, profile=profile).to_pylist()
        encoded = c_impl.json_rows(batch, profile=profile)
        assert len(encoded) == 2 + sum(sizes) + len(sizes) - 1


@pytest.mark.parametrize(
    "literal",
    [
        "0", "-0", "0.000", "-0.000", "0e5", "0.00e-3", "1.500", "-1.500", "1.5e3", "1.5E-3",
        ".5", "5.", "+7", "00012.3400", "9999", "10000", "0.0001", "0.00001", "1e-20", "1e80",
        "123456789012345678901234567890.123456789012345678901234567890",
        "-" + "9" * 60 + "." + "9" * 60, "1" + "0" * 400, "0." + "0" * 399 + "1",
        "NaN", "Infinity", "+Infinity", "-Infinity",
    ],
)  # fmt: skip
def test_edge_literals_match_postgres(
    literal: str, c_impl: ModuleType, py_impl: ModuleType, conn: psycopg.Connection
) -> None:
    batch = numeric_batch([literal])
    data = c_impl.copy_binary(batch)
    assert py_impl.copy_binary(batch) == data
    _copy_in(conn, data)
    (expected,) = _pg_texts(conn, [literal])
    assert conn.execute("SELECT x::text FROM plain_numeric").fetchone() == (expected,)
    assert _copy_out(conn) == data
    for impl in (c_impl, py_impl):
        assert impl.from_copy_binary(data, batch.schema).column(0).storage.to_pylist() == [expected]


@given(values=st.lists(st.one_of(st.none(), literals(exponent=True)), max_size=20))
@settings(max_examples=300, deadline=None)
def test_twins_agree_without_postgres(
    values: list[str | None], c_impl: ModuleType, py_impl: ModuleType
) -> None:
    batch = numeric_batch(values).slice(min(1, len(values)))  # an offset into the buffers
    data = c_impl.copy_binary(batch)
    assert py_impl.copy_binary(batch) == data
    assert py_impl.from_copy_binary(data, batch.schema).equals(
        c_impl.from_copy_binary(data, batch.schema)
    )
    for profile in ("metersync", "metertrack"):
        assert c_impl.json_rows(batch, profile=profile) == py_impl.json_rows(batch, profile=profile)


def _error(impl: ModuleType, call: str, batch: pa.RecordBatch) -> str:
    with pytest.raises(CodecValueError) as info:
        getattr(impl, call)(batch)
    return str(info.value)


@given(garbage=st.text(max_size=12))
@settings(max_examples=300, deadline=None)
def test_any_text_is_encoded_or_refused_alike(
    garbage: str, c_impl: ModuleType, py_impl: ModuleType
) -> None:
    batch = numeric_batch(["1", garbage])
    for call in ("copy_binary", "json_rows"):
        try:
            expected = py_impl.__dict__[call](batch)
        except CodecValueError as exc:
            assert _error(c_impl, call, batch) == str(exc)
            assert str(exc).startswith("column 'x', row 1: ")
        else:
            assert c_impl.__dict__[call](batch) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("abc", "'abc' is not a numeric literal"),
        (" 1", "' 1' is not a numeric literal"),
        ("1e", "'1e' is not a numeric literal"),
        ("1_000", "not a numeric literal"),
        ("0x1F", "not a numeric literal"),
        ("", "'' is not a numeric literal"),
        ("inf", "not a numeric literal"),
        ("1e200000", "outside the range PostgreSQL can store"),
        ("0." + "0" * 16383 + "1", "outside the range"),
        ("1e-16384", "outside the range"),
    ],
)
def test_garbage_is_refused_naming_column_and_row(
    impl: ModuleType, text: str, message: str
) -> None:
    batch = numeric_batch(["1", None, text], name="odd")
    for call in ("copy_binary", "json_rows"):
        error = _error(impl, call, batch)
        assert error.startswith("column 'odd', row 2: ") and message in error
        assert len(error) < 300  # a megabyte of digits is not echoed whole


def test_limits_are_postgres_limits(impl: ModuleType, conn: psycopg.Connection) -> None:
    """The largest weight and display scale PostgreSQL stores are accepted."""
    batch = numeric_batch(["9" * 131072, "0." + "0" * 16382 + "1"])
    data = impl.copy_binary(batch)
    _copy_in(conn, data)
    assert _copy_out(conn) == data


@pytest.mark.parametrize("special", ["NaN", "Infinity", "+Infinity", "-Infinity"])
def test_json_writes_nan_and_infinities_as_strings(
    c_impl: ModuleType, py_impl: ModuleType, special: str
) -> None:
    """JSON numbers have no NaN or infinity: they travel as strings (in both profiles), which
    the page parser reads back as the same numeric (a reading is never stuck on them)."""
    from metersync.codec import _page

    text = "Infinity" if special == "+Infinity" else special
    batch = numeric_batch(["1.50", special, None])
    for profile, one in (("metersync", b"1.50"), ("metertrack", b'"1.50"')):
        body = c_impl.json_rows(batch, profile=profile)
        assert py_impl.json_rows(batch, profile=profile) == body
        null = b',{"x":null}' if profile == "metersync" else b",{}"
        assert body == b'[{"x":%s},{"x":"%s"}%s]' % (one, text.encode(), null)
        sizes = c_impl.json_row_sizes(batch, profile=profile).to_pylist()
        assert sizes == py_impl.json_row_sizes(batch, profile=profile).to_pylist()
        assert len(body) == 2 + sum(sizes) + 2
    page = _page_body([b"1.50", b'"%s"' % text.encode(), b"null"])  # the values as sent
    for twin in (_page, _page_py):
        assert _parse(twin, page).column("x").storage.to_pylist() == ["1.50", text, None]


def _stream(field: bytes) -> bytes:
    return (
        b"PGCOPY\n\xff\r\n\x00" + bytes(8) + b"\x00\x01" + struct.pack(">i", len(field)) + field
        + b"\xff\xff"
    )  # fmt: skip


@pytest.mark.parametrize(
    ("field", "message"),
    [
        (struct.pack(">HhHH", 0, 0, 0x8000, 0), "unknown numeric sign"),
        (struct.pack(">HhHHH", 1, 0, 0, 0, 10000), "digit out of range"),
        (struct.pack(">HhHH", 0, 0, 0, 0x4000), "display scale out of range"),
        (struct.pack(">HhHH", 2, 0, 0, 0) + b"\x00\x01", "malformed numeric"),
        (b"\x00\x00\x00", "malformed numeric"),
    ],
)
def test_decode_refuses_what_postgres_would(
    c_impl: ModuleType, py_impl: ModuleType, field: bytes, message: str
) -> None:
    schema = numeric_batch([]).schema
    errors = []
    for impl in (c_impl, py_impl):
        with pytest.raises(CodecValueError, match=message) as info:
            impl.from_copy_binary(_stream(field), schema)
        errors.append(str(info.value))
    assert errors[0] == errors[1]


def test_decode_pads_and_truncates_like_numeric_out(impl: ModuleType) -> None:
    schema = numeric_batch([]).schema
    # -12.5 as [12, 5000] with dscale 6 is padded: -12.500000; 0.0000 0012 3450 (weight -2)
    # with dscale 9 is cut to 0.000000123, as numeric_out prints them.
    cases = [
        (struct.pack(">HhHHHH", 2, 0, 0x4000, 6, 12, 5000), "-12.500000"),
        (struct.pack(">HhHHHH", 2, -2, 0, 9, 12, 3450), "0.000000123"),
        (struct.pack(">HhHHH", 1, 2, 0, 0, 7), "700000000"),
        (struct.pack(">HhHH", 0, 0, 0xD000, 0), "Infinity"),
    ]
    for field, text in cases:
        got = impl.from_copy_binary(_stream(field), schema)
        assert got.column(0).storage.to_pylist() == [text]


def test_parse_reference() -> None:
    assert _numeric.parse(b"1.5e3").canonical() == "1500"  # type: ignore[union-attr]
    assert _numeric.parse(b"-0.000").canonical() == "0.000"  # type: ignore[union-attr]
    assert _numeric.parse(b"1e" + b"9" * 30) == _numeric.RANGE
    assert _numeric.parse(b"--1") == _numeric.SYNTAX


# ---------------------------------------------------------------------------------------------
# Download pages: a JSON number (or a numeric string) keeps its digits exactly


JSON_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
PAGE_SCHEMA = pa.schema(
    [
        ("meter_reading_id", pa.binary(16)),
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("meter_id", pa.int64()),
        ("x", _types.numeric_type()),
    ]
)


def _page_body(values: list[bytes]) -> bytes:
    readings = b",".join(
        b'{"meter_reading_id":"%s","created_at":"2025-01-01T00:00:00Z","meter_id":1,"x":%s}'
        % (str(uuid.UUID(int=i + 1)).encode(), v)
        for i, v in enumerate(values)
    )
    return b'{"readings":[' + readings + b'],"next_cursor":null}'


@pytest.fixture(params=["c", "python"])
def page_twin(request: pytest.FixtureRequest) -> ModuleType:
    if request.param == "python":
        return _page_py
    from metersync.codec import _page

    return _page


def _parse(twin: ModuleType, body: bytes) -> pa.RecordBatch:
    batch, _ = twin.parse_page(body, PAGE_SCHEMA, tenant_id=None, limit=100)
    return batch


def test_page_keeps_numbers_and_numeric_strings_exactly(page_twin: ModuleType) -> None:
    values = [
        b"123456789012345678901234567890.123456789012345678901234567890",
        b"1" + b"0" * 399,  # beyond float64 (orjson refuses it as infinite)
        b"-0.000000000000000000000000000000000001",
        b"1.500",
        b"2.5E-3",
        b'"12.5000"',
        b'"NaN"',
        b'"-Infinity"',
        b"null",
    ]
    batch = _parse(page_twin, _page_body(values))
    assert batch.schema.field("x").type == _types.numeric_type()
    texts = batch.column("x").storage.to_pylist()
    assert texts[:5] == [v.decode() for v in values[:5]]
    assert texts[5:] == ["12.5000", "NaN", "-Infinity", None]
    # Stored by COPY, the literal is PostgreSQL's value of it, sent back with the same digits.
    body = py_json_rows(batch.select(["x"]).slice(0, 5))
    assert body == b"[" + b",".join(b'{"x":%s}' % v for v in values[:4]) + b',{"x":0.0025}]'


def py_json_rows(batch: pa.RecordBatch) -> bytes:
    from metersync.codec import _python

    return _python.json_rows(batch)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (b'"abc"', '"abc" is not a numeric PostgreSQL can store'),
        (b'"1\\u0030"', "is not a numeric PostgreSQL can store"),  # escaped: refused
        (b'" 1"', "is not a numeric"),
        (b"1e99999999999", "is not a numeric PostgreSQL can store"),
        (b"true", "expected a number or a numeric string, got boolean true"),
        (b"[1]", "expected a number or a numeric string"),
    ],
)
def test_page_refuses_what_is_not_a_numeric(value: bytes, problem: str) -> None:
    from metersync.codec import _page

    messages = []
    for twin in (_page, _page_py):
        with pytest.raises(MalformedPageError, match=r"reading 1 .*field 'x': ") as info:
            _parse(twin, _page_body([b"1", value]))
        messages.append(str(info.value))
        assert problem in str(info.value)
    assert messages[0] == messages[1]


@given(values=st.lists(literals(exponent=True), min_size=1, max_size=8), garbage=st.text())
@settings(max_examples=200, deadline=None)
def test_page_twins_agree(values: list[str], garbage: str) -> None:
    from metersync.codec import _page

    body = _page_body(
        [
            v.encode() if i % 2 and JSON_NUMBER.fullmatch(v) else json.dumps(v).encode()
            for i, v in enumerate(values)
        ]
    )
    got = [_parse(twin, body) for twin in (_page, _page_py)]
    assert got[0].equals(got[1])
    assert got[0].column("x").storage.to_pylist() == values
    bad = _page_body([b"1", json.dumps(garbage).encode()])
    outcomes = []
    for twin in (_page, _page_py):
        try:
            outcomes.append(_parse(twin, bad).column("x").storage.to_pylist())
        except MalformedPageError as exc:
            outcomes.append(str(exc))
    assert outcomes[0] == outcomes[1]


@given(field=st.binary(max_size=24), head=st.tuples(st.integers(0, 3), st.integers(-3, 3)))
@settings(max_examples=300, deadline=None)
def test_corrupt_numeric_fields_decode_alike(
    field: bytes, head: tuple[int, int], c_impl: ModuleType, py_impl: ModuleType
) -> None:
    """Random fields (half of them with a plausible header) give the same text or the same
    error from both twins, never a crash."""
    ndigits, weight = head
    if len(field) % 2 == 0 and len(field) >= 4:
        field = struct.pack(">Hh", ndigits, weight) + field[4:]
    schema = numeric_batch([]).schema
    outcomes = []
    for impl in (c_impl, py_impl):
        try:
            outcomes.append(impl.from_copy_binary(_stream(field), schema).column(0).storage[0])
        except CodecValueError as exc:
            outcomes.append(str(exc))
    assert outcomes[0] == outcomes[1]

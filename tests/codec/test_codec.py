"""The codec twins: byte-identical output, canonical JSON read back, errors, type mapping, selector.

Round trips through PostgreSQL itself live in test_codec_roundtrip_pg.py.
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import uuid
from datetime import date, datetime
from decimal import Decimal
from types import ModuleType
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import metersync
from fix_arrow import batches, decimal_from_unscaled, make_array
from metersync import codec
from metersync.codec import _types

TWIN = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
TS_FORM = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}$")


def one_column(type_: pa.DataType, values: list, name: str = "v") -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([make_array(type_, values)], names=[name])


# ---------------------------------------------------------------------------------------------
# C core and Python twin agree byte for byte


@given(batch=batches(max_rows=25))
@settings(max_examples=300, deadline=None)
def test_twins_identical_on_generated_batches(
    batch: pa.RecordBatch, c_impl: ModuleType, py_impl: ModuleType
) -> None:
    copy_c = c_impl.copy_binary(batch)
    assert copy_c == py_impl.copy_binary(batch)
    assert c_impl.json_rows(batch) == py_impl.json_rows(batch)
    back_c = c_impl.from_copy_binary(copy_c, batch.schema)
    back_py = py_impl.from_copy_binary(copy_c, batch.schema)
    assert back_c.equals(back_py)
    assert back_c.equals(batch)
    assert back_c.schema == batch.schema


def _uuids(max_size: int) -> st.SearchStrategy[list[bytes | None]]:
    return st.lists(st.none() | st.binary(min_size=16, max_size=16), max_size=max_size)


def _refused_for_a_null(
    impls: tuple[ModuleType, ...], name: str, arr: pa.Array | pa.ChunkedArray, ids: list[Any]
) -> bool:
    """When ``ids`` hold a null, every twin's ``name(arr)`` refuses it, naming its index (True:
    nothing else to check)."""
    if None not in ids:
        return False
    for impl in impls:
        with pytest.raises(ValueError, match=f"element {ids.index(None)} is null"):
            getattr(impl, name)(arr)
    return True


@given(ids=_uuids(20), offset=st.integers(0, 3), ext=st.booleans())
@settings(max_examples=100, deadline=None)
def test_twins_identical_uuid_arrays(
    ids: list[bytes | None], offset: int, ext: bool, c_impl: ModuleType, py_impl: ModuleType
) -> None:
    arr = make_array(pa.uuid() if ext else pa.binary(16), ids).slice(offset)
    expected_ids = ids[offset:]
    if _refused_for_a_null((c_impl, py_impl), "uuid_array_binary", arr, expected_ids):
        return
    data = c_impl.uuid_array_binary(arr)
    assert data == py_impl.uuid_array_binary(arr)
    if not expected_ids:
        assert data == struct.pack(">iii", 0, 0, 2950)
        return
    ndim, flags, oid, dim, lower = struct.unpack_from(">5i", data)
    assert (ndim, flags, oid, dim, lower) == (1, 0, 2950, len(expected_ids), 1)
    body = data[20:]
    assert [body[i * 20 + 4 : i * 20 + 20] for i in range(dim)] == expected_ids
    assert all(body[i * 20 : i * 20 + 4] == b"\x00\x00\x00\x10" for i in range(dim))


@given(ids=_uuids(40), offset=st.integers(0, 3), ext=st.booleans(), chunks=st.integers(1, 3))
@settings(max_examples=100, deadline=None)
def test_twins_identical_sorted_uuid_bytes(
    ids: list[bytes | None],
    offset: int,
    ext: bool,
    chunks: int,
    c_impl: ModuleType,
    py_impl: ModuleType,
) -> None:
    """The Idempotency-Key's input: the ids in byte order, whatever their order, chunking or
    slice offset; a null named by its index in both twins."""
    arr = make_array(pa.uuid() if ext else pa.binary(16), ids).slice(offset)
    cut = len(arr) // chunks
    parted = pa.chunked_array(
        [arr.slice(0, cut), arr.slice(cut)] if chunks > 1 else [arr], type=arr.type
    )
    expected_ids = ids[offset:]
    if _refused_for_a_null((c_impl, py_impl), "sorted_uuid_bytes", parted, expected_ids):
        return
    data = c_impl.sorted_uuid_bytes(parted)
    assert data == py_impl.sorted_uuid_bytes(arr)
    assert data == b"".join(sorted(expected_ids))  # type: ignore[arg-type]
    backwards = arr.take(pa.array(range(len(arr) - 1, -1, -1), pa.int64()))
    assert c_impl.sorted_uuid_bytes(backwards) == data
    for impl in (c_impl, py_impl):
        with pytest.raises(TypeError, match="uuid"):
            impl.sorted_uuid_bytes(pa.array(["x"]))


def test_twins_identical_on_large_outputs(c_impl: ModuleType, py_impl: ModuleType) -> None:
    """Outputs above the core's scratch-buffer size take its other allocation path."""
    rows = 200
    text = pa.array([f"{i:05d}" + 'é\n"' * 17_000 for i in range(rows)], pa.large_string())
    batch = pa.RecordBatch.from_arrays(
        [text, decimal_from_unscaled(list(range(-rows, rows, 2)), pa.decimal128(38, 6))],
        names=["t", "n"],
    ).slice(1)
    copy = c_impl.copy_binary(batch)
    assert len(copy) > 9 * 2**20
    assert copy == py_impl.copy_binary(batch)
    assert c_impl.json_rows(batch) == py_impl.json_rows(batch)
    assert c_impl.from_copy_binary(copy, batch.schema).equals(batch)


def test_uuid_array_chunked(impl: ModuleType) -> None:
    ids = [uuid.uuid4().bytes for _ in range(5)]
    chunked = pa.chunked_array([pa.array(ids[:2], pa.binary(16)), pa.array(ids[2:], pa.binary(16))])
    flat = impl.uuid_array_binary(pa.array(ids, pa.binary(16)))
    assert impl.uuid_array_binary(chunked) == flat
    with pytest.raises(TypeError, match="uuid"):
        impl.uuid_array_binary(pa.array(["x"]))


def test_codes_of_core_match_types(c_impl: ModuleType) -> None:
    for name, value in c_impl.CODES.items():
        assert getattr(_types, name) == value, name


# ---------------------------------------------------------------------------------------------
# Binary COPY layout


def test_copy_layout(impl: ModuleType) -> None:
    batch = pa.RecordBatch.from_arrays(
        [pa.array([7, None], pa.int32()), pa.array(["hé", ""])], names=["a", "b"]
    )
    data = impl.copy_binary(batch)
    assert data[:19] == b"PGCOPY\n\xff\r\n\x00" + bytes(8)
    rows = data[19:-2]
    assert rows == (
        b"\x00\x02" + b"\x00\x00\x00\x04\x00\x00\x00\x07" + b"\x00\x00\x00\x03h\xc3\xa9"
        b"\x00\x02" + b"\xff\xff\xff\xff" + b"\x00\x00\x00\x00"
    )
    assert data[-2:] == b"\xff\xff"


def test_copy_empty_batch(impl: ModuleType) -> None:
    batch = pa.RecordBatch.from_arrays([pa.array([], pa.int64())], names=["a"])
    assert impl.copy_binary(batch) == b"PGCOPY\n\xff\r\n\x00" + bytes(8) + b"\xff\xff"
    assert impl.json_rows(batch) == b"[]"
    assert impl.from_copy_binary(impl.copy_binary(batch), batch.schema).equals(batch)


@pytest.mark.parametrize(
    ("unscaled", "scale", "weight", "sign", "digits"),
    [
        (0, 4, 0, 0, []),
        (1, 4, -1, 0, [1]),  # 0.0001
        (-1, 4, -1, 0x4000, [1]),
        (125000, 4, 0, 0, [12, 5000]),  # 12.5000
        (999999999999999999, 4, 3, 0, [99, 9999, 9999, 9999, 9999]),
        (5, 1, -1, 0, [5000]),  # 0.5: the point falls on a base-10000 boundary
        (10, 1, 0, 0, [1]),  # 1.0: trailing zero groups stripped
        (123456789, 0, 2, 0, [1, 2345, 6789]),
        (10**37, 0, 9, 0, [10]),
        (-(10**38 - 1), 2, 8, 0x4000, [9999] * 9 + [9900]),
        (1, 10, -3, 0, [100]),  # 0.0000000001
    ],
)
def test_numeric_binary_layout(
    impl: ModuleType, unscaled: int, scale: int, weight: int, sign: int, digits: list[int]
) -> None:
    batch = pa.RecordBatch.from_arrays(
        [decimal_from_unscaled([unscaled], pa.decimal128(38, scale))], names=["n"]
    )
    field = impl.copy_binary(batch)[19 + 2 : -2]
    expected = struct.pack(f">hhHh{len(digits)}H", len(digits), weight, sign, scale, *digits)
    assert field == struct.pack(">i", len(expected)) + expected


# ---------------------------------------------------------------------------------------------
# Canonical JSON


def test_json_canonical_samples(impl: ModuleType) -> None:
    batch = pa.RecordBatch.from_arrays(
        [
            pa.array([1, None], pa.int64()),
            decimal_from_unscaled([125000, -1], pa.decimal128(18, 4)),
            decimal_from_unscaled([0, -7], pa.decimal128(18, 4)),
            decimal_from_unscaled([42, None], pa.decimal128(5, 0)),
            pa.array([b"\xab" * 16, None], pa.binary(16)),
            make_array(pa.timestamp("us", tz="UTC"), [0, -1]),
            make_array(pa.timestamp("us"), [946_684_800_000_001, None]),
            make_array(pa.date32(), [10957, -719162]),
            pa.array([True, False]),
            pa.array([0.1, 1e16]),
            pa.array(['q"\\\n\x01é', None]),
        ],
        names=["a", "dec", "zero", "s0", "id", "tz", "ts", "d", "b", "f", 'k"\n'],
    )
    assert (
        impl.json_rows(batch)
        == (
            '[{"a":1,"dec":12.5000,"zero":0.0000,"s0":42,'
            '"id":"abababab-abab-abab-abab-abababababab","tz":"1970-01-01T00:00:00.000000Z",'
            '"ts":"2000-01-01T00:00:00.000001","d":"2000-01-01","b":true,"f":0.1,'
            '"k\\"\\n":"q\\"\\\\\\n\\u0001é"},'
            '{"a":null,"dec":-0.0001,"zero":-0.0007,"s0":null,"id":null,'
            '"tz":"1969-12-31T23:59:59.999999Z","ts":null,"d":"0001-01-01","b":false,'
            '"f":1e+16,"k\\"\\n":null}]'
        ).encode()
    )


@given(batch=batches(max_rows=15))
@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_json_parsed_back_value_by_value(batch: pa.RecordBatch, impl: ModuleType) -> None:
    text = impl.json_rows(batch)
    rows = json.loads(text, parse_float=Decimal, object_pairs_hook=lambda pairs: pairs)
    assert len(rows) == batch.num_rows
    for r, pairs in enumerate(rows):
        assert [k for k, _ in pairs] == batch.schema.names
        for (_, got), field, column in zip(pairs, batch.schema, batch.columns, strict=True):
            expected = column[r].as_py()
            t = field.type
            if expected is None:
                assert got is None
            elif pa.types.is_decimal(t):
                dec = got if isinstance(got, Decimal) else Decimal(got)
                assert dec == expected
                assert dec.as_tuple().exponent == -t.scale  # exactly `scale` digits shown
                assert isinstance(got, int) == (t.scale == 0)
            elif pa.types.is_timestamp(t):
                body = got[:-1] if t.tz else got
                assert TS_FORM.match(body), got
                assert got.endswith("Z") == bool(t.tz)
                parsed = datetime.fromisoformat(got)
                assert parsed == expected
            elif pa.types.is_date32(t):
                assert re.fullmatch(r"\d{4}-\d\d-\d\d", got)
                assert date.fromisoformat(got) == expected
            elif isinstance(t, pa.BaseExtensionType) or pa.types.is_fixed_size_binary(t):
                as_bytes = expected.bytes if isinstance(expected, uuid.UUID) else expected
                assert got == got.lower() and len(got) == 36
                assert uuid.UUID(got).bytes == as_bytes
            elif pa.types.is_floating(t):
                assert float(got) == expected
                assert str(got) == repr(expected) or repr(float(got)) == repr(expected)
            else:
                assert got == expected
                assert type(got) is type(expected)


def test_json_float_shortest_repr(impl: ModuleType) -> None:
    values = [0.1, 1 / 3, 1e-7, -0.0, 5e-324, 1.7976931348623157e308, 123456789.0]
    text = impl.json_rows(one_column(pa.float64(), values))
    parts = [row["v"] for row in json.loads(text)]
    assert text == ("[" + ",".join('{"v":' + repr(v) + "}" for v in values) + "]").encode()
    assert parts == values


def test_json_strings_like_json_dumps(impl: ModuleType) -> None:
    values = ["".join(map(chr, range(0, 0x80))), "é€😀\u2028", "\x7f"]
    text = impl.json_rows(one_column(pa.large_string(), values, name="s"))
    assert text == ("[" + ",".join('{"s":' + json.dumps(v, ensure_ascii=False) + "}"
                                   for v in values) + "]").encode()  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    "type_",
    [
        pa.list_(pa.int64()),
        pa.binary(),
        pa.binary(8),
        pa.timestamp("ms", tz="UTC"),
        pa.timestamp("ns"),
        pa.decimal128(5, -1),
        pa.decimal256(40, 2),
        pa.int8(),
        pa.uint32(),
        pa.date64(),
        pa.dictionary(pa.int32(), pa.string()),
    ],
    ids=str,
)
def test_unsupported_type_names_column_and_type(impl: ModuleType, type_: pa.DataType) -> None:
    batch = pa.RecordBatch.from_arrays(
        [pa.array([1]), pa.nulls(1, type_)], names=["fine", "bad_col"]
    )
    for fn in (impl.copy_binary, impl.json_rows):
        with pytest.raises(TypeError, match=r"column 'bad_col'.*" + re.escape(str(type_))):
            fn(batch)
    with pytest.raises(TypeError, match="bad_col"):
        impl.from_copy_binary(b"", batch.schema)


def test_plan_cache_tells_lookalike_types_apart(impl: ModuleType) -> None:
    """Same name, same storage format: a cached plan must not accept the unsupported twin."""
    plain = pa.RecordBatch.from_arrays([pa.array([1, 2], pa.int32())], names=["x"])
    assert impl.json_rows(plain) == b'[{"x":1},{"x":2}]'
    coded = pa.RecordBatch.from_arrays([pa.array(["a", "b"]).dictionary_encode()], names=["x"])
    with pytest.raises(TypeError, match="column 'x'"):
        impl.json_rows(coded)
    ids = pa.RecordBatch.from_arrays([pa.array([b"u" * 16], pa.binary(16))], names=["id"])
    as_uuid = pa.RecordBatch.from_arrays(
        [pa.ExtensionArray.from_storage(pa.uuid(), ids.column(0))], names=["id"]
    )
    assert impl.json_rows(ids) == impl.json_rows(as_uuid)
    views = pa.RecordBatch.from_arrays([pa.array(["a", None], pa.string_view())], names=["s"])
    assert impl.json_rows(views) == b'[{"s":"a"},{"s":null}]'


def test_timestamp_unit_error_says_cast(impl: ModuleType) -> None:
    batch = one_column(pa.timestamp("ns", tz="UTC"), [0])
    with pytest.raises(TypeError, match=r"cast to timestamp\('us'"):
        impl.copy_binary(batch)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("type_", [pa.float32(), pa.float64()], ids=str)
def test_json_rejects_non_finite_floats(impl: ModuleType, value: float, type_: pa.DataType) -> None:
    batch = one_column(type_, [1.5, None, value], name="temp")
    with pytest.raises(ValueError, match=rf"column 'temp', row 2: float {value!r}"):
        impl.json_rows(batch)
    assert impl.copy_binary(batch)  # PostgreSQL float8 stores NaN and infinities


def test_copy_rejects_nul_in_text(impl: ModuleType) -> None:
    batch = one_column(pa.string(), ["ok", None, "a\x00b"], name="note").slice(1)
    with pytest.raises(ValueError, match=r"column 'note', row 1: text contains a NUL byte"):
        impl.copy_binary(batch)
    assert json.loads(impl.json_rows(batch))[1]["note"] == "a\x00b"


def test_invalid_utf8_rejected(impl: ModuleType) -> None:
    for raw in (b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"ab\xe2\x82"):
        offsets = pa.py_buffer(struct.pack("<3i", 0, 1, 1 + len(raw)))
        arr = pa.Array.from_buffers(pa.string(), 2, [None, offsets, pa.py_buffer(b"a" + raw)])
        batch = pa.RecordBatch.from_arrays([arr], names=["t"])
        for fn in (impl.copy_binary, impl.json_rows):
            with pytest.raises(ValueError, match=r"column 't', row 1: text is not valid UTF-8"):
                fn(batch)


def test_decimal_beyond_precision_rejected(impl: ModuleType) -> None:
    batch = pa.RecordBatch.from_arrays(
        [decimal_from_unscaled([99999, 100000], pa.decimal128(5, 2))], names=["amount"]
    )
    with pytest.raises(ValueError, match=r"column 'amount', row 1: .*numeric\(5,2\)"):
        impl.copy_binary(batch)


def test_json_year_range(impl: ModuleType) -> None:
    for type_, bad in [
        (pa.date32(), -719163),
        (pa.timestamp("us", tz="UTC"), 253402300800000000),
        (pa.timestamp("us"), -62135596800000001),
    ]:
        with pytest.raises(ValueError, match=r"column 'v', row 0: .*years 1\.\.9999"):
            impl.json_rows(one_column(type_, [bad]))


def test_copy_timestamp_out_of_postgres_range(impl: ModuleType) -> None:
    with pytest.raises(ValueError, match="outside the range PostgreSQL"):
        impl.copy_binary(one_column(pa.timestamp("us"), [-(2**63) + 5]))
    with pytest.raises(ValueError, match="outside the range PostgreSQL"):
        impl.copy_binary(one_column(pa.date32(), [-(2**31)]))


# ---------------------------------------------------------------------------------------------
# Decoding corrupt COPY input: a clear ValueError, never a crash, both twins agree


def _sample_stream() -> tuple[bytes, pa.Schema]:
    batch = pa.RecordBatch.from_arrays(
        [
            pa.array([uuid.uuid4().bytes, None], pa.binary(16)),
            decimal_from_unscaled([125000, -1], pa.decimal128(18, 4)),
            pa.array(["héllo", None]),
            make_array(pa.timestamp("us", tz="UTC"), [0, 1]),
            make_array(pa.date32(), [1, None]),
            pa.array([True, None]),
            pa.array([1.5, 2.5], pa.float32()),
        ],
        names=["id", "n", "s", "ts", "d", "b", "f"],
    )
    return codec.copy_binary(batch), batch.schema


def _outcome(impl: ModuleType, data: bytes, schema: pa.Schema) -> pa.RecordBatch | str:
    try:
        return impl.from_copy_binary(data, schema)
    except ValueError as exc:
        assert "invalid binary COPY data" in str(exc)
        return "error"


@given(data=st.data())
@settings(max_examples=300, deadline=None)
def test_corrupt_copy_input_never_crashes(
    data: st.DataObject, c_impl: ModuleType, py_impl: ModuleType
) -> None:
    stream, schema = _sample_stream()
    mutated = bytearray(stream)
    how = data.draw(st.sampled_from(["truncate", "flip", "both", "garbage"]))
    if how in ("flip", "both"):
        for _ in range(data.draw(st.integers(1, 4))):
            pos = data.draw(st.integers(0, len(mutated) - 1))
            mutated[pos] ^= 1 << data.draw(st.integers(0, 7))
    if how in ("truncate", "both"):
        mutated = mutated[: data.draw(st.integers(0, len(mutated) - 1))]
    if how == "garbage":
        mutated = bytearray(data.draw(st.binary(max_size=200)))
    got_c = _outcome(c_impl, bytes(mutated), schema)
    got_py = _outcome(py_impl, bytes(mutated), schema)
    if isinstance(got_c, str) or isinstance(got_py, str):
        assert got_c == got_py
    else:
        assert got_c.equals(got_py)
    if how == "truncate":
        assert got_c == "error"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d[:-1], "truncated"),
        (lambda d: d + b"\x00", "after the trailer"),
        (lambda d: b"PGCOPX" + d[6:], "signature"),
        (lambda d: d[:11] + b"\x00\x01\x00\x00" + d[15:], "OIDs"),
        (lambda d: d[:19] + b"\x00\x03" + d[21:], "tuple has 3 fields"),
        (lambda d: d[:21] + b"\x00\x00\x00\x07" + d[25:], "field of 7 bytes, expected 8"),
    ],
)
def test_corrupt_copy_messages(impl: ModuleType, mutate, message: str) -> None:
    batch = pa.RecordBatch.from_arrays([pa.array([1], pa.int64()), pa.array([2])], names="ab")
    data = impl.copy_binary(batch)
    with pytest.raises(ValueError, match=message):
        impl.from_copy_binary(mutate(data), batch.schema)


@pytest.mark.parametrize("type_", [pa.string(), pa.large_string()], ids=str)
def test_decode_rejects_invalid_utf8(impl: ModuleType, type_: pa.DataType) -> None:
    field = b"ok\xc3("
    data = (
        b"PGCOPY\n\xff\r\n\x00" + bytes(8) + b"\x00\x01" + struct.pack(">i", len(field)) + field
        + b"\xff\xff"
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"column 'note': text is not valid UTF-8"):
        impl.from_copy_binary(data, pa.schema([("note", type_)]))


def _numeric_stream(ndigits: int, weight: int, sign: int, dscale: int, digits: list[int]) -> bytes:
    field = struct.pack(f">hhHh{len(digits)}H", ndigits, weight, sign, dscale, *digits)
    return (
        b"PGCOPY\n\xff\r\n\x00" + bytes(8) + b"\x00\x01" + struct.pack(">i", len(field)) + field
        + b"\xff\xff"
    )  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ((0, 0, 0xC000, 0, []), "NaN"),
        ((0, 0, 0xD000, 0, []), "(?i)infinity"),
        ((1, 5, 0, 0, [1]), r"does not fit numeric\(18,4\)"),  # 10**20
        ((1, -2, 0, 8, [1]), "more fractional digits"),  # 1e-8
        ((1, 0, 0, 0, [10000]), "digit out of range"),
        ((3, 0, 0, 0, [1]), "malformed numeric"),
    ],
)
def test_numeric_decode_errors(impl: ModuleType, fields: tuple, message: str) -> None:
    schema = pa.schema([("n", pa.decimal128(18, 4))])
    with pytest.raises(ValueError, match=message):
        impl.from_copy_binary(_numeric_stream(*fields), schema)


def test_numeric_decode_unstripped_and_rescaled(impl: ModuleType) -> None:
    schema = pa.schema([("n", pa.decimal128(38, 6))])
    # 12.5 sent with a trailing zero group and a smaller dscale than the column's.
    got = impl.from_copy_binary(_numeric_stream(3, 0, 0x4000, 1, [12, 5000, 0]), schema)
    assert got.column(0).to_pylist() == [Decimal("-12.500000")]


# ---------------------------------------------------------------------------------------------
# Inputs other than a pyarrow RecordBatch


def test_accepts_polars_and_tables(impl: ModuleType) -> None:
    pl = pytest.importorskip("polars")
    frame = pl.DataFrame({"a": [1, None, 3], "s": ["x", "y", None]})
    expected = pa.RecordBatch.from_arrays(
        [pa.array([1, None, 3]), pa.array(["x", "y", None], pa.large_string())], names=["a", "s"]
    )
    assert impl.json_rows(frame) == impl.json_rows(expected)
    table = pa.Table.from_batches([expected.slice(0, 1), expected.slice(1)])
    assert impl.copy_binary(table) == impl.copy_binary(expected)
    with pytest.raises(TypeError, match="RecordBatch"):
        impl.copy_binary([1, 2])


# ---------------------------------------------------------------------------------------------
# Type mapping


@pytest.mark.parametrize(
    ("pg", "precision", "scale", "arrow"),
    [
        ("uuid", None, None, pa.binary(16)),
        ("numeric", 18, 4, pa.decimal128(18, 4)),
        ("numeric(38,10)", None, None, pa.decimal128(38, 10)),
        ("timestamptz", None, None, pa.timestamp("us", tz="UTC")),
        ("timestamp with time zone", None, None, pa.timestamp("us", tz="UTC")),
        ("timestamp", None, None, pa.timestamp("us")),
        ("date", None, None, pa.date32()),
        ("int2", None, None, pa.int16()),
        ("integer", None, None, pa.int32()),
        ("bigint", None, None, pa.int64()),
        ("real", None, None, pa.float32()),
        ("float8", None, None, pa.float64()),
        ("boolean", None, None, pa.bool_()),
        ("text", None, None, pa.string()),
        ("character varying", None, None, pa.string()),
        ("varchar(20)", None, None, pa.string()),
        ("timestamp(3) with time zone", None, None, pa.timestamp("us", tz="UTC")),
        ("NUMERIC(5)", None, None, pa.decimal128(5, 0)),
        ("bpchar", None, None, pa.string()),
        ("numeric", None, None, _types.numeric_type()),  # plain numeric: exact text
        ("decimal", None, None, _types.numeric_type()),
    ],
)
def test_pg_to_arrow(pg: str, precision: int | None, scale: int | None, arrow: pa.DataType) -> None:
    assert _types.pg_to_arrow(pg, precision, scale) == arrow


def test_pg_to_arrow_refusals() -> None:
    with pytest.raises(TypeError, match="jsonb"):
        _types.pg_to_arrow("jsonb", column="x")
    with pytest.raises(TypeError, match="precision 38"):
        _types.pg_to_arrow("numeric", 40, 2)
    with pytest.raises(TypeError, match="scale"):
        _types.pg_to_arrow("numeric(10,-2)")
    with pytest.raises(TypeError, match="not supported"):
        _types.pg_to_arrow("integer[]", column="x")


def test_arrow_to_pg_names() -> None:
    assert _types.arrow_to_pg(pa.decimal128(18, 4)) == "numeric(18,4)"
    assert _types.arrow_to_pg(pa.uuid()) == "uuid"
    assert _types.arrow_to_pg(pa.timestamp("us", tz="Europe/Paris")) == "timestamptz"
    assert _types.arrow_to_pg(pa.large_string()) == "text"
    with pytest.raises(TypeError, match="column 'q'"):
        _types.arrow_to_pg(pa.int8(), "q")


# ---------------------------------------------------------------------------------------------
# Implementation selector


@pytest.mark.parametrize(("env", "expected"), [("c", "c"), ("python", "python"), ("", "c")])
def test_selector(env: str, expected: str) -> None:
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", "import metersync; print(metersync.__impl__)"],
        env={**os.environ, "METERSYNC_IMPL": env},
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == expected


def test_selector_rejects_bogus() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import metersync"],
        env={**os.environ, "METERSYNC_IMPL": "bogus"},
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "METERSYNC_IMPL='bogus' is not valid" in result.stderr


def test_facade_uses_selected_impl() -> None:
    assert metersync.__impl__ == codec.IMPL
    batch = one_column(pa.int64(), [1, None])
    assert codec.json_rows(batch) == b'[{"v":1},{"v":null}]'
    assert [b.num_rows for b in codec.slices(batch, 1)] == [1, 1]

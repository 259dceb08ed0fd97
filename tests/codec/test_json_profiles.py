"""JSON profiles (issue 10 item 4), row sizes and body-size splitting (item 5), both twins.

``metersync`` is the canonical form; ``metertrack`` omits null fields and writes decimals as JSON
strings with the column's scale. Row sizes are the real encoded lengths; split_by_body_size gives
zero-copy slices whose real upload bodies fit the cap, covering every row in order.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import date, datetime
from decimal import Decimal
from types import ModuleType

import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fix_arrow import batches, decimal_from_unscaled
from metersync import codec
from metersync.errors import CodecValueError
from metersync.tools.synthetic import reading_batch

PROFILES = ("metersync", "metertrack")
FIXTURE_OK = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
TS_FORM = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z?$")


def body(batch: pa.RecordBatch, impl: ModuleType, profile: str) -> bytes:
    return b'{"readings":' + impl.json_rows(batch, profile=profile) + b"}"


# ---------------------------------------------------------------------------------------------
# Both twins byte-identical, sizes are the real lengths


@given(batch=batches(max_rows=25), profile=st.sampled_from(PROFILES))
@settings(max_examples=300, deadline=None)
def test_twins_identical_per_profile(
    batch: pa.RecordBatch, profile: str, c_impl: ModuleType, py_impl: ModuleType
) -> None:
    text = c_impl.json_rows(batch, profile=profile)
    assert text == py_impl.json_rows(batch, profile=profile)
    sizes = c_impl.json_row_sizes(batch, profile=profile)
    assert sizes.type == pa.int64() and sizes.null_count == 0
    assert sizes.equals(py_impl.json_row_sizes(batch, profile=profile))
    # each size is the length of that row encoded alone, without brackets or comma
    real = [
        len(c_impl.json_rows(batch.slice(r, 1), profile=profile)) - 2 for r in range(len(batch))
    ]
    assert sizes.to_pylist() == real
    assert len(text) == 2 + sum(real) + max(0, len(real) - 1)
    if profile == "metersync":
        assert text == c_impl.json_rows(batch)  # the default profile


def _check_value(got: object, expected: object, t: pa.DataType, profile: str) -> None:
    if pa.types.is_decimal(t):
        if profile == "metertrack":
            assert isinstance(got, str), got  # a JSON string, never a float64 on the other side
            assert re.fullmatch(r"-?\d+" + (rf"\.\d{{{t.scale}}}" if t.scale else ""), got), got
        dec = got if isinstance(got, Decimal) else Decimal(got)
        assert dec == expected
        assert dec.as_tuple().exponent == -t.scale  # exactly `scale` digits shown
    elif pa.types.is_timestamp(t):
        assert TS_FORM.match(got) and got.endswith("Z") == bool(t.tz), got
        assert datetime.fromisoformat(got) == expected
    elif pa.types.is_date32(t):
        assert date.fromisoformat(got) == expected
    elif isinstance(t, pa.BaseExtensionType) or pa.types.is_fixed_size_binary(t):
        as_bytes = expected.bytes if isinstance(expected, uuid.UUID) else expected
        assert got == got.lower() and uuid.UUID(got).bytes == as_bytes
    elif pa.types.is_floating(t):
        assert float(got) == expected
    else:
        assert got == expected and type(got) is type(expected)


@given(batch=batches(max_rows=15), profile=st.sampled_from(PROFILES))
@FIXTURE_OK
def test_parsed_back_value_by_value(batch: pa.RecordBatch, profile: str, impl: ModuleType) -> None:
    text = impl.json_rows(batch, profile=profile)
    rows = json.loads(text, parse_float=Decimal, object_pairs_hook=lambda pairs: pairs)
    fast = orjson.loads(text)  # a strict parser reads the same objects and keys
    assert [list(row) for row in fast] == [[k for k, _ in pairs] for pairs in rows]
    assert len(rows) == batch.num_rows
    for r, pairs in enumerate(rows):
        got = dict(pairs)
        present = [
            f.name for f, c in zip(batch.schema, batch.columns, strict=True) if c[r].is_valid
        ]
        if profile == "metertrack":
            assert [k for k, _ in pairs] == present  # null fields omitted, order kept
        else:
            assert [k for k, _ in pairs] == batch.schema.names
        for field, column in zip(batch.schema, batch.columns, strict=True):
            expected = column[r].as_py()
            if expected is None:
                assert got.get(field.name, "absent") == (
                    "absent" if profile == "metertrack" else None
                )
            else:
                _check_value(got[field.name], expected, field.type, profile)


@given(batch=batches(max_rows=15, types=st.sampled_from([pa.int64(), pa.float64(), pa.bool_(),
                                                         pa.date32(), pa.binary(16),
                                                         pa.decimal128(18, 4)])))  # fmt: skip
@FIXTURE_OK
def test_metertrack_body_never_contains_null(batch: pa.RecordBatch, impl: ModuleType) -> None:
    text = impl.json_rows(batch, profile="metertrack")
    assert b"null" not in text
    assert all(v is not None for row in json.loads(text) for v in row.values())


# ---------------------------------------------------------------------------------------------
# Numeric edge cases, exact bytes


def test_numeric_edge_cases_exact(impl: ModuleType) -> None:
    d18 = decimal_from_unscaled(
        [999_999_999_999_999_999, -999_999_999_999_999_999, 0, -1, 1, 125_000, None, -125_000],
        pa.decimal128(18, 4),
    )
    wide = decimal_from_unscaled(
        [10**38 - 1, -(10**38 - 1), 2**64, -(2**64), 5, None, None, 0], pa.decimal128(38, 10)
    )
    s0 = decimal_from_unscaled([7, -7, 0, None, 10**17, 1, 1, 1], pa.decimal128(18, 0))
    batch = pa.RecordBatch.from_arrays([d18, wide, s0], names=["v", "w", "z"])
    numbers = [  # (v, w, z) per row, None for null
        ("99999999999999.9999", "9999999999999999999999999999.9999999999", "7"),
        ("-99999999999999.9999", "-9999999999999999999999999999.9999999999", "-7"),
        ("0.0000", "1844674407.3709551616", "0"),
        ("-0.0001", "-1844674407.3709551616", None),
        ("0.0001", "0.0000000005", "100000000000000000"),
        ("12.5000", None, "1"),
        (None, None, "1"),
        ("-12.5000", "0.0000000000", "1"),
    ]

    def row(values: tuple, quote: bool, omit: bool) -> str:
        parts = []
        for key, v in zip("vwz", values, strict=True):
            if v is None:
                if not omit:
                    parts.append(f'"{key}":null')
            else:
                parts.append(f'"{key}":"{v}"' if quote else f'"{key}":{v}')
        return "{" + ",".join(parts) + "}"

    for profile, quote in (("metersync", False), ("metertrack", True)):
        expected = "[" + ",".join(row(v, quote, quote) for v in numbers) + "]"
        assert impl.json_rows(batch, profile=profile) == expected.encode(), profile
        rows = [row(v, quote, quote) for v in numbers]
        assert impl.json_row_sizes(batch, profile=profile).to_pylist() == list(map(len, rows))
    parsed = json.loads(impl.json_rows(batch, profile="metertrack"))
    assert Decimal(parsed[0]["v"]) == Decimal("99999999999999.9999")  # all 18 digits kept
    assert parsed[6] == {"z": "1"}


def test_all_null_row_is_empty_object(impl: ModuleType) -> None:
    batch = pa.RecordBatch.from_arrays(
        [pa.array([None, 1], pa.int64()), pa.array([None, None], pa.string())], names=["a", "b"]
    )
    assert impl.json_rows(batch, profile="metertrack") == b'[{},{"a":1}]'
    assert impl.json_row_sizes(batch, profile="metertrack").to_pylist() == [2, 7]


def test_sizes_and_split_validate_like_json_rows(impl: ModuleType) -> None:
    batch = pa.RecordBatch.from_arrays([pa.array([1.5, float("inf")])], names=["f"])
    for call in (
        lambda: impl.json_row_sizes(batch),
        lambda: impl.split_by_body_size(batch, 1000, profile="metertrack"),
    ):
        with pytest.raises(CodecValueError, match=r"column 'f', row 1: float inf has no JSON"):
            call()


def test_unknown_profile_is_a_clear_error(impl: ModuleType) -> None:
    batch = pa.RecordBatch.from_arrays([pa.array([1])], names=["a"])
    for call in (
        lambda: impl.json_rows(batch, profile="MeterTrack"),
        lambda: impl.json_row_sizes(batch, profile="nope"),
        lambda: impl.split_by_body_size(batch, 100, profile=None),
    ):
        with pytest.raises(CodecValueError, match=r"unknown JSON profile .*'metertrack'"):
            call()


# ---------------------------------------------------------------------------------------------
# split_by_body_size


def _assert_split(batch: pa.RecordBatch, parts: list, cap: int, impl: ModuleType, profile: str):
    start = 0
    for k, part in enumerate(parts):
        assert part.num_rows >= 1
        assert len(body(part, impl, profile)) <= cap
        assert part.equals(batch.slice(start, part.num_rows))
        for i in range(batch.num_columns):  # zero copy: the same buffers, an offset into them
            got, whole = part.column(i).buffers(), batch.column(i).buffers()
            assert [b.address if b else None for b in got] == [
                b.address if b else None for b in whole
            ]
        start += part.num_rows
        if k + 1 < len(parts):  # maximal: one more row would not fit
            assert len(body(batch.slice(start - part.num_rows, part.num_rows + 1), impl,
                            profile)) > cap  # fmt: skip
    assert start == batch.num_rows


@given(
    batch=batches(max_rows=20),
    cap=st.integers(15, 600),
    profile=st.sampled_from(PROFILES),
)
@settings(max_examples=200, deadline=None)
def test_split_twins_agree_and_fit(
    batch: pa.RecordBatch, cap: int, profile: str, c_impl: ModuleType, py_impl: ModuleType
) -> None:
    sizes = c_impl.json_row_sizes(batch, profile=profile).to_pylist()
    if any(15 + s > cap for s in sizes):
        first = next(r for r, s in enumerate(sizes) if 15 + s > cap)
        for impl in (c_impl, py_impl):
            with pytest.raises(CodecValueError, match=rf"row {first} encodes to {sizes[first]} "):
                impl.split_by_body_size(batch, cap, profile=profile)
        return
    parts = c_impl.split_by_body_size(batch, cap, profile=profile)
    py_parts = py_impl.split_by_body_size(batch, cap, profile=profile)
    assert [p.num_rows for p in parts] == [p.num_rows for p in py_parts]
    _assert_split(batch, parts, cap, c_impl, profile)


@pytest.mark.parametrize("profile", PROFILES)
def test_split_wide_10k_batch_under_10_mib(profile: str) -> None:
    cap = 10_485_760
    batch = reading_batch(10_000, seed=5)
    parts = codec.split_by_body_size(batch, cap, profile=profile)
    assert len(parts) >= 2  # 10,000 wide rows are more than one 10 MiB body
    _assert_split(batch, parts, cap, codec.impl_module, profile)
    sizes = codec.json_row_sizes(batch, profile=profile)
    assert len(codec.json_rows(batch, profile=profile)) == 2 + pa.compute.sum(sizes).as_py() + (
        batch.num_rows - 1
    )


def test_single_row_over_the_cap_names_row_and_size(impl: ModuleType) -> None:
    texts = ["a", "b", "x" * 5000, "c"]
    batch = pa.RecordBatch.from_arrays([pa.array(texts)], names=["t"])
    size = len('{"t":""}') + 5000
    with pytest.raises(CodecValueError, match=rf"^row 2 encodes to {size} bytes of JSON") as exc:
        impl.split_by_body_size(batch, 1000)
    assert isinstance(exc.value, ValueError)
    assert impl.split_by_body_size(batch.slice(0, 2), 1000)[0].num_rows == 2
    assert impl.split_by_body_size(batch.slice(0, 0), 1000) == []


@pytest.mark.parametrize("cap", [0, -1, 1.5, True, "10"])
def test_split_rejects_bad_cap(impl: ModuleType, cap: object) -> None:
    batch = pa.RecordBatch.from_arrays([pa.array([1])], names=["a"])
    with pytest.raises(CodecValueError, match="max_body_bytes must be a positive integer"):
        impl.split_by_body_size(batch, cap)


def test_facade_exports() -> None:
    for name in ("json_rows", "json_row_sizes", "split_by_body_size"):
        assert name in codec.__all__
        assert getattr(codec, name).__doc__

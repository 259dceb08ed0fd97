"""Arrow fixtures for the codec tests: the two twins, and hypothesis strategies for batches.

Batches cover every supported type, nulls (with and without a validity bitmap), columns sliced
at different non-zero offsets and empty batches. ``pg_safe``/``json_safe`` keep values inside
what PostgreSQL (no NUL in text) and the canonical JSON form (finite floats) accept; both keep
dates and timestamps in the years 1..9999.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from types import ModuleType

import pyarrow as pa
import pytest
from hypothesis import strategies as st

IMPLS = ("c", "python")
_MODULES = {"c": "metersync.codec._batch", "python": "metersync.codec._python"}

#: Every Arrow type the codec maps (decimals are drawn separately with their precision/scale).
SIMPLE_TYPES: tuple[pa.DataType, ...] = (
    pa.binary(16),
    pa.uuid(),
    pa.int16(),
    pa.int32(),
    pa.int64(),
    pa.float32(),
    pa.float64(),
    pa.bool_(),
    pa.string(),
    pa.large_string(),
    pa.date32(),
    pa.timestamp("us", tz="UTC"),
    pa.timestamp("us"),
)

MIN_DAYS, MAX_DAYS = -719162, 2932896  # 0001-01-01 .. 9999-12-31 relative to 1970-01-01
MIN_US, MAX_US = MIN_DAYS * 86_400_000_000, (MAX_DAYS + 1) * 86_400_000_000 - 1


def load_impl(name: str) -> ModuleType:
    """The codec twin ``c`` or ``python`` (the compiled one must be built: no silent skip)."""
    try:
        return importlib.import_module(_MODULES[name])
    except ImportError as exc:  # pragma: no cover - only when the extension was not built
        pytest.fail(f"compiled core not importable ({exc}); run setup.py build_ext --inplace")


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> Iterator[ModuleType]:
    """Each codec twin in turn (module with copy_binary, json_rows, from_copy_binary, ...)."""
    yield load_impl(request.param)


@pytest.fixture(scope="session")
def c_impl() -> ModuleType:
    return load_impl("c")


@pytest.fixture(scope="session")
def py_impl() -> ModuleType:
    return load_impl("python")


# ---------------------------------------------------------------------------------------------
# Building arrays


def decimal_from_unscaled(values: list[int | None], type_: pa.Decimal128Type) -> pa.Array:
    """decimal128 array from unscaled integers (exact at any precision, unlike Decimal math)."""
    valid = [v is not None for v in values]
    data = b"".join((v or 0).to_bytes(16, "little", signed=True) for v in values)
    validity = None
    if not all(valid):
        bits = bytearray((len(values) + 7) // 8)
        for i, ok in enumerate(valid):
            if ok:
                bits[i >> 3] |= 1 << (i & 7)
        validity = pa.py_buffer(bytes(bits))
    return pa.Array.from_buffers(type_, len(values), [validity, pa.py_buffer(data)])


def make_array(type_: pa.DataType, values: list) -> pa.Array:
    """Arrow array of ``type_`` from raw Python values (bytes for uuid, ints for time/decimal)."""
    if isinstance(type_, pa.BaseExtensionType):
        return pa.ExtensionArray.from_storage(type_, pa.array(values, type_.storage_type))
    if pa.types.is_decimal(type_):
        return decimal_from_unscaled(values, type_)
    if pa.types.is_timestamp(type_):
        return pa.array(values, pa.int64()).view(type_)
    if pa.types.is_date32(type_):
        return pa.array(values, pa.int32()).view(type_)
    return pa.array(values, type_)


# ---------------------------------------------------------------------------------------------
# Strategies


def decimal_types() -> st.SearchStrategy[pa.Decimal128Type]:
    @st.composite
    def build(draw: st.DrawFn) -> pa.Decimal128Type:
        precision = draw(st.sampled_from([1, 4, 5, 9, 18, 19, 28, 38]) | st.integers(1, 38))
        scale = draw(st.integers(0, min(precision, 10)))
        return pa.decimal128(precision, scale)

    return build()


def column_types() -> st.SearchStrategy[pa.DataType]:
    return st.sampled_from(SIMPLE_TYPES) | decimal_types()


def values_for(
    type_: pa.DataType, *, pg_safe: bool = True, json_safe: bool = True
) -> st.SearchStrategy:
    """Raw values of one type (without nulls)."""
    if isinstance(type_, pa.BaseExtensionType) or pa.types.is_fixed_size_binary(type_):
        return st.binary(min_size=16, max_size=16)
    if pa.types.is_integer(type_):
        bits = type_.bit_width
        edge = st.sampled_from([0, -1, 1, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1])
        return edge | st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    if pa.types.is_floating(type_):
        width = 32 if type_ == pa.float32() else 64
        return st.floats(
            width=width, allow_nan=not (pg_safe or json_safe), allow_infinity=not json_safe
        )
    if pa.types.is_boolean(type_):
        return st.booleans()
    if pa.types.is_string(type_) or pa.types.is_large_string(type_):
        edge = st.sampled_from(["", 'a"b\\c', "\n\r\t\b\f\x01\x1f\x7f", "é€😀", "'; --"])
        text = st.text(max_size=12)
        if pg_safe:
            text = st.text(
                alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12
            )
        return edge | text
    if pa.types.is_date32(type_):
        edge = st.sampled_from([0, -1, 10957, 10956, MIN_DAYS, MAX_DAYS])
        return edge | st.integers(MIN_DAYS, MAX_DAYS)
    if pa.types.is_timestamp(type_):
        pg_epoch = 946_684_800_000_000
        edge = st.sampled_from([0, -1, 1, pg_epoch, pg_epoch - 1, pg_epoch + 1, MIN_US, MAX_US])
        return edge | st.integers(MIN_US, MAX_US)
    if pa.types.is_decimal(type_):
        limit = 10**type_.precision - 1
        s = type_.scale
        edge = [0, 1, -1, limit, -limit, 10**s, -(10**s), 125 * 10 ** max(0, s - 1)]
        edge += [v for v in (999_999_999_999_999_999, -999_999_999_999_999_999) if abs(v) <= limit]
        return st.sampled_from([v for v in edge if abs(v) <= limit]) | st.integers(-limit, limit)
    raise AssertionError(f"no strategy for {type_}")


@st.composite
def arrays(
    draw: st.DrawFn,
    type_: pa.DataType,
    n: int,
    *,
    pg_safe: bool = True,
    json_safe: bool = True,
    max_offset: int = 3,
) -> pa.Array:
    """An array of ``n`` rows of ``type_``, possibly with nulls, sliced at a drawn offset."""
    offset = draw(st.integers(0, max_offset))
    tail = draw(st.integers(0, 2))
    null_rate = draw(st.sampled_from([0.0, 0.0, 0.2, 0.5, 1.0]))
    value = values_for(type_, pg_safe=pg_safe, json_safe=json_safe)
    values = []
    for _ in range(offset + n + tail):
        is_null = null_rate > 0 and draw(st.floats(0, 1)) < null_rate
        values.append(None if is_null else draw(value))
    return make_array(type_, values).slice(offset, n)


@st.composite
def batches(
    draw: st.DrawFn,
    *,
    types: st.SearchStrategy[pa.DataType] | None = None,
    min_cols: int = 1,
    max_cols: int = 6,
    max_rows: int = 12,
    pg_safe: bool = True,
    json_safe: bool = True,
) -> pa.RecordBatch:
    """A record batch of drawn column types, rows (0 included), nulls and per-column offsets."""
    n = draw(st.integers(0, max_rows))
    col_types = draw(
        st.lists(
            types if types is not None else column_types(), min_size=min_cols, max_size=max_cols
        )
    )
    cols = [draw(arrays(t, n, pg_safe=pg_safe, json_safe=json_safe)) for t in col_types]
    names = [f"c{i}" for i in range(len(cols))]
    if draw(st.booleans()):  # a slice of a whole batch too (offset on the parent)
        extra = draw(st.integers(0, 2))
        pad = [draw(arrays(t, n + extra, pg_safe=pg_safe, json_safe=json_safe)) for t in col_types]
        return pa.RecordBatch.from_arrays(pad, names=names).slice(extra, n)
    return pa.RecordBatch.from_arrays(cols, names=names)

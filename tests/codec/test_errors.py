"""Codec errors are MeterSyncError subclasses and still the builtin TypeError/ValueError.

Both twins raise ``CodecTypeError`` (a ``TypeError``) for what has no mapping and
``CodecValueError`` (a ``ValueError``) for values and bytes they refuse, with unchanged messages
naming the column, row or byte; code that caught ``TypeError``/``ValueError`` keeps working.
"""

from __future__ import annotations

from types import ModuleType

import pyarrow as pa
import pytest

from fix_arrow import make_array
from metersync import codec
from metersync.errors import CodecError, CodecTypeError, CodecValueError, MeterSyncError


def test_hierarchy() -> None:
    assert issubclass(CodecError, MeterSyncError)
    assert issubclass(CodecTypeError, CodecError) and issubclass(CodecTypeError, TypeError)
    assert issubclass(CodecValueError, CodecError) and issubclass(CodecValueError, ValueError)


def _one(type_: pa.DataType, values: list) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([make_array(type_, values)], names=["v"])


def test_unsupported_type(impl: ModuleType) -> None:
    batch = _one(pa.int8(), [1])
    for encode in (impl.copy_binary, impl.json_rows):
        with pytest.raises(CodecTypeError, match=r"column 'v': Arrow type int8"):
            encode(batch)
        try:  # an existing caller's handler still catches it
            encode(batch)
        except TypeError as exc:
            assert isinstance(exc, MeterSyncError)
    with pytest.raises(CodecTypeError, match="expected a pyarrow RecordBatch"):
        impl.copy_binary(object())
    with pytest.raises(CodecTypeError, match="uuid"):
        impl.uuid_array_binary(pa.array(["x"]))


def test_bad_values_and_bytes(impl: ModuleType) -> None:
    with pytest.raises(CodecValueError, match=r"column 'v', row 1: decimal value does not fit"):
        impl.copy_binary(_one(pa.decimal128(3, 1), [1, 1000]))
    with pytest.raises(CodecValueError, match=r"column 'v', row 0: float nan"):
        impl.json_rows(_one(pa.float64(), [float("nan")]))
    with pytest.raises(CodecValueError, match="missing PGCOPY signature"):
        impl.from_copy_binary(b"not copy data at all", pa.schema([("v", pa.int32())]))
    with pytest.raises(CodecValueError, match="element 1 is null"):
        impl.uuid_array_binary(pa.array([b"x" * 16, None], pa.binary(16)))
    try:
        impl.copy_binary(_one(pa.string(), ["a\x00b"]))
    except ValueError as exc:  # the old handler
        assert isinstance(exc, CodecValueError)
        assert "column 'v', row 0: text contains a NUL byte" in str(exc)
    else:
        pytest.fail("NUL byte accepted")


def test_facade_and_type_mapping() -> None:
    with pytest.raises(CodecValueError, match="slice size must be a positive integer"):
        list(codec.slices(_one(pa.int32(), [1]), 0))
    with pytest.raises(CodecTypeError, match="precision 38"):
        codec._types.pg_to_arrow("numeric", 40, 2)

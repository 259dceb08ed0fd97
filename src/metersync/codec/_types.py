"""The single Arrow <-> PostgreSQL type mapping, shared by both codec twins and the adapter.

``column_plan(schema)`` validates a record batch schema once and describes each column the way
the encoders need it (a kind code, decimal precision/scale, whether a timestamp has a zone, the
JSON key already escaped). The Cython core mirrors the ``KIND_*`` codes in ``_batch.pxd``; a test
asserts they agree.

``pg_to_arrow`` is the other direction, for reflecting a table's columns.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from functools import lru_cache

import pyarrow as pa

from metersync.errors import CodecTypeError, CodecValueError

__all__ = [
    "JSON_PROFILES",
    "KIND_BOOL",
    "KIND_DATE",
    "KIND_DECIMAL",
    "KIND_FLOAT32",
    "KIND_FLOAT64",
    "KIND_INT16",
    "KIND_INT32",
    "KIND_INT64",
    "KIND_LARGE_STRING",
    "KIND_NUMERIC",
    "KIND_STRING",
    "KIND_TIMESTAMP",
    "KIND_UUID",
    "ColumnSpec",
    "NumericType",
    "arrow_to_pg",
    "as_batch",
    "body_cap",
    "column_plan",
    "decimal_max_groups",
    "is_numeric",
    "is_uuid",
    "json_profile",
    "numeric_type",
    "pg_to_arrow",
    "row_too_large",
    "value_error",
]

# Kind codes: keep in sync with the enum in _batch.pxd (tests/test_codec.py checks).
KIND_UUID = 1
KIND_INT16 = 2
KIND_INT32 = 3
KIND_INT64 = 4
KIND_FLOAT32 = 5
KIND_FLOAT64 = 6
KIND_BOOL = 7
KIND_STRING = 8
KIND_LARGE_STRING = 9
KIND_DATE = 10
KIND_TIMESTAMP = 11
KIND_DECIMAL = 12
KIND_NUMERIC = 13  # plain numeric (no typmod) as its decimal text: the metersync.numeric type

#: Largest decimal128 precision (and so the largest numeric(p, s) we map).
MAX_PRECISION = 38

_SUPPORTED = (
    "fixed_size_binary(16) or uuid, int16/32/64, float32/64, bool, string, large_string, "
    "date32, timestamp('us'[, tz]), decimal128(p, s) with s >= 0, metersync.numeric"
)


class NumericType(pa.ExtensionType):
    """Plain PostgreSQL ``numeric`` (no precision or scale): each value is its decimal text.

    Why an extension type on ``string`` storage and not ``decimal128``/``decimal256``: a plain
    numeric has no fixed scale (``1.5`` and ``1.500`` are different values to PostgreSQL, which
    keeps the display scale) and up to 131072 integer and 16383 fraction digits, so only text
    holds every value exactly. Why not field metadata on a ``string`` column: metadata is lost by
    many Arrow operations and ignored by schema equality and hashing, so a numeric column could
    silently become text. The extension name travels with the type (also through the Arrow C
    data interface). Values: see :mod:`metersync.codec._numeric` for the accepted text.
    """

    def __init__(self) -> None:
        super().__init__(pa.string(), "metersync.numeric")

    def __arrow_ext_serialize__(self) -> bytes:
        return b""

    def __hash__(self) -> int:  # schemas holding it are hashed (the column plan cache)
        return hash("metersync.numeric")

    @classmethod
    def __arrow_ext_deserialize__(cls, storage_type: pa.DataType, serialized: bytes) -> NumericType:
        return cls()


_NUMERIC = NumericType()
with contextlib.suppress(pa.ArrowKeyError):  # already registered (module reloaded)
    pa.register_extension_type(_NUMERIC)


def numeric_type() -> NumericType:
    """The Arrow type of a plain ``numeric`` column (``metersync.numeric``, string storage)."""
    return _NUMERIC


def is_numeric(arrow_type: pa.DataType) -> bool:
    """True for the plain ``numeric`` extension type."""
    return (
        isinstance(arrow_type, pa.BaseExtensionType)
        and arrow_type.extension_name == "metersync.numeric"
        and arrow_type.storage_type == pa.string()
    )


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    """How one column is encoded.

    ``precision``/``scale`` are meaningful for decimals only; ``tz`` tells timestamptz from
    timestamp; ``json_key`` is ``"name":`` as UTF-8 JSON, escaped like any string.
    """

    name: str
    arrow_type: pa.DataType
    kind: int
    pg_type: str
    precision: int = 0
    scale: int = 0
    tz: bool = False
    json_key: bytes = b""


def _unsupported(column: str, arrow_type: pa.DataType, why: str = "") -> CodecTypeError:
    detail = f" ({why})" if why else ""
    return CodecTypeError(
        f"column {column!r}: Arrow type {arrow_type} has no PostgreSQL mapping{detail}; "
        f"supported: {_SUPPORTED}"
    )


def is_uuid(arrow_type: pa.DataType) -> bool:
    if isinstance(arrow_type, pa.BaseExtensionType):
        return arrow_type.extension_name == "arrow.uuid" and arrow_type.storage_type == pa.binary(
            16
        )
    return pa.types.is_fixed_size_binary(arrow_type) and arrow_type.byte_width == 16


def as_batch(data: object) -> pa.RecordBatch:
    """Accept a RecordBatch, a Table or any Arrow C data interface producer (polars, ...).

    ``string_view`` columns (what polars exports) are cast to ``large_string``: a copy, but the
    only layout our encoders read is offsets + bytes.
    """
    if isinstance(data, pa.RecordBatch):
        batch = data
    elif isinstance(data, pa.Table):
        if data.num_rows == 0:
            batch = pa.RecordBatch.from_pylist([], schema=data.schema)
        else:
            batch = data.combine_chunks().to_batches()[0]
    elif hasattr(data, "__arrow_c_array__"):
        batch = pa.record_batch(data)
    elif hasattr(data, "__arrow_c_stream__"):
        return as_batch(pa.table(data))
    else:
        raise CodecTypeError(
            f"expected a pyarrow RecordBatch (or an Arrow producer), got {type(data)!r}"
        )
    if any(pa.types.is_string_view(f.type) for f in batch.schema):
        columns = [
            c.cast(pa.large_string()) if pa.types.is_string_view(c.type) else c
            for c in batch.columns
        ]
        batch = pa.RecordBatch.from_arrays(columns, names=batch.schema.names)
    return batch


def column_spec(name: str, arrow_type: pa.DataType) -> ColumnSpec:
    """Validate one column and describe its encoding; ``CodecTypeError`` if unsupported."""
    t = arrow_type
    key = json.dumps(name, ensure_ascii=False).encode("utf-8") + b":"
    if is_uuid(t):
        return ColumnSpec(name, t, KIND_UUID, "uuid", json_key=key)
    if is_numeric(t):
        return ColumnSpec(name, t, KIND_NUMERIC, "numeric", json_key=key)
    if isinstance(t, pa.BaseExtensionType):
        raise _unsupported(name, t, f"extension type {t.extension_name}")
    simple = {
        pa.int16(): (KIND_INT16, "int2"),
        pa.int32(): (KIND_INT32, "int4"),
        pa.int64(): (KIND_INT64, "int8"),
        pa.float32(): (KIND_FLOAT32, "float4"),
        pa.float64(): (KIND_FLOAT64, "float8"),
        pa.bool_(): (KIND_BOOL, "bool"),
        pa.string(): (KIND_STRING, "text"),
        pa.large_string(): (KIND_LARGE_STRING, "text"),
        pa.date32(): (KIND_DATE, "date"),
    }
    if t in simple:
        kind, pg = simple[t]
        return ColumnSpec(name, t, kind, pg, json_key=key)
    if pa.types.is_timestamp(t):
        if t.unit != "us":
            raise _unsupported(
                name, t, f"unit {t.unit!r}: cast to timestamp('us'{', tz' if t.tz else ''}) first"
            )
        tz = t.tz is not None
        return ColumnSpec(name, t, KIND_TIMESTAMP, "timestamptz" if tz else "timestamp", tz=tz,
                          json_key=key)  # fmt: skip
    if pa.types.is_decimal128(t):
        if t.scale < 0:
            raise _unsupported(name, t, "negative scale: cast to a decimal with scale >= 0")
        return ColumnSpec(
            name,
            t,
            KIND_DECIMAL,
            f"numeric({t.precision},{t.scale})",
            precision=t.precision,
            scale=t.scale,
            json_key=key,
        )
    if pa.types.is_decimal(t):
        raise _unsupported(name, t, "cast to decimal128")
    if pa.types.is_date64(t):
        raise _unsupported(name, t, "cast to date32")
    raise _unsupported(name, t)


# Hashing a 44-field pa.Schema costs ~140 µs, about what decoding a whole page costs, so the
# callers that pass the same Schema object again (the database adapter's fetch schema) hit an
# identity cache first. Entries hold the schema itself, so an id is never reused while cached.
_BY_IDENTITY: dict[int, tuple[pa.Schema, tuple[ColumnSpec, ...]]] = {}
_IDENTITY_ENTRIES = 64


def column_plan(schema: pa.Schema) -> tuple[ColumnSpec, ...]:
    """Validate ``schema`` and return one :class:`ColumnSpec` per field, in order.

    Cached per schema: the JSON encoder runs per 1000-row slice of the same batch.
    Raises ``CodecTypeError`` naming the first unsupported column and its Arrow type.
    """
    hit = _BY_IDENTITY.get(id(schema))
    if hit is not None and hit[0] is schema:
        return hit[1]
    plan = _column_plan(schema)
    if len(_BY_IDENTITY) >= _IDENTITY_ENTRIES:
        _BY_IDENTITY.clear()
    _BY_IDENTITY[id(schema)] = (schema, plan)
    return plan


@lru_cache(maxsize=64)
def _column_plan(schema: pa.Schema) -> tuple[ColumnSpec, ...]:
    return tuple(column_spec(field.name, field.type) for field in schema)


# Value error codes: keep in sync with _batch.pxd. Both twins format messages from this table.
ERR_NUL = 1
ERR_UTF8 = 2
ERR_FLOAT = 3
ERR_YEAR = 4
ERR_PRECISION = 5
ERR_RANGE = 6
ERR_NUMERIC_SYNTAX = 7  # the same numbers as metersync.codec._numeric.SYNTAX / RANGE
ERR_NUMERIC_RANGE = 8

ERROR_TEXT: dict[int, str] = {
    ERR_NUL: "text contains a NUL byte, which PostgreSQL cannot store",
    ERR_UTF8: "text is not valid UTF-8",
    ERR_FLOAT: "float {value!r} has no JSON form (NaN and infinities are rejected)",
    ERR_YEAR: "{pg_type} value is outside the years 1..9999 of the canonical JSON form",
    ERR_PRECISION: "decimal value does not fit {pg_type}",
    ERR_RANGE: "{pg_type} value is outside the range PostgreSQL can store",
    ERR_NUMERIC_SYNTAX: "{value} is not a numeric literal ([+-]digits[.digits][e[+-]digits], "
    "NaN, Infinity or -Infinity)",
    ERR_NUMERIC_RANGE: "numeric {value} is outside the range PostgreSQL can store (at most "
    "131072 digits before the point and 16383 after)",
}

# Numeric text echoed into an error is clipped (it may be a megabyte of digits).
_ECHO = 60


def _echo(value: object) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = repr(value)
    return text if len(text) <= _ECHO else f"{text[:_ECHO]}... ({len(text)} characters)"


def value_error(spec: ColumnSpec, row: int, code: int, value: object = None) -> CodecValueError:
    """The error both twins raise for a value PostgreSQL or the JSON form cannot hold."""
    if code in (ERR_NUMERIC_SYNTAX, ERR_NUMERIC_RANGE):
        value = _echo(value)
    what = ERROR_TEXT[code].format(value=value, pg_type=spec.pg_type)
    return CodecValueError(f"column {spec.name!r}, row {row}: {what}")


#: JSON profiles: name -> (omit null fields, write decimals as JSON strings). "metersync" is the
#: canonical form of our contract; "metertrack" is what the original MeterTrack Client System
#: validates (a present null fails its "must be numeric" check; a numeric string reaches its
#: numeric columns exactly, a JSON number is parsed as float64).
JSON_PROFILES: dict[str, tuple[bool, bool]] = {
    "metersync": (False, False),
    "metertrack": (True, True),
}


def json_profile(profile: str) -> tuple[bool, bool]:
    """``(omit_nulls, quote_decimals)`` of a JSON profile; ``CodecValueError`` if unknown."""
    flags = JSON_PROFILES.get(profile) if isinstance(profile, str) else None
    if flags is None:
        raise CodecValueError(
            f"unknown JSON profile {profile!r}: use one of {', '.join(map(repr, JSON_PROFILES))}"
        )
    return flags


def body_cap(max_body_bytes: int) -> int:
    """Validate an upload body limit in bytes (a positive integer)."""
    if (
        isinstance(max_body_bytes, bool)
        or not isinstance(max_body_bytes, int)
        or max_body_bytes < 1
    ):
        raise CodecValueError(f"max_body_bytes must be a positive integer, got {max_body_bytes!r}")
    return max_body_bytes


def row_too_large(row: int, size: int, envelope: int, cap: int) -> CodecValueError:
    """The error both twins raise when one row alone does not fit an upload body."""
    return CodecValueError(
        f"row {row} encodes to {size} bytes of JSON: alone it makes a {envelope + size}-byte "
        f"upload body, over max_body_bytes={cap}"
    )


def arrow_to_pg(arrow_type: pa.DataType, column: str = "?") -> str:
    """PostgreSQL type name for ``arrow_type`` (``numeric(p,s)`` with its typmod)."""
    return column_spec(column, arrow_type).pg_type


def decimal_max_groups(precision: int, scale: int) -> int:
    """Most base-10000 digits a numeric of ``|value| < 10**precision`` (scaled) can need."""
    int_digits = max(0, precision - scale)
    return (int_digits + 3) // 4 + (scale + 3) // 4


_PG_ALIASES: dict[str, str] = {
    "uuid": "uuid",
    "int2": "int2",
    "smallint": "int2",
    "int4": "int4",
    "integer": "int4",
    "int": "int4",
    "int8": "int8",
    "bigint": "int8",
    "float4": "float4",
    "real": "float4",
    "float8": "float8",
    "double precision": "float8",
    "bool": "bool",
    "boolean": "bool",
    "text": "text",
    "varchar": "text",
    "character varying": "text",
    "bpchar": "text",
    "character": "text",
    "char": "text",
    "date": "date",
    "timestamptz": "timestamptz",
    "timestamp with time zone": "timestamptz",
    "timestamp": "timestamp",
    "timestamp without time zone": "timestamp",
    "numeric": "numeric",
    "decimal": "numeric",
}

_PG_TO_ARROW: dict[str, pa.DataType] = {
    "uuid": pa.binary(16),
    "int2": pa.int16(),
    "int4": pa.int32(),
    "int8": pa.int64(),
    "float4": pa.float32(),
    "float8": pa.float64(),
    "bool": pa.bool_(),
    "text": pa.string(),
    "date": pa.date32(),
    "timestamptz": pa.timestamp("us", tz="UTC"),
    "timestamp": pa.timestamp("us"),
}


def pg_to_arrow(
    type_name: str, precision: int | None = None, scale: int | None = None, *, column: str = "?"
) -> pa.DataType:
    """Arrow type metersync uses for a PostgreSQL column type.

    ``type_name`` is a ``pg_type.typname`` (``int8``, ``timestamptz``, ``bpchar``) or the SQL
    spelling (``bigint``, ``timestamp with time zone``, ``character varying``); a typmod suffix
    such as ``numeric(18,4)`` or ``varchar(20)`` is understood too. ``precision``/``scale`` are the
    numeric typmod (e.g. ``information_schema.columns.numeric_precision/_scale``): ``numeric(p,s)``
    maps to ``decimal128(p, s)``; a ``numeric`` without them (plain numeric, any scale) maps to
    :class:`NumericType`, its values as exact decimal text. Raises ``CodecTypeError`` naming
    ``column`` for anything unsupported.
    """
    # Split "numeric(18,4)", "varchar(20)", "timestamp(3) with time zone" into name + typmod.
    match = re.fullmatch(
        r"\s*([a-z0-9_ ]*?)\s*(?:\(\s*(-?\d+)\s*(?:,\s*(-?\d+)\s*)?\))?\s*([a-z ]*?)\s*",
        type_name.lower(),
    )
    if match is None:
        raise CodecTypeError(f"column {column!r}: PostgreSQL type {type_name!r} is not supported")
    name = " ".join(f"{match[1]} {match[4]}".split())
    if _PG_ALIASES.get(name) == "numeric" and precision is None and match[2] is not None:
        precision = int(match[2])
        scale = int(match[3]) if match[3] is not None else 0
    pg = _PG_ALIASES.get(name)
    if pg is None:
        raise CodecTypeError(
            f"column {column!r}: PostgreSQL type {type_name!r} is not supported by metersync "
            f"(supported: {', '.join(sorted(set(_PG_ALIASES.values())))})"
        )
    if pg != "numeric":
        return _PG_TO_ARROW[pg]
    if precision is None:
        return _NUMERIC
    scale = 0 if scale is None else scale
    if not 1 <= precision <= MAX_PRECISION:
        raise CodecTypeError(
            f"column {column!r}: numeric({precision},{scale}) exceeds the largest supported "
            f"precision {MAX_PRECISION}"
        )
    if not 0 <= scale <= precision:
        raise CodecTypeError(
            f"column {column!r}: numeric({precision},{scale}) needs 0 <= scale <= precision"
        )
    return pa.decimal128(precision, scale)

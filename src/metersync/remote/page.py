"""Download pages: validate a page of readings from the Client System and turn it into Arrow.

A page is trusted for nothing. Before a single row is written (spec §5) every reading must be a
JSON object holding exactly the upload columns of our ``meter_reading`` (plus an optional
``tenant_id`` that must be ours), with the key fields present, every value of the column's type
and within its range, and no id twice. Any problem is a :class:`MalformedPageError` naming the
reading (index and id), the field and what is wrong; nothing is returned in part.

Unknown fields are an error, not ignored: a field we do not store is data we would silently drop,
and a renamed column on either side should stop the download loudly rather than lose a column.

Numbers must arrive exact. ``numeric(18,4)`` holds 18 significant digits, a float64 only 15 to 17,
so a page parsed with float numbers can carry values that are already wrong. :func:`loads_page`
parses JSON with :class:`decimal.Decimal` for every number with a fraction or exponent; floats
in a ``numeric`` column are accepted only when their shortest text has at most 15 significant
digits (then they are exactly what the sender wrote) and refused otherwise.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

import pyarrow as pa

from metersync.errors import MalformedPageError
from metersync.model import KEY_COLUMNS

__all__ = ["REQUIRED_FIELDS", "loads_page", "page_to_batch"]

#: Fields every reading must carry with a non-null value.
REQUIRED_FIELDS: tuple[str, ...] = ("meter_reading_id", "created_at", "meter_id")

# A float64 round-trips any decimal text of at most 15 significant digits (DBL_DIG).
_FLOAT_EXACT_DIGITS = 15

_INT_RANGES: dict[pa.DataType, tuple[int, int]] = {
    pa.int8(): (-(2**7), 2**7 - 1),
    pa.int16(): (-(2**15), 2**15 - 1),
    pa.int32(): (-(2**31), 2**31 - 1),
    pa.int64(): (-(2**63), 2**63 - 1),
}


class _Problem(Exception):
    """One bad value: the row index within the page and what is wrong with it."""

    def __init__(self, index: int, problem: str) -> None:
        super().__init__(problem)
        self.index = index
        self.problem = problem


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid JSON number")


# Values and names from a page are echoed into errors that are logged and stored in sync_log:
# a hostile page must not turn into a 100 KB message, so each echo is clipped.
_MAX_ECHO = 80
# At most this many unknown field names are listed in one error.
_MAX_NAMES = 5


def _clip(text: str) -> str:
    """``text`` cut to :data:`_MAX_ECHO` characters, with an ellipsis and the full length."""
    if len(text) <= _MAX_ECHO:
        return text
    return f"{text[:_MAX_ECHO]}... ({len(text):,} chars)"


def _show(v: Any) -> str:
    """A page value as an error echoes it: ``repr`` for strings, ``str`` otherwise, clipped."""
    if type(v) is str:
        if len(v) <= _MAX_ECHO:
            return repr(v)
        # Slice before repr: a megabyte string is not copied into a second megabyte.
        return f"{v[:_MAX_ECHO]!r}... ({len(v):,} chars)"
    if type(v) is int and v.bit_length() > 256:
        # str() of a huge int raises ValueError past sys.get_int_max_str_digits().
        return f"<integer of {v.bit_length():,} bits>"
    try:
        return _clip(str(v))
    except ValueError:  # e.g. a huge int nested in a list
        return f"<{type(v).__name__}>"


def loads_page(raw: bytes | str) -> dict[str, Any]:
    """Parse a JSON document with exact numbers (``Decimal`` for fractions, ``int`` for integers).

    ``NaN`` and ``Infinity`` (which Python's json would accept) are refused with ``ValueError``.
    """
    return json.loads(raw, parse_float=Decimal, parse_constant=_reject_constant)


# ---------------------------------------------------------------------------------------------
# Per-type converters: a list of Python values (None = null) → an Arrow array of that type.
# Each checks the Python types itself (pyarrow happily turns True into 1, or 1.5 into 1 for
# integers) and raises _Problem naming the first bad row.


def _convert_uuid(values: Sequence[Any], _: pa.DataType) -> pa.Array:
    out: list[bytes | None] = []
    for i, v in enumerate(values):
        if v is None:
            out.append(None)
            continue
        if type(v) is not str:
            raise _Problem(i, f"expected a UUID string, got {_describe(v)}")
        # Only the canonical 8-4-4-4-12 form: uuid.UUID would also take braces, urn: prefixes
        # and bare hex, which the contract does not allow.
        if len(v) != 36 or v[8] != "-" or v[13] != "-" or v[18] != "-" or v[23] != "-":
            raise _Problem(i, f"not a UUID: {_show(v)}")
        try:
            out.append(uuid.UUID(v).bytes)
        except ValueError:
            raise _Problem(i, f"not a UUID: {_show(v)}") from None
    return pa.array(out, type=pa.binary(16))


def _parse_datetime(i: int, v: Any, *, aware: bool) -> dt.datetime:
    if type(v) is not str:
        raise _Problem(i, f"expected an ISO-8601 timestamp string, got {_describe(v)}")
    try:
        parsed = dt.datetime.fromisoformat(v)
    except ValueError:
        raise _Problem(i, f"not an ISO-8601 timestamp: {_show(v)}") from None
    if len(v) < 16 or v[10] not in "Tt ":
        raise _Problem(i, f"not an ISO-8601 timestamp with a time: {_show(v)}")
    if aware and parsed.tzinfo is None:
        raise _Problem(i, f"timestamp without a UTC offset or Z: {_show(v)}")
    if not aware and parsed.tzinfo is not None:
        raise _Problem(i, f"timestamp with an offset for a column without time zone: {_show(v)}")
    return parsed


def _convert_timestamp(values: Sequence[Any], type_: pa.DataType) -> pa.Array:
    aware = type_.tz is not None
    out = [None if v is None else _parse_datetime(i, v, aware=aware) for i, v in enumerate(values)]
    # pyarrow converts aware datetimes to UTC itself.
    return pa.array(out, type=type_)


def _convert_date(values: Sequence[Any], type_: pa.DataType) -> pa.Array:
    out: list[dt.date | None] = []
    for i, v in enumerate(values):
        if v is None:
            out.append(None)
            continue
        if type(v) is not str or len(v) != 10:
            raise _Problem(i, f"expected a date string YYYY-MM-DD, got {_describe(v)}")
        try:
            out.append(dt.date.fromisoformat(v))
        except ValueError:
            raise _Problem(i, f"not a date: {_show(v)}") from None
    return pa.array(out, type=type_)


def _convert_int(values: Sequence[Any], type_: pa.DataType) -> pa.Array:
    low, high = _INT_RANGES[type_]
    for i, v in enumerate(values):
        if v is None:
            continue
        if type(v) is not int:
            raise _Problem(i, f"expected an integer, got {_describe(v)}")
        if not low <= v <= high:
            raise _Problem(i, f"integer {_show(v)} out of range for {type_} [{low}, {high}]")
    return pa.array(values, type=type_)


def _convert_float(values: Sequence[Any], type_: pa.DataType) -> pa.Array:
    out: list[float | None] = []
    for i, v in enumerate(values):
        if v is None:
            out.append(None)
            continue
        t = type(v)
        if t is float:
            f = v
        elif t is int or t is Decimal:
            try:
                f = float(v)
            except OverflowError:
                raise _Problem(i, f"number {_show(v)} out of range for {type_}") from None
        else:
            raise _Problem(i, f"expected a number, got {_describe(v)}")
        if not math.isfinite(f):
            raise _Problem(i, f"number {_show(v)} is not finite")
        out.append(f)
    return pa.array(out, type=type_)


def _decimal_problem(d: Decimal, precision: int, scale: int) -> str | None:
    if not d.is_finite():
        return f"{_show(d)} is not a finite number"
    if d.is_zero():
        return None
    normalized = d.normalize()
    exponent = normalized.as_tuple().exponent
    assert isinstance(exponent, int)  # finite, checked above
    if -exponent > scale:
        return f"{_show(d)} has more than {scale} decimal places (numeric({precision},{scale}))"
    if normalized.adjusted() + 1 > precision - scale:
        return (
            f"{_show(d)} is out of range for numeric({precision},{scale}) "
            f"(at most {precision - scale} digits before the point)"
        )
    return None


def _convert_decimal(values: Sequence[Any], type_: pa.DataType) -> pa.Array:
    precision, scale = type_.precision, type_.scale
    kinds = {type(v) for v in values}
    if not kinds <= {Decimal, int, type(None)}:
        values = list(values)
        for i, v in enumerate(values):
            t = type(v)
            if t is float:
                values[i] = _exact_float(i, v)
            elif not (t is Decimal or t is int or v is None):
                raise _Problem(i, f"expected a number, got {_describe(v)}")
    try:
        # Fast path: pyarrow checks scale and precision itself (and refuses NaN).
        return pa.array(values, type=type_)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
        for i, v in enumerate(values):
            if v is None:
                continue
            problem = _decimal_problem(Decimal(v), precision, scale)
            if problem:
                raise _Problem(i, problem) from None
        raise _Problem(
            0, f"not convertible to numeric({precision},{scale}): {_clip(str(exc))}"
        ) from None


def _exact_float(i: int, f: float) -> Decimal:
    if not math.isfinite(f):
        raise _Problem(i, f"{f} is not a finite number")
    text = repr(f)
    digits = Decimal(text).as_tuple().digits
    if len(digits) > _FLOAT_EXACT_DIGITS:
        raise _Problem(
            i,
            f"number {text} arrived as a binary float with more than {_FLOAT_EXACT_DIGITS} "
            "significant digits and may have lost precision; parse pages with loads_page()",
        )
    return Decimal(text)


def _convert_bool(values: Sequence[Any], type_: pa.DataType) -> pa.Array:
    for i, v in enumerate(values):
        if v is not None and type(v) is not bool:
            raise _Problem(i, f"expected true or false, got {_describe(v)}")
    return pa.array(values, type=type_)


def _convert_string(values: Sequence[Any], type_: pa.DataType) -> pa.Array:
    for i, v in enumerate(values):
        if v is not None and type(v) is not str:
            raise _Problem(i, f"expected a string, got {_describe(v)}")
    return pa.array(values, type=type_)


_Converter = Callable[[Sequence[Any], pa.DataType], pa.Array]


def _convert_uuid_extension(values: Sequence[Any], type_: pa.DataType) -> pa.Array:
    storage = _convert_uuid(values, type_.storage_type)
    return pa.ExtensionArray.from_storage(type_, storage)


def _converter_for(type_: pa.DataType) -> _Converter:
    if isinstance(type_, pa.BaseExtensionType) and type_.extension_name == "arrow.uuid":
        return _convert_uuid_extension
    if pa.types.is_fixed_size_binary(type_) and type_.byte_width == 16:
        return _convert_uuid
    if pa.types.is_timestamp(type_):
        return _convert_timestamp
    if pa.types.is_date32(type_):
        return _convert_date
    if type_ in _INT_RANGES:
        return _convert_int
    if pa.types.is_float32(type_) or pa.types.is_float64(type_):
        return _convert_float
    if pa.types.is_decimal(type_):
        return _convert_decimal
    if pa.types.is_boolean(type_):
        return _convert_bool
    if pa.types.is_string(type_) or pa.types.is_large_string(type_):
        return _convert_string
    raise TypeError(f"page_to_batch: no JSON conversion for Arrow type {type_}")


def _describe(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"boolean {str(v).lower()}"
    if isinstance(v, str):
        return f"string {_show(v)}"
    if isinstance(v, int | float | Decimal):
        return f"number {_show(v)}"
    if isinstance(v, dict):
        return "an object"
    if isinstance(v, list):
        return "an array"
    return type(v).__name__


def _id_of(reading: Any) -> str:
    if isinstance(reading, dict):
        rid = reading.get("meter_reading_id")
        if isinstance(rid, str):
            return f" (id {_clip(rid)})"
    return ""


def page_to_batch(
    readings: list[dict[str, Any]],
    *,
    schema: pa.Schema,
    tenant_id: int,
    limit: int,
) -> pa.RecordBatch:
    """Validate one download page and return it as a record batch of ``schema``.

    ``readings`` is the page's ``readings`` array as parsed JSON (numbers exact, see
    :func:`loads_page`); ``schema`` the layout's upload schema (column order and Arrow types);
    ``tenant_id`` the tenant whose key fetched the page; ``limit`` the page size that was asked
    for. The batch has ``schema``'s columns in order; missing nullable fields are null.

    Raises :class:`MalformedPageError` naming the reading, the field and the problem: a page
    longer than ``limit``, a reading that is not an object, a missing key field, an unknown
    field, a value of the wrong type or out of its column's range, another tenant's reading, or
    an id seen twice. ``TypeError`` when ``schema`` holds a type with no JSON form.
    """
    prefix = f"download page for tenant {tenant_id}"
    if not isinstance(readings, list):
        raise MalformedPageError(f"{prefix}: 'readings' is {_describe(readings)}, not an array")
    if len(readings) > limit:
        raise MalformedPageError(
            f"{prefix}: {len(readings)} readings but at most {limit} were asked for "
            "(download_batch_size); the page was refused"
        )
    names = schema.names
    for key in KEY_COLUMNS[:3]:
        if key not in names:
            raise TypeError(f"page_to_batch: schema lacks the key column {key!r}")
    converters = [_converter_for(field.type) for field in schema]
    allowed = frozenset(names) | {"tenant_id"}
    required = frozenset(REQUIRED_FIELDS) | {f.name for f in schema if not f.nullable}

    for i, r in enumerate(readings):
        if type(r) is not dict:
            raise MalformedPageError(f"{prefix}: reading {i} is {_describe(r)}, not an object")
        keys = r.keys()
        if not keys <= allowed:
            extra = sorted(keys - allowed, key=repr)  # keys need not be str (nor comparable)
            unknown = ", ".join(_show(k) for k in extra[:_MAX_NAMES])
            if len(extra) > _MAX_NAMES:
                unknown += f" and {len(extra) - _MAX_NAMES:,} more"
            raise MalformedPageError(
                f"{prefix}: reading {i}{_id_of(r)}: unknown field(s) {unknown} "
                "(not a column of meter_reading)"
            )
        if not required <= keys:
            missing = sorted(required - keys)
            raise MalformedPageError(
                f"{prefix}: reading {i}{_id_of(r)}: missing required field(s) "
                f"{', '.join(map(repr, missing))}"
            )
        if "tenant_id" in r:
            theirs = r["tenant_id"]
            if type(theirs) is not int or theirs != tenant_id:
                raise MalformedPageError(
                    f"{prefix}: reading {i}{_id_of(r)} belongs to tenant {_show(theirs)}, not to "
                    f"{tenant_id}; the page was refused"
                )

    arrays: list[pa.Array] = []
    for field, convert in zip(schema, converters, strict=True):
        name = field.name
        values = [r.get(name) for r in readings]
        if name in required:
            for i, v in enumerate(values):
                if v is None:
                    raise MalformedPageError(
                        f"{prefix}: reading {i}{_id_of(readings[i])}: field {name!r} is null"
                    )
        try:
            arrays.append(convert(values, field.type))
        except _Problem as p:
            raise MalformedPageError(
                f"{prefix}: reading {p.index}{_id_of(readings[p.index])}: field {name!r}: "
                f"{p.problem}"
            ) from None

    ids = arrays[names.index("meter_reading_id")]
    if len(set(ids.to_pylist())) != len(ids):
        seen: dict[bytes, int] = {}
        for i, b in enumerate(ids.to_pylist()):
            if b in seen:
                raise MalformedPageError(
                    f"{prefix}: reading {i}{_id_of(readings[i])}: meter_reading_id repeats "
                    f"reading {seen[b]} of the same page"
                )
            seen[b] = i
    return pa.RecordBatch.from_arrays(arrays, schema=schema)

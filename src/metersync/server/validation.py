"""Per-reading validation of uploaded readings (reference Client System).

A bad reading is rejected on its own with an error text; the rest of the batch goes in. The
identity fields are checked the way PostgreSQL will read them in the insert statement, so a
reading that passes here never makes the set-based insert fail. Every other field is stored as
the JSON text it came as: any scalar is accepted (numbers of any size or scale, strings for
text/date/timestamp/uuid columns, booleans; SPEC §2), objects and arrays are not.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any

_UUID_RE = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
# ISO 8601 extended form with an explicit offset: a naive time would be read in the server's
# time zone, silently shifting the reading.
_TS_RE = re.compile(
    r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}(:?\d{2})?)$"
)
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
KEY_FIELDS = ("meter_reading_id", "created_at", "meter_id", "meter_element_id")
_NON_MEASUREMENT_FIELDS = frozenset({*KEY_FIELDS, "tenant_id"})


def reading_label(reading: Any, index: int) -> str:
    """The id to report a reading under: its meter_reading_id text, else its position."""
    if isinstance(reading, dict):
        rid = reading.get("meter_reading_id")
        if isinstance(rid, str) and rid:
            return rid
    return f"<reading {index}>"


def _is_int64(value: Any) -> bool:
    return (
        isinstance(value, int) and not isinstance(value, bool) and _INT64_MIN <= value <= _INT64_MAX
    )


# Value types a good reading may hold: JSON scalars (bool is a subclass of int, listed anyway).
_GOOD_TYPES = frozenset({str, int, float, bool, type(None)})


def validate_reading(
    reading: Any, tenant_id: int, *, finite: bool = False, check_nul: bool = True
) -> str | None:
    """Return why ``reading`` cannot be stored for ``tenant_id``, or None when it is good.

    ``finite=True`` says an infinite float can only come from a literal too large for a float64
    (orjson refuses NaN and infinities; the fallback parser refuses the NaN/Infinity words), so it
    is kept: the stored text is the literal, exact (a plain ``numeric`` may hold such values).
    It also lets a good reading be passed by C-level type checks instead of a per-field loop.
    ``check_nul=False`` says the caller knows no string can hold a NUL character (its body has
    no ``\\u0000`` escape); PostgreSQL text cannot store one, so such a reading is refused.
    """
    if not isinstance(reading, dict):
        return "reading is not a JSON object"
    rid = reading.get("meter_reading_id")
    if not isinstance(rid, str) or not _UUID_RE.match(rid):
        return "meter_reading_id must be a UUID string"
    created = reading.get("created_at")
    if not isinstance(created, str) or not _TS_RE.match(created):
        return "created_at must be an ISO 8601 timestamp with a UTC offset"
    try:
        datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return f"created_at {created!r} is not a valid timestamp"
    if not _is_int64(reading.get("meter_id")):
        return "meter_id must be a 64-bit integer"
    element = reading.get("meter_element_id")
    if element is not None and not _is_int64(element):
        return "meter_element_id must be a 64-bit integer or null"
    if "tenant_id" in reading and reading["tenant_id"] != tenant_id:
        return "tenant_id does not match the API key's tenant"
    if check_nul:
        for name, value in reading.items():
            if type(value) is str and "\x00" in value:
                return f"field {name!r} holds a NUL character, which PostgreSQL text cannot store"
    if finite and _GOOD_TYPES.issuperset(map(type, reading.values())):
        # 40+ fields per reading: map() keeps the type scan in C.
        return None
    for name, value in reading.items():
        kind = type(value)
        if kind is float:
            if not finite and not math.isfinite(value):  # a decoder that allows NaN/Infinity
                return f"field {name!r} is out of range"
            continue
        if kind in _GOOD_TYPES or name in _NON_MEASUREMENT_FIELDS:
            continue
        return f"field {name!r} must be a number, string, boolean or null (not {kind.__name__})"
    return None

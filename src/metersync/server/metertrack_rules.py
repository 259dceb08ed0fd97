"""How the original MeterTrack Client System reads and judges an upload (issue 10, "as it behaves").

The original is a Node.js service: ``JSON.parse`` turns every JSON number into a float64,
``express-validator`` checks each reading with ``isNumeric()`` on the value's JavaScript string
form, and ``node-postgres`` sends each value to PostgreSQL as that same string. This module
reproduces those three steps in Python, quirks included:

* every number is a float64 (``parse_int=float``): an 18-digit integer or decimal sent as a JSON
  number loses its last digits; a numeric *string* such as ``"12.5000"`` reaches PostgreSQL as
  written;
* a key that is present with ``null`` fails ``isNumeric`` (only an absent key is optional);
* ``isNumeric`` sees ``String(value)``: ``1e21`` is ``"1e+21"`` and fails, ``true`` fails.
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal
from typing import Any

import orjson

from metersync.model import MEASUREMENT_COLUMNS

#: The fields the original validates and stores (anything else in a reading is ignored).
NUMERIC_FIELDS: tuple[str, ...] = ("meter_element_id", *MEASUREMENT_COLUMNS)

# validator.js isNumeric() with the default (en-US) locale.
_IS_NUMERIC = re.compile(r"^[+-]?([0-9]*[.])?[0-9]+$")

_ABSENT = object()


class BodyParseError(ValueError):
    """The body is not JSON (the original's body parser throws; its error handler answers 500)."""


def _refuse_constant(name: str) -> Any:
    # JSON.parse refuses NaN/Infinity; so does the original.
    raise BodyParseError(f"Unexpected token {name[0]} in JSON")


def parse_body(raw: bytes) -> Any:
    """``JSON.parse`` of the body: every number a float64."""
    try:
        return json.loads(raw, parse_int=float, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        if isinstance(exc, BodyParseError):
            raise
        raise BodyParseError(f"Unexpected token in JSON: {exc}") from None


def js_number_text(x: float) -> str:
    """``String(x)`` in JavaScript (ECMA-262 Number::toString): shortest round-trip digits,
    positional between 1e-7 and 1e21, exponent form outside."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    if x == 0:
        return "0"  # also -0
    sign, digit_tuple, exponent = Decimal(repr(x)).normalize().as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(map(str, digit_tuple))
    k = len(digits)
    n = exponent + k  # value = 0.<digits> * 10**n
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        text = "0." + "0" * (-n) + digits
    else:
        e = n - 1
        mantissa = digits if k == 1 else digits[0] + "." + digits[1:]
        text = f"{mantissa}e{'+' if e >= 0 else '-'}{abs(e)}"
    return ("-" if sign else "") + text


def js_json_values(value: Any) -> Any:
    """``value`` made ready for orjson so that the text is what ``JSON.stringify`` writes:
    every number is a float64 in the original, printed as ``Number::toString`` (``375``, not
    ``375.0``; ``1e+21``), and NaN/Infinity become ``null``."""
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return orjson.Fragment(js_number_text(value).encode())
    if isinstance(value, dict):
        return {k: js_json_values(v) for k, v in value.items()}
    if isinstance(value, list):
        return [js_json_values(v) for v in value]
    return value


def js_string(value: Any) -> str:
    """What ``express-validator`` turns a value into before ``isNumeric`` (null → ``""``)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return js_number_text(value)
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return "[object Object]"
    return str(value)


def _is_numeric(value: Any) -> bool:
    if isinstance(value, list):
        # express-validator runs a standard validator on each element of an array value.
        return all(_is_numeric(item) for item in value)
    return bool(_IS_NUMERIC.match(js_string(value)))


def pg_text(value: Any) -> str | None:
    """The parameter ``node-postgres`` sends for a value (None is SQL NULL)."""
    if value is None:
        return None
    if isinstance(value, list):
        return "{" + ",".join("NULL" if v is None else (pg_text(v) or "") for v in value) + "}"
    if isinstance(value, dict):
        return json.dumps(value)
    return js_string(value)


def _error(index: int, name: str, msg: str, value: Any) -> dict[str, Any]:
    error: dict[str, Any] = {
        "type": "field",
        "msg": msg,
        "path": f"readings[{index}].{name}",
        "location": "body",
    }
    if value is not _ABSENT:  # JSON.stringify drops an undefined value
        error["value"] = value
    return error


def validation_errors(readings: list[Any]) -> list[dict[str, Any]]:
    """Every field error of the batch, in the original's shape (empty: the batch is valid)."""
    errors: list[dict[str, Any]] = []
    for index, reading in enumerate(readings):
        fields = reading if isinstance(reading, dict) else {}
        meter = fields.get("meter_id", _ABSENT)
        if meter is _ABSENT or js_string(meter) == "":
            errors.append(_error(index, "meter_id", "meter_id is required", meter))
        elif not _is_numeric(meter):
            errors.append(_error(index, "meter_id", "meter_id must be numeric", meter))
        for name in NUMERIC_FIELDS:
            if name in fields and not _is_numeric(fields[name]):
                errors.append(_error(index, name, f"{name} must be numeric", fields[name]))
    return errors


def sent_id(reading: dict[str, Any]) -> str | None:
    """The ``meter_reading_id`` a reading was sent with, kept for verification only."""
    value = reading.get("meter_reading_id")
    return None if value is None else js_string(value)

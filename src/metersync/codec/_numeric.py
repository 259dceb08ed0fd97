"""Plain ``numeric`` (no typmod) as text: the reference the C core is held to.

A plain ``numeric`` column travels as its decimal text (Arrow extension type ``metersync.numeric``
on ``string`` storage, see :mod:`metersync.codec._types`), because no fixed-scale decimal holds
every value PostgreSQL stores. This module turns that text into PostgreSQL's binary ``numeric``
(COPY), into its canonical text (JSON), and binary ``numeric`` back into the canonical text.

Accepted text (a subset of what PostgreSQL's ``numeric_in`` reads, and every JSON number):
``[+-]digits[.digits][e[+-]digits]`` or ``[+-].digits[e...]``, and ``NaN``, ``Infinity``,
``+Infinity``, ``-Infinity``. No spaces, underscores, hex or other spellings. The display scale
(``dscale``) is what PostgreSQL derives: the fraction digits written, minus the exponent, at
least 0, so ``1.500`` keeps its trailing zeros and ``1.5e3`` is ``1500``.

The canonical text is what PostgreSQL prints for the same value (``numeric_out``): no exponent,
no leading zeros, exactly ``dscale`` fraction digits, no sign on zero.
In JSON it is a number (a string in the metertrack profile), except NaN and the infinities,
which have no JSON number form and are always the strings ``"NaN"``, ``"Infinity"``,
``"-Infinity"`` (the page parser reads them back).

Limits: PostgreSQL's binary format holds ``dscale <= 16383`` and a weight (base-10000 digits
before the point, minus one) ``<= 32767`` (131072 integer digits); outside them the value is
out of range.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

__all__ = [
    "DSCALE_MAX",
    "EXP_CLAMP",
    "NUMERIC_NAN",
    "NUMERIC_NEG",
    "NUMERIC_NINF",
    "NUMERIC_PINF",
    "NUMERIC_POS",
    "WEIGHT_MAX",
    "NumericText",
    "binary_text",
    "parse",
]

NUMERIC_POS, NUMERIC_NEG = 0x0000, 0x4000
NUMERIC_NAN, NUMERIC_PINF, NUMERIC_NINF = 0xC000, 0xD000, 0xF000
#: PostgreSQL's NUMERIC_DSCALE_MAX and the largest int16 weight.
DSCALE_MAX = 0x3FFF
WEIGHT_MAX = 0x7FFF
#: Exponents are read saturating at this magnitude (beyond it every value is out of range).
EXP_CLAMP = 1_000_000_000

_SPECIAL = {
    b"NaN": NUMERIC_NAN,
    b"Infinity": NUMERIC_PINF,
    b"+Infinity": NUMERIC_PINF,
    b"-Infinity": NUMERIC_NINF,
}
_SPECIAL_TEXT = {NUMERIC_NAN: "NaN", NUMERIC_PINF: "Infinity", NUMERIC_NINF: "-Infinity"}
_LITERAL = re.compile(rb"([+-]?)(?:([0-9]+)(?:\.([0-9]*))?|\.([0-9]+))(?:[eE]([+-]?[0-9]+))?")

#: Error codes of :func:`parse` (the same numbers as ``_types.ERR_NUMERIC_*``).
SYNTAX, RANGE = 7, 8


@dataclass(frozen=True, slots=True)
class NumericText:
    """A parsed numeric literal.

    ``special``: 0 for a finite value, else its sign word (NaN, +/-Infinity). For a finite value
    ``digits`` are all the digits written (integer part then fraction, leading zeros kept), the
    decimal point falls after ``point`` of them (may be < 0 or > len(digits)), ``dscale`` is the
    display scale, ``neg`` the sign as written.
    """

    special: int
    neg: bool
    digits: bytes
    point: int
    dscale: int

    @property
    def is_zero(self) -> bool:
        return self.special == 0 and not self.digits.strip(b"0")

    def canonical(self) -> str:
        """PostgreSQL's output text of the value (``numeric_out``)."""
        if self.special:
            return _SPECIAL_TEXT[self.special]
        d, p = self.digits, self.point
        first = len(d) - len(d.lstrip(b"0"))  # first nonzero digit (len(d) if none)
        if first < len(d) and first < p:
            whole = (d[first:p] + b"0" * max(0, p - len(d))).decode()
        else:
            whole = "0"
        sign = "-" if self.neg and first < len(d) else ""
        if self.dscale == 0:
            return sign + whole
        frac = (b"0" * max(0, -p) + d[max(0, p) :]).decode()  # exactly dscale digits
        return f"{sign}{whole}.{frac}"

    def binary(self) -> bytes:
        """PostgreSQL binary ``numeric`` (without the field length)."""
        if self.special:
            return struct.pack(">hhHH", 0, 0, self.special, special_dscale(self.special))
        d, p = self.digits, self.point
        stripped = d.lstrip(b"0")
        if not stripped:
            return struct.pack(">hhHH", 0, 0, NUMERIC_POS, self.dscale)
        first = len(d) - len(stripped)
        last = len(d.rstrip(b"0")) - 1
        weight = (p - 1 - first) // 4
        lastg = (p - 1 - last) // 4
        # Digit k is worth 10**(p - 1 - k); group g holds the exponents 4g .. 4g + 3.
        groups = []
        for g in range(weight, lastg - 1, -1):
            value = 0
            for e in range(4 * g + 3, 4 * g - 1, -1):
                k = p - 1 - e
                value = value * 10 + (d[k] - 48 if 0 <= k < len(d) else 0)
            groups.append(value)
        sign = NUMERIC_NEG if self.neg else NUMERIC_POS
        return struct.pack(f">HhHH{len(groups)}H", len(groups), weight, sign, self.dscale, *groups)


def special_dscale(sign: int) -> int:
    """The dscale PostgreSQL's numeric_send writes for NaN (0) and the infinities (32): its
    NUMERIC_DSCALE macro reads bits of the special sign word. Ignored on receive; written the
    same so that our COPY bytes equal PostgreSQL's own."""
    return (sign & 0x1F80) >> 7


def parse(text: bytes) -> NumericText | int:
    """The :class:`NumericText` of ``text``, or an error code: ``SYNTAX`` for anything that is
    not a numeric literal, ``RANGE`` for a value PostgreSQL's binary numeric cannot hold."""
    special = _SPECIAL.get(text)
    if special is not None:
        return NumericText(special, False, b"", 0, 0)
    m = _LITERAL.fullmatch(text)
    if m is None:
        return SYNTAX
    sign, whole, frac, only_frac, exp = m.groups()
    whole = whole or b""
    frac = (frac or b"") if only_frac is None else only_frac
    e = 0
    if exp is not None:
        magnitude = exp.lstrip(b"+-").lstrip(b"0")
        e = EXP_CLAMP if len(magnitude) > 10 else min(EXP_CLAMP, int(magnitude or b"0"))
        if exp[:1] == b"-":
            e = -e
    digits = whole + frac
    point = len(whole) + e
    dscale = max(0, len(frac) - e)
    value = NumericText(0, sign == b"-", digits, point, dscale)
    if dscale > DSCALE_MAX:
        return RANGE
    stripped = digits.lstrip(b"0")
    if stripped and (point - 1 - (len(digits) - len(stripped))) // 4 > WEIGHT_MAX:
        return RANGE
    return value


def _fields(field: bytes | memoryview) -> tuple[int, int, int, int, tuple[int, ...]]:
    ndigits, weight, sign, dscale = struct.unpack(">HhHH", field[:8])
    return ndigits, weight, sign, dscale, struct.unpack(f">{ndigits}H", field[8:])


def binary_text(field: bytes | memoryview) -> str:
    """The text PostgreSQL's ``numeric_out`` prints for a binary ``numeric`` field (checked by
    the caller: ``8 + 2 * ndigits`` bytes, a known sign, digits < 10000, dscale <= 16383)."""
    ndigits, weight, sign, dscale, digits = _fields(field)
    if sign in _SPECIAL_TEXT:
        return _SPECIAL_TEXT[sign]

    def digit(i: int) -> int:
        return digits[i] if 0 <= i < ndigits else 0

    out = "-" if sign == NUMERIC_NEG else ""
    if weight < 0:
        out += "0"
    else:
        out += str(digit(0)) + "".join(f"{digit(i):04d}" for i in range(1, weight + 1))
    if dscale > 0:
        groups = (dscale + 3) // 4
        frac = "".join(f"{digit(weight + 1 + i):04d}" for i in range(groups))
        out += "." + frac[:dscale]
    return out

"""Pure-Python twin of :mod:`metersync.codec._page`: a download page's JSON bytes → Arrow.

One pass over the page body, no intermediate Python document: every value is checked against
its column as it is read and stored in the column's Arrow layout (decimals as decimal128
integers built from the digits, never through ``float`` or ``Decimal``; UUID text as 16 bytes;
RFC 3339 timestamps as µs UTC). The compiled twin walks the bytes the same way, finds the same
first problem and reports it through :func:`page_error` of this module, so both raise the same
:class:`MalformedPageError` with the same message for the same bytes, and return equal batches.

What is checked (spec §5, issue 12): the page is a JSON object with a ``readings`` array and a
``next_cursor`` (string or null); at most ``limit`` readings; each reading is an object whose
fields are columns of the schema (or ``tenant_id``, which must be ours); each column's field at
most once, of the column's type and in its range; required fields present and not null; no id
twice in the page. Unknown fields are refused unless ``unknown_fields`` allows dropping them.
"""

from __future__ import annotations

import json
import re
import struct
from array import array
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from metersync.codec import _numeric, _types
from metersync.errors import MalformedPageError

__all__ = ["REQUIRED_FIELDS", "page_error", "page_plan", "parse_page"]

#: Fields every reading must carry with a non-null value (with the schema's non-nullable ones).
REQUIRED_FIELDS: tuple[str, ...] = ("meter_reading_id", "created_at", "meter_id")
#: Deepest nesting accepted inside the page (the page object itself is level 1).
MAX_DEPTH = 64
# Page text echoed into an error is clipped: errors are logged and stored in sync_log.
_ECHO = 80

# -- error codes (shared with the compiled twin) ----------------------------------------------
SX_END, SX_CHAR, SX_STRING, SX_NUMBER, SX_DEPTH = 1, 2, 3, 4, 5
P_READINGS_TYPE, P_NO_READINGS, P_CURSOR, P_NO_CURSOR, P_DUP_TOP, P_TOO_MANY, P_NOT_OBJECT = (
    10, 11, 12, 13, 14, 15, 16,
)  # fmt: skip
R_UNKNOWN, R_MISSING, R_TENANT, R_TWICE, R_NULL, R_DUP_ID = 20, 21, 22, 23, 24, 25
V_TYPE, V_UUID, V_TS, V_TS_NOZONE, V_TS_ZONE, V_DATE = 30, 31, 32, 33, 34, 35
V_INT_RANGE, V_DEC_SCALE, V_DEC_RANGE, V_FLOAT_RANGE, V_NUL = 36, 37, 38, 39, 40
V_NUMERIC = 41

# What a syntax error expected (``aux`` of SX_CHAR).
EXP_VALUE, EXP_KEY, EXP_COLON, EXP_OBJ_NEXT, EXP_ARR_NEXT, EXP_OBJECT, EXP_EOF = 1, 2, 3, 4, 5, 6, 7
_EXPECTED = {
    EXP_VALUE: "a value",
    EXP_KEY: "a field name (a string)",
    EXP_COLON: "':'",
    EXP_OBJ_NEXT: "',' or '}'",
    EXP_ARR_NEXT: "',' or ']'",
    EXP_OBJECT: "'{' (a page is a JSON object)",
    EXP_EOF: "the end of the page",
}
# Column index of the ``tenant_id`` field in errors (it is not a schema column).
TENANT_COL = -2

K = _types
_TYPE_EXPECTED = {
    K.KIND_UUID: "a UUID string",
    K.KIND_TIMESTAMP: "an ISO-8601 timestamp string",
    K.KIND_DATE: "a date string YYYY-MM-DD",
    K.KIND_INT16: "an integer",
    K.KIND_INT32: "an integer",
    K.KIND_INT64: "an integer",
    K.KIND_FLOAT32: "a number",
    K.KIND_FLOAT64: "a number",
    K.KIND_DECIMAL: "a number",
    K.KIND_NUMERIC: "a number or a numeric string",
    K.KIND_BOOL: "true or false",
    K.KIND_STRING: "a string",
    K.KIND_LARGE_STRING: "a string",
}
INT_RANGES = {
    K.KIND_INT16: (-(2**15), 2**15 - 1),
    K.KIND_INT32: (-(2**31), 2**31 - 1),
    K.KIND_INT64: (-(2**63), 2**63 - 1),
}


@dataclass(frozen=True)
class PagePlan:
    """A schema as the page parser sees it: column specs, which are required, names → index."""

    schema: pa.Schema
    specs: tuple[_types.ColumnSpec, ...]
    required: tuple[bool, ...]
    index: dict[bytes, int]
    id_col: int


_PLANS: dict[int, tuple[pa.Schema, PagePlan]] = {}


def page_plan(schema: pa.Schema) -> PagePlan:
    """The :class:`PagePlan` of ``schema`` (cached by identity); ``TypeError`` for a schema
    without the key columns or with a type that has no JSON form."""
    hit = _PLANS.get(id(schema))
    if hit is not None and hit[0] is schema:
        return hit[1]
    specs = _types.column_plan(schema)
    names = schema.names
    for key in REQUIRED_FIELDS:
        if key not in names:
            raise TypeError(f"parse_page: the schema lacks the key column {key!r}")
    if len(set(names)) != len(names):
        raise TypeError("parse_page: the schema has duplicate column names")
    id_col = names.index("meter_reading_id")
    if specs[id_col].kind != K.KIND_UUID:
        raise TypeError("parse_page: meter_reading_id must be a uuid column")
    required = tuple(f.name in REQUIRED_FIELDS or not f.nullable for f in schema)
    plan = PagePlan(
        schema, specs, required, {n.encode("utf-8"): i for i, n in enumerate(names)}, id_col
    )
    if len(_PLANS) >= 64:
        _PLANS.clear()
    _PLANS[id(schema)] = (schema, plan)
    return plan


# -- errors --------------------------------------------------------------------------------------


def _echo(body: bytes, start: int, end: int) -> str:
    raw = body[start:end]
    if len(raw) <= _ECHO:
        return raw.decode("utf-8", "replace")
    return f"{raw[:_ECHO].decode('utf-8', 'replace')}... ({len(raw):,} bytes)"


def _describe(body: bytes, start: int, end: int) -> str:
    first = body[start : start + 1]
    if first == b'"':
        return f"string {_echo(body, start, end)}"
    if first in b"-0123456789" and first:
        return f"number {_echo(body, start, end)}"
    if first in (b"t", b"f"):
        return f"boolean {_echo(body, start, end)}"
    if first == b"n":
        return "null"
    if first == b"{":
        return "an object"
    return "an array"


def _found(body: bytes, pos: int) -> str:
    c = body[pos]
    return repr(chr(c)) if 0x20 <= c < 0x7F else f"byte 0x{c:02x}"


def page_error(
    body: bytes,
    plan: PagePlan | None,
    tenant_id: int | None,
    code: int,
    row: int,
    col: int,
    start: int,
    end: int,
    aux: Any,
    rid: bytes | None,
) -> MalformedPageError:
    """The :class:`MalformedPageError` for one problem found by either twin.

    ``row``/``col``: the reading and column (−1: none; :data:`TENANT_COL`: ``tenant_id``);
    ``start``/``end``: the byte span of the token at fault; ``aux``: code-specific detail;
    ``rid``: the reading's id (16 bytes) when it was read before the problem, else None.
    """
    prefix = "download page" if tenant_id is None else f"download page for tenant {tenant_id}"
    if code < P_READINGS_TYPE:
        if code == SX_END:
            what = "unexpected end of the page"
        elif code == SX_CHAR:
            what = f"found {_found(body, start)} where {_EXPECTED[aux]} was expected"
        elif code == SX_STRING:
            what = (
                "invalid string (unterminated, a control character, a bad escape, an unpaired "
                "surrogate or invalid UTF-8)"
            )
        elif code == SX_NUMBER:
            what = "invalid number"
        else:
            what = f"nested deeper than {MAX_DEPTH} levels"
        return MalformedPageError(f"{prefix}: not valid JSON at byte {start}: {what}")
    if code == P_READINGS_TYPE:
        text = f"'readings' is {_describe(body, start, end)}, not an array"
    elif code == P_NO_READINGS:
        text = "the page has no 'readings' array"
    elif code == P_CURSOR:
        text = f"'next_cursor' is {_describe(body, start, end)}, not a string or null"
    elif code == P_NO_CURSOR:
        text = "the page has no 'next_cursor' (a string, or null)"
    elif code == P_DUP_TOP:
        text = f"the page holds {_echo(body, start, end)} twice"
    elif code == P_TOO_MANY:
        text = (
            f"the page holds more than {aux} readings but at most {aux} were asked for "
            "(download_batch_size); the page was refused"
        )
    elif code == P_NOT_OBJECT:
        text = f"reading {row} is {_describe(body, start, end)}, not an object"
    else:
        assert plan is not None
        who = f"reading {row}"
        if rid is not None:
            h = rid.hex()
            who += f" (id {h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]})"
        name = "tenant_id" if col == TENANT_COL else plan.specs[col].name if col >= 0 else ""
        if code == R_UNKNOWN:
            field = _echo(body, start, end)
            text = (
                f"{who}: unknown field {field} (not a column of meter_reading); to drop it, set "
                f'drop_unknown_fields = [{field}] (or "*" for every unknown field)'
            )
        elif code == R_MISSING:
            missing = sorted(plan.specs[c].name for c in aux)
            text = f"{who}: missing required field(s) {', '.join(map(repr, missing))}"
        elif code == R_TENANT:
            text = (
                f"{who} belongs to tenant {_echo(body, start, end)}, not to {tenant_id}; "
                "the page was refused"
            )
        elif code == R_TWICE:
            text = f"{who}: field {name!r} appears twice"
        elif code == R_NULL:
            text = f"{who}: field {name!r} is null"
        elif code == R_DUP_ID:
            text = f"{who}: meter_reading_id repeats reading {aux} of the same page"
        else:
            text = f"{who}: field {name!r}: {_value_problem(body, plan, code, col, start, end)}"
    return MalformedPageError(f"{prefix}: {text}")


def _value_problem(body: bytes, plan: PagePlan, code: int, col: int, start: int, end: int) -> str:
    spec = plan.specs[col]
    echo = _echo(body, start, end)
    if code == V_TYPE:
        return f"expected {_TYPE_EXPECTED[spec.kind]}, got {_describe(body, start, end)}"
    if code == V_UUID:
        return f"not a UUID: {echo}"
    if code == V_TS:
        return f"not an ISO-8601 timestamp YYYY-MM-DDTHH:MM[:SS[.ffffff]][Z|±HH:MM]: {echo}"
    if code == V_TS_NOZONE:
        return f"timestamp without a UTC offset or Z: {echo}"
    if code == V_TS_ZONE:
        return f"timestamp with an offset for a column without time zone: {echo}"
    if code == V_DATE:
        return f"not a date YYYY-MM-DD: {echo}"
    if code == V_INT_RANGE:
        low, high = INT_RANGES[spec.kind]
        return f"integer {echo} out of range for {spec.arrow_type} [{low}, {high}]"
    if code == V_NUMERIC:
        return (
            f"{echo} is not a numeric PostgreSQL can store (a JSON number, or an unescaped "
            "string [+-]digits[.digits][e[+-]digits], NaN, Infinity or -Infinity; at most "
            "131072 digits before the point and 16383 after)"
        )
    if code == V_DEC_SCALE:
        return f"number {echo} has more than {spec.scale} decimal places ({spec.pg_type})"
    if code == V_DEC_RANGE:
        return (
            f"number {echo} is out of range for {spec.pg_type} "
            f"(at most {spec.precision - spec.scale} digits before the point)"
        )
    if code == V_FLOAT_RANGE:
        return f"number {echo} out of range for {spec.arrow_type}"
    return "text holds a NUL character (\\u0000), which PostgreSQL text cannot store"


# -- the parser ----------------------------------------------------------------------------------


class _Fail(Exception):
    """One problem: (code, row, col, start, end, aux)."""


_WS = re.compile(rb"[ \t\n\r]*")
_SIMPLE_STRING = re.compile(rb'"([^"\\\x00-\x1f]*)"')
_STRING = re.compile(rb'"((?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*)"')
_NUMBER = re.compile(rb"-?(0|[1-9][0-9]*)(?:\.([0-9]+))?(?:[eE]([+-]?[0-9]+))?")
_UUID = re.compile(rb"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_TIMESTAMP = re.compile(
    rb"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2})"
    rb"(?::([0-9]{2})(?:\.([0-9]{1,9}))?)?([Zz]|[+-][0-9]{2}:[0-9]{2})?"
)
_DATE = re.compile(rb"([0-9]{4})-([0-9]{2})-([0-9]{2})")
_DIGITS = frozenset(b"0123456789-")
_EXP_CLAMP = 10**9
_DAYS_IN_MONTH = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_NO_ID = bytes(16)


def days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (year >= 1)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _valid_date(y: int, m: int, d: int) -> bool:
    if y < 1 or not 1 <= m <= 12 or d < 1:
        return False
    leap = y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)
    return d <= (29 if m == 2 and leap else _DAYS_IN_MONTH[m])


class _Parser:
    def __init__(
        self,
        body: bytes,
        plan: PagePlan | None,
        tenant_id: int | None,
        limit: int,
        drop_all: bool,
        drop: frozenset[bytes],
    ) -> None:
        self.b = body
        self.n = len(body)
        self.pos = 0
        self.plan = plan
        self.tenant_id = tenant_id
        self.limit = limit
        self.drop_all = drop_all
        self.drop = drop
        self.rows = 0
        self.rid: bytes | None = None
        ncols = len(plan.specs) if plan else 0
        self.values: list[list[Any]] = [[] for _ in range(ncols)]
        self.valid: list[list[bool]] = [[] for _ in range(ncols)]
        self.seen = [-1] * ncols

    # -- tokens

    def ws(self) -> None:
        self.pos = _WS.match(self.b, self.pos).end()  # type: ignore[union-attr]

    def peek(self) -> int:
        return self.b[self.pos] if self.pos < self.n else -1

    def fail_char(self, expected: int) -> _Fail:
        if self.pos >= self.n:
            return _Fail(SX_END, -1, -1, self.n, self.n, None)
        return _Fail(SX_CHAR, -1, -1, self.pos, self.pos + 1, expected)

    def string(self) -> tuple[bytes, bool]:
        """The string at pos (decoded UTF-8 bytes, had escapes); pos moves past it."""
        start = self.pos
        m = _SIMPLE_STRING.match(self.b, start)
        escaped = m is None
        if m is None:
            m = _STRING.match(self.b, start)
            if m is None:
                raise _Fail(SX_STRING, -1, -1, start, start + 1, None)
        raw = m.group(1)
        if escaped or not raw.isascii():
            try:
                text = raw.decode("utf-8")
                if escaped:
                    raw = json.loads('"' + text + '"').encode("utf-8")
            except (UnicodeError, ValueError):
                raise _Fail(SX_STRING, -1, -1, start, start + 1, None) from None
        self.pos = m.end()
        return raw, escaped

    def token(self, depth: int) -> tuple[int, int, Any]:
        """Scan one value: (first byte, start, payload); pos moves past it.

        Payload: (decoded, escaped) for strings, the match for numbers, None otherwise.
        """
        c = self.peek()
        start = self.pos
        if c == 0x22:
            return c, start, self.string()
        if c in _DIGITS:
            m = _NUMBER.match(self.b, start)
            if m is None:
                raise _Fail(SX_NUMBER, -1, -1, start, start + 1, None)
            self.pos = m.end()
            return c, start, m
        if c == 0x74 and self.b.startswith(b"true", start):
            self.pos += 4
        elif c == 0x66 and self.b.startswith(b"false", start):
            self.pos += 5
        elif c == 0x6E and self.b.startswith(b"null", start):
            self.pos += 4
        elif c == 0x7B or c == 0x5B:
            self.skip_container(depth)
        else:
            raise self.fail_char(EXP_VALUE)
        return c, start, None

    def member_key(self) -> tuple[bytes, int, int]:
        """An object member's key at pos and the colon after it: (key, key start, key end)."""
        if self.peek() != 0x22:
            raise self.fail_char(EXP_KEY)
        kstart = self.pos
        key, _ = self.string()
        kend = self.pos
        self.ws()
        if self.peek() != 0x3A:
            raise self.fail_char(EXP_COLON)
        self.pos += 1
        self.ws()
        return key, kstart, kend

    def more(self, close: int, expected: int) -> bool:
        """After a member or element: True at a comma (passed), False at ``close`` (passed);
        anything else fails, ``expected`` saying what was expected."""
        self.ws()
        c = self.peek()
        if c == 0x2C:
            self.pos += 1
            self.ws()
            return True
        if c == close:
            self.pos += 1
            return False
        raise self.fail_char(expected)

    def skip_container(self, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise _Fail(SX_DEPTH, -1, -1, self.pos, self.pos + 1, None)
        close = 0x7D if self.peek() == 0x7B else 0x5D
        self.pos += 1
        self.ws()
        if self.peek() == close:
            self.pos += 1
            return
        expected = EXP_OBJ_NEXT if close == 0x7D else EXP_ARR_NEXT
        while True:
            if close == 0x7D:
                self.member_key()
            self.token(depth + 1)
            if not self.more(close, expected):
                return

    # -- the page

    def parse(self) -> str | None:
        self.ws()
        if self.peek() != 0x7B:
            raise self.fail_char(EXP_OBJECT)
        self.pos += 1
        self.ws()
        seen_readings = seen_cursor = False
        cursor: str | None = None
        if self.peek() == 0x7D:
            self.pos += 1
        else:
            while True:
                key, kstart, kend = self.member_key()
                if key == b"readings":
                    if seen_readings:
                        raise _Fail(P_DUP_TOP, -1, -1, kstart, kend, None)
                    seen_readings = True
                    self.readings()
                elif key == b"next_cursor":
                    if seen_cursor:
                        raise _Fail(P_DUP_TOP, -1, -1, kstart, kend, None)
                    seen_cursor = True
                    c, start, payload = self.token(2)
                    if c == 0x22:
                        cursor = payload[0].decode("utf-8")
                    elif c != 0x6E:
                        raise _Fail(P_CURSOR, -1, -1, start, self.pos, None)
                else:
                    self.token(2)
                if not self.more(0x7D, EXP_OBJ_NEXT):
                    break
        self.ws()
        if self.pos != self.n:
            raise self.fail_char(EXP_EOF)
        if not seen_readings:
            raise _Fail(P_NO_READINGS, -1, -1, 0, 0, None)
        if not seen_cursor:
            raise _Fail(P_NO_CURSOR, -1, -1, 0, 0, None)
        return cursor

    def readings(self) -> None:
        if self.peek() != 0x5B:
            start = self.pos
            self.token(2)
            raise _Fail(P_READINGS_TYPE, -1, -1, start, self.pos, None)
        self.pos += 1
        self.ws()
        if self.peek() == 0x5D:
            self.pos += 1
            return
        while True:
            if self.rows == self.limit:
                raise _Fail(P_TOO_MANY, -1, -1, self.pos, self.pos, self.limit)
            if self.peek() != 0x7B or self.plan is None:
                start = self.pos
                c, _, _ = self.token(3)
                if c != 0x7B:
                    raise _Fail(P_NOT_OBJECT, self.rows, -1, start, self.pos, None)
            else:
                self.reading()
            self.rows += 1
            if not self.more(0x5D, EXP_ARR_NEXT):
                break
        if self.plan is not None:
            self.check_duplicates()

    def reading(self) -> None:
        plan = self.plan
        assert plan is not None
        row = self.rows
        self.rid = None
        tenant_seen = False
        self.pos += 1
        self.ws()
        if self.peek() == 0x7D:
            self.pos += 1
        else:
            while True:
                key, kstart, kend = self.member_key()
                col = plan.index.get(key, -1)
                if col >= 0:
                    if self.seen[col] == row:
                        raise _Fail(R_TWICE, row, col, kstart, kend, None)
                    self.seen[col] = row
                    self.field(row, col)
                elif key == b"tenant_id":
                    if tenant_seen:
                        raise _Fail(R_TWICE, row, TENANT_COL, kstart, kend, None)
                    tenant_seen = True
                    self.tenant(row)
                elif self.drop_all or key in self.drop:
                    self.token(4)
                else:
                    raise _Fail(R_UNKNOWN, row, -1, kstart, kend, None)
                if not self.more(0x7D, EXP_OBJ_NEXT):
                    break
        missing = [c for c, req in enumerate(plan.required) if req and self.seen[c] != row]
        if missing:
            raise _Fail(R_MISSING, row, -1, 0, 0, missing)
        for c, seen in enumerate(self.seen):
            if seen != row:
                self.store_null(c)

    def tenant(self, row: int) -> None:
        c, start, m = self.token(4)
        ok = (
            c in _DIGITS
            and m.group(2) is None
            and m.group(3) is None
            and len(m.group(1)) <= 19
            and (self.tenant_id is None or int(m.group(0)) == self.tenant_id)
        )
        if not ok:
            raise _Fail(R_TENANT, row, TENANT_COL, start, self.pos, None)

    def store_null(self, col: int) -> None:
        kind = self.plan.specs[col].kind  # type: ignore[union-attr]
        self.valid[col].append(False)
        if kind == K.KIND_UUID:
            self.values[col].append(_NO_ID)
        elif kind in (K.KIND_STRING, K.KIND_LARGE_STRING, K.KIND_NUMERIC):
            self.values[col].append(b"")
        elif kind == K.KIND_BOOL:
            self.values[col].append(False)
        else:
            self.values[col].append(0)

    def field(self, row: int, col: int) -> None:
        spec = self.plan.specs[col]  # type: ignore[union-attr]
        kind = spec.kind
        c, start, payload = self.token(4)
        end = self.pos

        def fail(code: int) -> _Fail:
            return _Fail(code, row, col, start, end, None)

        if c == 0x6E:
            if self.plan.required[col]:  # type: ignore[union-attr]
                raise fail(R_NULL)
            self.store_null(col)
            return
        if kind == K.KIND_NUMERIC:  # plain numeric: the literal as text, digits exactly kept
            if c in _DIGITS:
                value = payload.group(0)
            elif c == 0x22:
                if payload[1]:
                    raise fail(V_NUMERIC)
                value = payload[0]
            else:
                raise fail(V_TYPE)
            if isinstance(_numeric.parse(value), int):
                raise fail(V_NUMERIC)
        elif kind == K.KIND_DECIMAL:
            if c not in _DIGITS:
                raise fail(V_TYPE)
            value = _decimal(payload, spec.precision, spec.scale)
            if isinstance(value, tuple):
                raise fail(value[0])
        elif kind == K.KIND_UUID:
            if c != 0x22:
                raise fail(V_TYPE)
            text, escaped = payload
            if escaped or len(text) != 36 or not _UUID.fullmatch(text):
                raise fail(V_UUID)
            value = bytes.fromhex(text.replace(b"-", b"").decode("ascii"))
            if col == self.plan.id_col:  # type: ignore[union-attr]
                self.rid = value
        elif kind == K.KIND_TIMESTAMP:
            if c != 0x22:
                raise fail(V_TYPE)
            value = _timestamp(payload, spec.tz)
            if isinstance(value, tuple):
                raise fail(value[0])
        elif kind in INT_RANGES:
            if c not in _DIGITS or payload.group(2) is not None or payload.group(3) is not None:
                raise fail(V_TYPE)
            low, high = INT_RANGES[kind]
            if len(payload.group(1)) > 19:
                raise fail(V_INT_RANGE)
            value = int(payload.group(0))
            if not low <= value <= high:
                raise fail(V_INT_RANGE)
        elif kind == K.KIND_FLOAT64 or kind == K.KIND_FLOAT32:
            if c not in _DIGITS:
                raise fail(V_TYPE)
            value = float(payload.group(0))
            if value in (float("inf"), float("-inf")):
                raise fail(V_FLOAT_RANGE)
            if kind == K.KIND_FLOAT32:
                try:
                    struct.pack("<f", value)
                except OverflowError:
                    raise fail(V_FLOAT_RANGE) from None
        elif kind == K.KIND_BOOL:
            if c != 0x74 and c != 0x66:
                raise fail(V_TYPE)
            value = c == 0x74
        elif kind == K.KIND_DATE:
            if c != 0x22:
                raise fail(V_TYPE)
            text, escaped = payload
            m = None if escaped else _DATE.fullmatch(text)
            if m is None:
                raise fail(V_DATE)
            y, mo, d = int(m.group(1)), int(m.group(2)), int(m.group(3))
            if not _valid_date(y, mo, d):
                raise fail(V_DATE)
            value = days_from_civil(y, mo, d)
        else:  # text
            if c != 0x22:
                raise fail(V_TYPE)
            value = payload[0]
            if b"\x00" in value:
                raise fail(V_NUL)
        self.values[col].append(value)
        self.valid[col].append(True)

    def check_duplicates(self) -> None:
        plan = self.plan
        assert plan is not None
        first: dict[bytes, int] = {}
        for j, rid in enumerate(self.values[plan.id_col]):
            i = first.setdefault(rid, j)
            if i != j:
                raise _Fail(R_DUP_ID, j, plan.id_col, 0, 0, i)

    # -- Arrow

    def batch(self) -> pa.RecordBatch:
        plan = self.plan
        assert plan is not None
        n = self.rows
        arrays = []
        for col, spec in enumerate(plan.specs):
            values, valid = self.values[col], self.valid[col]
            nulls = valid.count(False)
            validity = pa.array(valid, pa.bool_()).buffers()[1] if nulls else None
            kind = spec.kind
            if kind == K.KIND_UUID:
                bufs = [validity, pa.py_buffer(b"".join(values))]
            elif kind == K.KIND_DECIMAL:
                data = b"".join(v.to_bytes(16, "little", signed=True) for v in values)
                bufs = [validity, pa.py_buffer(data)]
            elif kind == K.KIND_BOOL:
                bufs = [validity, pa.array(values, pa.bool_()).buffers()[1]]
            elif kind in (K.KIND_STRING, K.KIND_LARGE_STRING, K.KIND_NUMERIC):
                offsets = [0]
                at = 0
                for v in values:
                    at += len(v)
                    offsets.append(at)
                if kind != K.KIND_LARGE_STRING and at > 2**31 - 1:
                    raise ValueError(f"column {spec.name!r}: more text than a string array holds")
                code = "q" if kind == K.KIND_LARGE_STRING else "i"
                bufs = [
                    validity,
                    pa.py_buffer(array(code, offsets)),
                    pa.py_buffer(b"".join(values)),
                ]
            else:
                code = _ARRAY_CODE[kind]
                bufs = [validity, pa.py_buffer(array(code, values))]
            t = spec.arrow_type
            if isinstance(t, pa.BaseExtensionType):
                storage = pa.Array.from_buffers(t.storage_type, n, bufs, null_count=nulls)
                arrays.append(pa.ExtensionArray.from_storage(t, storage))
            else:
                arrays.append(pa.Array.from_buffers(t, n, bufs, null_count=nulls))
        return pa.RecordBatch.from_arrays(arrays, schema=plan.schema)


_ARRAY_CODE = {
    K.KIND_INT16: "h",
    K.KIND_INT32: "i",
    K.KIND_INT64: "q",
    K.KIND_FLOAT32: "f",
    K.KIND_FLOAT64: "d",
    K.KIND_TIMESTAMP: "q",
    K.KIND_DATE: "i",
}


def _decimal(m: re.Match[bytes], precision: int, scale: int) -> int | tuple[int]:
    """The unscaled integer of a JSON number for decimal128(precision, scale), or (error,)."""
    whole, frac, exp = m.group(1), m.group(2) or b"", m.group(3)
    digits = (whole + frac).lstrip(b"0")
    if not digits:
        return 0
    if exp is None:
        e = 0
    elif len(exp.lstrip(b"+-").lstrip(b"0")) > 10:
        e = -_EXP_CLAMP if exp[:1] == b"-" else _EXP_CLAMP
    else:
        e = max(-_EXP_CLAMP, min(_EXP_CLAMP, int(exp)))
    stripped = digits.rstrip(b"0")
    e += len(digits) - len(stripped) - len(frac)
    nd = len(stripped)
    if e + scale < 0:
        return (V_DEC_SCALE,)
    if nd + e + scale > precision:
        return (V_DEC_RANGE,)
    value = int(stripped) * 10 ** (e + scale)
    return -value if m.group(0)[:1] == b"-" else value


def _timestamp(payload: tuple[bytes, bool], tz: bool) -> int | tuple[int]:
    """µs since the epoch (UTC) of an RFC 3339 timestamp text, or (error,)."""
    text, escaped = payload
    m = None if escaped else _TIMESTAMP.fullmatch(text)
    if m is None:
        return (V_TS,)
    y, mo, d, h, mi = (int(m.group(k)) for k in range(1, 6))
    s = int(m.group(6) or b"0")
    frac = (m.group(7) or b"").ljust(9, b"0")
    zone = m.group(8)
    if not _valid_date(y, mo, d) or h > 23 or mi > 59 or s > 59 or frac[6:] != b"000":
        return (V_TS,)
    offset = 0
    if zone is not None and zone not in (b"Z", b"z"):
        oh, om = int(zone[1:3]), int(zone[4:6])
        if oh > 23 or om > 59:
            return (V_TS,)
        offset = (oh * 60 + om) * 60
        if zone[:1] == b"-":
            offset = -offset
    if tz and zone is None:
        return (V_TS_NOZONE,)
    if not tz and zone is not None:
        return (V_TS_ZONE,)
    seconds = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s - offset
    return seconds * 1_000_000 + int(frac[:6])


def drop_rule(unknown_fields: Collection[str] | str | None) -> tuple[bool, frozenset[bytes]]:
    """``(drop every unknown field, names to drop)`` from the ``unknown_fields`` argument."""
    if unknown_fields is None:
        return False, frozenset()
    if isinstance(unknown_fields, str):
        if unknown_fields in ("all", "*"):  # "*": the drop_unknown_fields setting's spelling
            return True, frozenset()
        raise ValueError(
            f"unknown_fields must be None, 'all' (or '*') or a collection of field names, "
            f"got {unknown_fields!r}"
        )
    return False, frozenset(name.encode("utf-8") for name in unknown_fields)


def shape_only(rows: int) -> pa.RecordBatch:
    """The batch of a shape-only parse: no columns, ``rows`` rows."""
    return pa.RecordBatch.from_struct_array(
        pa.StructArray.from_buffers(pa.struct([]), rows, [None])
    )


def parse_page(
    body: bytes,
    schema: pa.Schema | None,
    *,
    tenant_id: int | None,
    limit: int,
    unknown_fields: Collection[str] | str | None = None,
) -> tuple[pa.RecordBatch, str | None]:
    """Parse and validate one download page: ``(readings as a batch of schema, next_cursor)``.

    ``limit``: the page size asked for (a longer page is refused). ``unknown_fields``: None
    refuses any field that is not a column; ``"all"`` drops every such field; a collection of
    names drops those. ``schema=None`` checks the page's shape only (readings are objects, the
    cursor is a string or null, at most ``limit`` readings) and returns a batch without columns.
    Raises :class:`MalformedPageError` naming the byte, or the reading and field, at fault.
    """
    if not isinstance(body, bytes):
        body = bytes(body)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"limit must be a non-negative integer, got {limit!r}")
    plan = page_plan(schema) if schema is not None else None
    drop_all, drop = drop_rule(unknown_fields)
    parser = _Parser(body, plan, tenant_id, limit, drop_all, drop)
    try:
        cursor = parser.parse()
    except _Fail as fail:
        code, row, col, start, end, aux = fail.args
        rid = parser.rid if row == parser.rows and code >= R_UNKNOWN else None
        if code == R_DUP_ID:
            rid = parser.values[col][row]
        raise page_error(body, plan, tenant_id, code, row, col, start, end, aux, rid) from None
    if plan is None:
        return shape_only(parser.rows), cursor
    return parser.batch(), cursor

"""Reading an upload body without losing any number's text (reference Client System).

The server stores each reading's measurements as the JSON text the client sent (``12.5000``
stays ``12.5000``: a float64 or a re-serialization would not keep it) and validates the values
orjson parsed. Most bodies are the client's compact form, ``{"readings":[{...},{...}]}`` with
flat objects whose identity members come first: for those the body is cut into per-reading
texts with ``bytes.find`` (about a tenth of what parsing costs). Anything else takes a slower
path: texts cut from the body are checked against the parsed values one by one or, failing
that, Python's ``json`` with number hooks hands back every number as written.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

_HEAD = b'{"readings":['
_KEY = b'"readings":['
_OPEN, _CLOSE, _COMMA = 0x7B, 0x7D, 0x2C  # '{', '}', ','
# The client's canonical order puts the identity members first; the measurements' text is
# then everything after them. Values are matched loosely here: validation judges them.
_PREFIX_RE = re.compile(
    rb'\{"meter_reading_id":"[^"\\]*","created_at":"[^"\\]*","meter_id":-?\d+,'
    rb'"meter_element_id":(?:-?\d+|null)(,"tenant_id":-?\d+)?([,}])'
)
IDENTITY_FIELDS = frozenset(
    {"meter_reading_id", "created_at", "meter_id", "meter_element_id", "tenant_id"}
)


class BodyError(ValueError):
    """The body is not ``{"readings": [...]}`` JSON (the message says what is wrong)."""


class _Number(str):
    """A JSON number exactly as written in the body."""


def _split_objects(raw: bytes, pos: int, end: int | None) -> tuple[list[bytes], int] | None:
    """Texts of the flat objects of the array whose first element starts at ``pos``.

    Returns (texts, index just after the closing ``]``), or None when the array is not a
    comma-separated run of objects without nested braces. With ``end`` (the index of the
    closing ``]``) the array must end exactly there. A text is cut at the first ``}``, which
    may sit inside a string: the caller parses every text, and such a cut never parses (it
    ends inside an open string).
    """
    texts: list[bytes] = []
    find = raw.find
    if raw[pos : pos + 1] == b"]":
        return (texts, pos + 1) if end is None or pos == end else None
    while True:
        if raw[pos : pos + 1] != b"{":
            return None
        close = find(b"}", pos)
        if close < 0 or find(b"{", pos + 1, close) >= 0:
            return None
        texts.append(raw[pos : close + 1])
        nxt = close + 1
        following = raw[nxt : nxt + 1]
        if following == b"]":
            return (texts, nxt + 1) if end is None or nxt == end else None
        if following != b",":
            return None
        pos = nxt + 1


def _measurements_from_prefix(text: bytes, reading: dict[str, Any]) -> bytes | None:
    """The measurements' text of a valid reading whose identity members come first (the
    client's order), else None."""
    match = _PREFIX_RE.match(text)
    if match is None:
        return None
    with_tenant = match.group(1) is not None
    if with_tenant != ("tenant_id" in reading):  # tenant_id further on: slow path
        return None
    in_prefix = 5 if with_tenant else 4
    if match.group(2) == b"}":
        return b"{}" if len(reading) == in_prefix else None
    rest = text[match.end() :]
    # Without escapes, every '"' left opens or closes a key or a string value. As many as the
    # parsed reading's members and string values left (the id and the timestamp are the
    # prefix's two strings) means no key repeats: a repeated key adds text the parsed dict does
    # not hold. So no identity member hides among them: the text holds exactly the others.
    strings = list(map(type, reading.values())).count(str) - 2
    if b"\\" in rest or rest.count(b'"') != 2 * (len(reading) - in_prefix + strings):
        return None
    return b"{" + rest


def _render_exact(reading: dict[str, Any]) -> bytes:
    """Measurements of a reading parsed with number hooks, as compact JSON text: numbers as
    written, strings re-escaped (same value), booleans and null as themselves."""
    parts = []
    for name, value in reading.items():
        if name in IDENTITY_FIELDS:
            continue
        if type(value) is _Number:
            text = str.__str__(value)
        elif value is None or isinstance(value, (bool, str)):
            text = json.dumps(value, ensure_ascii=False)
        else:
            raise ValueError(f"field {name!r} is not a JSON scalar")  # validated earlier
        parts.append(json.dumps(name, ensure_ascii=False) + ":" + text)
    return ("{" + ",".join(parts) + "}").encode("utf-8")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _exact_loads(text: bytes) -> Any:
    return json.loads(text, parse_float=_Number, parse_int=_Number)


class UploadBody:
    """A parsed upload body: ``readings`` (orjson values) and their measurements' exact text."""

    def __init__(self, raw: bytes) -> None:
        self._raw = raw
        self._exact: list[Any] | None = None
        self.texts: list[bytes] | None = None
        self.readings: list[Any] = self._parse()

    def _parse(self) -> list[Any]:
        raw = self._raw
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            # orjson refuses a number literal too large for a float64 (a plain numeric may hold
            # one); Python's parser reads it (as inf: the text is what gets stored).
            if "infinity" not in str(exc):
                raise BodyError(f"body is not valid JSON: {exc}") from None
            try:
                doc = json.loads(raw, parse_constant=_refuse_constant)
            except (ValueError, RecursionError) as again:
                raise BodyError(f"body is not valid JSON: {again}") from None
        readings = doc.get("readings") if isinstance(doc, dict) else None
        if not isinstance(readings, list):
            raise BodyError('body must be {"readings": [reading objects]}')
        body = raw.rstrip()
        if body.startswith(_HEAD) and body.endswith(b"]}"):
            # The client's form: one key, its array spans the body. A text ends at the first
            # "}" after its "{", never past its reading's own end, so the texts cut each
            # reading into one or more pieces; as many texts as readings means one each.
            split = _split_objects(body, len(_HEAD), len(body) - 2)
            if split is not None and len(split[0]) == len(readings):
                self.texts = split[0]
                return readings
        self.texts = self._aligned_texts(readings)
        return readings

    def _aligned_texts(self, readings: list[Any]) -> list[bytes] | None:
        """Reading texts cut from the body, if each provably parses to its reading."""
        raw = self._raw
        start = raw.find(_KEY)
        if start < 0:
            return None
        split = _split_objects(raw, start + len(_KEY), None)
        if split is None or len(split[0]) != len(readings):
            return None
        try:
            if all(orjson.loads(t) == r for t, r in zip(split[0], readings, strict=True)):
                return split[0]
        except orjson.JSONDecodeError:
            pass
        return None

    def measurements_text(self, index: int) -> bytes:
        """The JSON text of reading ``index``'s measurements (every non-identity member), with
        every number exactly as uploaded. Only for readings that passed validation."""
        if self.texts is not None:
            fast = _measurements_from_prefix(self.texts[index], self.readings[index])
            if fast is not None:
                return fast
            return _render_exact(_exact_loads(self.texts[index]))
        if self._exact is None:
            self._exact = _exact_loads(self._raw)["readings"]
        return _render_exact(self._exact[index])

"""Reading an upload body without losing any number's text (reference Client System).

The server stores each reading's measurements as the JSON text the client sent (``12.5000``
stays ``12.5000``: a float64 or a re-serialization would not keep it) and validates the values
orjson parsed. Most bodies are the client's compact form, ``{"readings":[{...},{...}]}`` with
flat objects whose identity members come first: for those the body is cut into per-reading
texts with ``bytes.find`` and each text parsed on its own (no whole-body parse). Anything else
takes the general path: orjson parses the whole body, and the exact text of a reading comes
from re-slicing (checked against the parsed value) or, failing that, from Python's ``json``
with number hooks, which hands back every number as written.
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
    rb'"meter_element_id":(?:-?\d+|null)(?:,"tenant_id":-?\d+)?([,}])'
)
IDENTITY_FIELDS = frozenset(
    {"meter_reading_id", "created_at", "meter_id", "meter_element_id", "tenant_id"}
)
_IDENTITY_KEYS = tuple(f'"{name}"'.encode() for name in sorted(IDENTITY_FIELDS))


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


def _measurements_from_prefix(text: bytes) -> bytes | None:
    """The measurements' text of a reading in canonical member order, else None."""
    match = _PREFIX_RE.match(text)
    if match is None:
        return None
    if match.group(1) == b"}":
        return b"{}"
    rest = text[match.end() :]
    if b"\\" in rest:  # an escaped key could spell an identity name: slow path
        return None
    for key in _IDENTITY_KEYS:
        if key in rest:  # a repeated identity member (or a key merely containing one): slow path
            return None
    return b"{" + rest


def _render_exact(reading: dict[str, Any]) -> bytes:
    """Measurements of a reading parsed with number hooks, as compact JSON text."""
    parts = []
    for name, value in reading.items():
        if name in IDENTITY_FIELDS:
            continue
        if value is not None and type(value) is not _Number:
            raise ValueError(f"field {name!r} is not a number or null")  # validated earlier
        parts.append(
            json.dumps(name, ensure_ascii=False) + ":" + ("null" if value is None else value)
        )
    return ("{" + ",".join(parts) + "}").encode("utf-8")


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
        raw = self._raw.rstrip()
        if raw.startswith(_HEAD) and raw.endswith(b"]}"):
            split = _split_objects(raw, len(_HEAD), len(raw) - 2)
            if split is not None:
                try:
                    # The body is exactly these objects in the envelope: parsing each one
                    # parses (and validates) the whole body.
                    readings = [orjson.loads(t) for t in split[0]]
                except orjson.JSONDecodeError:
                    pass  # a cut inside a string, or bad JSON: the general path says which
                else:
                    self.texts = split[0]
                    return readings
        try:
            doc = orjson.loads(self._raw)
        except orjson.JSONDecodeError as exc:
            raise BodyError(f"body is not valid JSON: {exc}") from None
        readings = doc.get("readings") if isinstance(doc, dict) else None
        if not isinstance(readings, list):
            raise BodyError('body must be {"readings": [reading objects]}')
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
            fast = _measurements_from_prefix(self.texts[index])
            if fast is not None:
                return fast
            return _render_exact(_exact_loads(self.texts[index]))
        if self._exact is None:
            self._exact = _exact_loads(self._raw)["readings"]
        return _render_exact(self._exact[index])

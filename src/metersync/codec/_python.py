"""Pure-Python twin of the Cython core ``metersync.codec._batch``: same functions, same bytes.

This is also the reference the tests hold the C core to, so it favours clarity: each column is
turned into a list of plain Python values (``None`` for null) and each value is encoded by a small
function per type. Raw Arrow memory is read only where pyarrow has no exact conversion
(decimal128 unscaled integers, timestamps/dates as integers, strings as bytes).
"""

from __future__ import annotations

import functools
import json
import math
import struct
import uuid
from collections.abc import Callable
from datetime import date, datetime, timedelta

import pyarrow as pa

from metersync.codec import _numeric
from metersync.codec import _types as t
from metersync.codec._types import ColumnSpec
from metersync.errors import CodecTypeError, CodecValueError

__all__ = [
    "copy_binary",
    "from_copy_binary",
    "json_row_sizes",
    "json_rows",
    "sorted_uuid_bytes",
    "split_by_body_size",
    "uuid_array_binary",
]

COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
COPY_HEADER = COPY_SIGNATURE + struct.pack(">ii", 0, 0)
COPY_TRAILER = struct.pack(">h", -1)

#: 2000-01-01 (PostgreSQL's epoch) relative to 1970-01-01 (Arrow's), in days and microseconds.
PG_EPOCH_DAYS = 10957
PG_EPOCH_US = PG_EPOCH_DAYS * 86_400_000_000
#: PostgreSQL's accepted ranges, relative to its epoch (datatype/timestamp.h).
PG_MIN_DATE, PG_END_DATE = -2451545, 2145031949
PG_MIN_TIMESTAMP, PG_END_TIMESTAMP = -211813488000000000, 9223371331200000000

NUMERIC_POS, NUMERIC_NEG = 0x0000, 0x4000
UUID_OID = 2950

_UNIX_EPOCH = datetime(1970, 1, 1)
_UNIX_DATE = date(1970, 1, 1)


# ---------------------------------------------------------------------------------------------
# Reading Arrow columns as plain Python values


def _decimal_unscaled(arr: pa.Array) -> list[int | None]:
    """The two's complement 128-bit integers behind a decimal128 array (honouring its offset)."""
    if len(arr) == 0:
        return []
    valid = arr.is_valid().to_pylist()
    raw = memoryview(arr.buffers()[1])
    base = arr.offset * 16
    return [
        int.from_bytes(raw[base + 16 * i : base + 16 * i + 16], "little", signed=True)
        if ok
        else None
        for i, ok in enumerate(valid)
    ]


def column_values(spec: ColumnSpec, arr: pa.Array) -> list:
    """Plain Python values of one column (bytes for uuid/text; ints for dates, times, decimals)."""
    k = spec.kind
    if k == t.KIND_UUID:
        return (arr.storage if isinstance(arr, pa.ExtensionArray) else arr).to_pylist()
    if k in (t.KIND_STRING, t.KIND_LARGE_STRING):
        return arr.cast(pa.binary() if k == t.KIND_STRING else pa.large_binary()).to_pylist()
    if k == t.KIND_NUMERIC:
        return arr.storage.cast(pa.binary()).to_pylist()
    if k == t.KIND_DATE:
        return arr.view(pa.int32()).to_pylist()
    if k == t.KIND_TIMESTAMP:
        return arr.view(pa.int64()).to_pylist()
    if k == t.KIND_DECIMAL:
        return _decimal_unscaled(arr)
    return arr.to_pylist()


def _columns(batch: pa.RecordBatch) -> tuple[tuple[ColumnSpec, ...], list[list]]:
    plan = t.column_plan(batch.schema)
    return plan, [column_values(spec, batch.column(i)) for i, spec in enumerate(plan)]


def _check_precision(spec: ColumnSpec, row: int, v: int) -> None:
    if abs(v) >= 10**spec.precision:
        raise t.value_error(spec, row, t.ERR_PRECISION)


def _numeric_text(spec: ColumnSpec, row: int, raw: bytes) -> _numeric.NumericText:
    """The parsed plain-numeric text of one value; ``CodecValueError`` naming column and row."""
    value = _numeric.parse(raw)
    if isinstance(value, int):
        raise t.value_error(spec, row, value, raw)
    return value


def _text(spec: ColumnSpec, row: int, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise t.value_error(spec, row, t.ERR_UTF8) from None


# ---------------------------------------------------------------------------------------------
# Binary COPY


def numeric_binary(v: int, scale: int) -> bytes:
    """PostgreSQL binary ``numeric`` for the decimal ``v * 10**-scale`` (scale >= 0).

    Base-10000 digits whose decimal point falls on a group boundary: multiply by 10**pad so the
    scale becomes a multiple of 4, split into groups, drop trailing zero groups (they only
    repeat what ``weight`` and ``dscale`` say).
    """
    if v == 0:
        return struct.pack(">hhHh", 0, 0, NUMERIC_POS, scale)
    sign = NUMERIC_NEG if v < 0 else NUMERIC_POS
    pad = (-scale) % 4
    a = abs(v) * 10**pad
    groups: list[int] = []
    while a:
        a, digit = divmod(a, 10000)
        groups.append(digit)
    groups.reverse()
    weight = len(groups) - 1 - (scale + pad) // 4
    while groups[-1] == 0:
        groups.pop()
    return struct.pack(f">hhHh{len(groups)}H", len(groups), weight, sign, scale, *groups)


def _field_encoder(spec: ColumnSpec) -> Callable[[int, object], bytes]:
    """Function (row, value) -> field payload (without its length) for one column."""
    k = spec.kind
    if k == t.KIND_UUID:
        return lambda row, v: v
    if k in (t.KIND_INT16, t.KIND_INT32, t.KIND_INT64, t.KIND_FLOAT32, t.KIND_FLOAT64):
        fmt = {
            t.KIND_INT16: ">h",
            t.KIND_INT32: ">i",
            t.KIND_INT64: ">q",
            t.KIND_FLOAT32: ">f",
            t.KIND_FLOAT64: ">d",
        }[k]
        return lambda row, v: struct.pack(fmt, v)
    if k == t.KIND_BOOL:
        return lambda row, v: b"\x01" if v else b"\x00"
    if k in (t.KIND_STRING, t.KIND_LARGE_STRING):

        def text(row: int, v: bytes) -> bytes:
            _text(spec, row, v)
            if b"\x00" in v:
                raise t.value_error(spec, row, t.ERR_NUL)
            return v

        return text
    if k == t.KIND_DATE:

        def date_(row: int, days: int) -> bytes:
            pg = days - PG_EPOCH_DAYS
            if not PG_MIN_DATE <= pg < PG_END_DATE:
                raise t.value_error(spec, row, t.ERR_RANGE)
            return struct.pack(">i", pg)

        return date_
    if k == t.KIND_TIMESTAMP:

        def timestamp(row: int, us: int) -> bytes:
            pg = us - PG_EPOCH_US
            if not PG_MIN_TIMESTAMP <= pg < PG_END_TIMESTAMP:
                raise t.value_error(spec, row, t.ERR_RANGE)
            return struct.pack(">q", pg)

        return timestamp
    if k == t.KIND_DECIMAL:

        def numeric(row: int, v: int) -> bytes:
            _check_precision(spec, row, v)
            return numeric_binary(v, spec.scale)

        return numeric
    if k == t.KIND_NUMERIC:
        return lambda row, v: _numeric_text(spec, row, v).binary()
    raise AssertionError(f"unhandled kind {k}")  # column_plan only returns known kinds


def copy_binary(batch: pa.RecordBatch) -> bytes:
    """Complete PostgreSQL binary COPY stream (header, one tuple per row, trailer)."""
    batch = t.as_batch(batch)
    plan, columns = _columns(batch)
    fields: list[list[bytes]] = []
    for spec, values in zip(plan, columns, strict=True):
        encode = _field_encoder(spec)
        encoded = []
        for row, v in enumerate(values):
            if v is None:
                encoded.append(b"\xff\xff\xff\xff")
            else:
                payload = encode(row, v)
                encoded.append(struct.pack(">i", len(payload)) + payload)
        fields.append(encoded)
    out = bytearray(COPY_HEADER)
    count = struct.pack(">h", len(plan))
    for row in range(batch.num_rows):
        out += count
        for col in fields:
            out += col[row]
    out += COPY_TRAILER
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# Canonical JSON


def decimal_text(v: int, scale: int) -> str:
    """``v * 10**-scale`` with exactly ``scale`` digits after the point (none if scale is 0)."""
    digits = str(abs(v)).rjust(scale + 1, "0")
    sign = "-" if v < 0 else ""
    if scale == 0:
        return sign + digits
    return f"{sign}{digits[:-scale]}.{digits[-scale:]}"


def _json_encoder(spec: ColumnSpec) -> Callable[[int, object], str]:
    """Function (row, non-null value) -> JSON text for one column."""
    k = spec.kind
    if k == t.KIND_UUID:
        return lambda row, v: f'"{uuid.UUID(bytes=v)}"'
    if k in (t.KIND_INT16, t.KIND_INT32, t.KIND_INT64):
        return lambda row, v: str(v)
    if k == t.KIND_BOOL:
        return lambda row, v: "true" if v else "false"
    if k in (t.KIND_FLOAT32, t.KIND_FLOAT64):

        def float_(row: int, v: float) -> str:
            if not math.isfinite(v):
                raise t.value_error(spec, row, t.ERR_FLOAT, v)
            return repr(v)

        return float_
    if k in (t.KIND_STRING, t.KIND_LARGE_STRING):
        return lambda row, v: json.dumps(_text(spec, row, v), ensure_ascii=False)
    if k == t.KIND_DATE:

        def date_(row: int, days: int) -> str:
            try:
                d = _UNIX_DATE + timedelta(days=days)
            except OverflowError:
                raise t.value_error(spec, row, t.ERR_YEAR) from None
            return f'"{d.year:04d}-{d.month:02d}-{d.day:02d}"'

        return date_
    if k == t.KIND_TIMESTAMP:
        zone = "Z" if spec.tz else ""

        def timestamp(row: int, us: int) -> str:
            try:
                d = _UNIX_EPOCH + timedelta(microseconds=us)
            except OverflowError:
                raise t.value_error(spec, row, t.ERR_YEAR) from None
            return (
                f'"{d.year:04d}-{d.month:02d}-{d.day:02d}T{d.hour:02d}:{d.minute:02d}:'
                f'{d.second:02d}.{d.microsecond:06d}{zone}"'
            )

        return timestamp
    if k == t.KIND_DECIMAL:
        return lambda row, v: decimal_text(v, spec.scale)
    if k == t.KIND_NUMERIC:
        return lambda row, v: _numeric_json(spec, row, v, quote=False)
    raise AssertionError(f"unhandled kind {k}")


def _decimal_string_encoder(spec: ColumnSpec) -> Callable[[int, int], str]:
    """The metertrack form of a decimal: a JSON string with exactly the column's scale digits."""
    return lambda row, v: f'"{decimal_text(v, spec.scale)}"'


def _numeric_json(spec: ColumnSpec, row: int, v: bytes, *, quote: bool) -> str:
    """A plain numeric's canonical text: a JSON number, or a JSON string when ``quote`` (the
    metertrack profile) or for NaN and the infinities, which have no JSON number form."""
    value = _numeric_text(spec, row, v)
    text = value.canonical()
    return f'"{text}"' if quote or value.special else text


def _row_texts(batch: pa.RecordBatch, profile: str) -> list[str]:
    """Each row of ``batch`` as its JSON object text in ``profile`` (``_types.JSON_PROFILES``)."""
    omit_nulls, quote_decimals = t.json_profile(profile)
    batch = t.as_batch(batch)
    plan, columns = _columns(batch)
    null = None if omit_nulls else "null"
    texts: list[list[str | None]] = []
    for spec, values in zip(plan, columns, strict=True):
        encode = _json_encoder(spec)
        if quote_decimals and spec.kind == t.KIND_DECIMAL:
            encode = _decimal_string_encoder(spec)
        elif quote_decimals and spec.kind == t.KIND_NUMERIC:
            encode = functools.partial(_numeric_json, spec, quote=True)
        texts.append([null if v is None else encode(row, v) for row, v in enumerate(values)])
    keys = [spec.json_key.decode("utf-8") for spec in plan]
    return [
        "{"
        + ",".join(
            key + col[row] for key, col in zip(keys, texts, strict=True) if col[row] is not None
        )
        + "}"
        for row in range(batch.num_rows)
    ]


def json_rows(batch: pa.RecordBatch, *, profile: str = "metersync") -> bytes:
    """JSON array of one object per row, keys in schema order, canonical value forms, no spaces;
    ``profile`` "metertrack" omits null fields and writes decimals as strings."""
    return ("[" + ",".join(_row_texts(batch, profile)) + "]").encode("utf-8")


def json_row_sizes(batch: pa.RecordBatch, *, profile: str = "metersync") -> pa.Int64Array:
    """Each row's length in bytes as ``json_rows(batch, profile=profile)`` encodes it (without the
    separating comma), as a pyarrow int64 array."""
    return pa.array([len(row.encode("utf-8")) for row in _row_texts(batch, profile)], pa.int64())


#: len(b'{"readings":') + len(b'[') + len(b']') + len(b'}'): the upload body around the rows.
BODY_ENVELOPE = 15


def split_by_body_size(
    batch: pa.RecordBatch, max_body_bytes: int, *, profile: str = "metersync"
) -> list[pa.RecordBatch]:
    """Zero-copy slices of ``batch``, in order, each as many rows as fit an upload body
    ``{"readings":<json_rows(slice)>}`` of at most ``max_body_bytes`` bytes."""
    t.json_profile(profile)
    cap = t.body_cap(max_body_bytes)
    batch = t.as_batch(batch)
    sizes = json_row_sizes(batch, profile=profile).to_pylist()
    bounds: list[tuple[int, int]] = []
    start, body = 0, BODY_ENVELOPE
    for r, size in enumerate(sizes):
        add = size + (1 if r > start else 0)
        if body + add <= cap:
            body += add
            continue
        if BODY_ENVELOPE + size > cap:
            raise t.row_too_large(r, size, BODY_ENVELOPE, cap)
        bounds.append((start, r))
        start, body = r, BODY_ENVELOPE + size
    if sizes:
        bounds.append((start, len(sizes)))
    return [batch.slice(a, b - a) for a, b in bounds]


# ---------------------------------------------------------------------------------------------
# Decoding binary COPY output


class _Reader:
    """Bounds-checked big-endian reads over the COPY bytes; every failure is a CodecValueError."""

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self.data = memoryview(data).cast("B")
        self.pos = 0

    def fail(self, what: str) -> CodecValueError:
        return CodecValueError(f"invalid binary COPY data at byte {self.pos}: {what}")

    def take(self, n: int) -> memoryview:
        if n > len(self.data) - self.pos:
            raise self.fail(f"truncated (need {n} more bytes, {len(self.data) - self.pos} left)")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def int16(self) -> int:
        return struct.unpack(">h", self.take(2))[0]

    def int32(self) -> int:
        return struct.unpack(">i", self.take(4))[0]


_FIXED_WIDTH = {
    t.KIND_UUID: 16,
    t.KIND_INT16: 2,
    t.KIND_INT32: 4,
    t.KIND_INT64: 8,
    t.KIND_FLOAT32: 4,
    t.KIND_FLOAT64: 8,
    t.KIND_BOOL: 1,
    t.KIND_DATE: 4,
    t.KIND_TIMESTAMP: 8,
}
#: Arrow little-endian storage of each fixed-width kind (bool is bit-packed separately).
_ARROW_FORMAT = {
    t.KIND_INT16: "<h",
    t.KIND_INT32: "<i",
    t.KIND_INT64: "<q",
    t.KIND_FLOAT32: "<f",
    t.KIND_FLOAT64: "<d",
    t.KIND_DATE: "<i",
    t.KIND_TIMESTAMP: "<q",
}
_PG_FORMAT = {
    t.KIND_INT16: ">h",
    t.KIND_INT32: ">i",
    t.KIND_INT64: ">q",
    t.KIND_FLOAT32: ">f",
    t.KIND_FLOAT64: ">d",
    t.KIND_DATE: ">i",
    t.KIND_TIMESTAMP: ">q",
}


def numeric_unscaled(field: memoryview, spec: ColumnSpec, reader: _Reader) -> int:
    """Unscaled integer at the column's scale from a binary numeric.

    Raises ``CodecValueError`` if it won't fit.
    """
    ndigits = struct.unpack(">h", field[:2])[0] if len(field) >= 8 else -1
    if ndigits < 0 or len(field) != 8 + 2 * ndigits:
        raise reader.fail(f"column {spec.name!r}: malformed numeric field of {len(field)} bytes")
    ndigits, weight, sign, _dscale = struct.unpack(">hhHh", field[:8])
    if sign not in (NUMERIC_POS, NUMERIC_NEG):
        special = {0xC000: "NaN", 0xD000: "Infinity", 0xF000: "-Infinity"}.get(sign, hex(sign))
        raise reader.fail(f"column {spec.name!r}: numeric {special} has no decimal128 form")
    digits = struct.unpack(f">{ndigits}H", field[8:])
    if any(d >= 10000 for d in digits):
        raise reader.fail(f"column {spec.name!r}: numeric digit out of range")
    while digits and digits[-1] == 0:
        digits = digits[:-1]
    value = 0
    for d in digits:
        value = value * 10000 + d
    # value * 10000**(weight - len(digits) + 1) is the number; scale it by 10**scale.
    exp10 = 4 * (weight - len(digits) + 1) + spec.scale
    if value and exp10 >= 0:
        if exp10 > 40:
            raise reader.fail(f"column {spec.name!r}: numeric does not fit {spec.pg_type}")
        value *= 10**exp10
    elif value:
        if -exp10 > 4 * len(digits):  # value < 10**(4 * len(digits)): all of it is fraction
            raise reader.fail(
                f"column {spec.name!r}: numeric has more fractional digits than {spec.pg_type}"
            )
        value, rest = divmod(value, 10**-exp10)
        if rest:
            raise reader.fail(
                f"column {spec.name!r}: numeric has more fractional digits than {spec.pg_type}"
            )
    if value >= 10**spec.precision:
        raise reader.fail(f"column {spec.name!r}: numeric does not fit {spec.pg_type}")
    return -value if sign == NUMERIC_NEG else value


def numeric_text(field: memoryview, spec: ColumnSpec, reader: _Reader) -> bytes:
    """PostgreSQL's text of a binary numeric for a plain ``numeric`` column (checked like
    PostgreSQL's ``numeric_recv``)."""
    ndigits = struct.unpack(">H", field[:2])[0] if len(field) >= 8 else -1
    if ndigits < 0 or len(field) != 8 + 2 * ndigits:
        raise reader.fail(f"column {spec.name!r}: malformed numeric field of {len(field)} bytes")
    _, _, sign, dscale = struct.unpack(">HhHH", field[:8])
    if sign not in (NUMERIC_POS, NUMERIC_NEG, 0xC000, 0xD000, 0xF000):
        raise reader.fail(f"column {spec.name!r}: unknown numeric sign")
    if sign in (NUMERIC_POS, NUMERIC_NEG):
        if any(d >= 10000 for d in struct.unpack(f">{ndigits}H", field[8:])):
            raise reader.fail(f"column {spec.name!r}: numeric digit out of range")
        if dscale > _numeric.DSCALE_MAX:
            raise reader.fail(f"column {spec.name!r}: numeric display scale out of range")
    return _numeric.binary_text(field).encode("ascii")


def _pack_bits(bits: list[bool]) -> bytes:
    out = bytearray((len(bits) + 7) // 8)
    for i, bit in enumerate(bits):
        if bit:
            out[i >> 3] |= 1 << (i & 7)
    return bytes(out)


class _ColumnBuilder:
    """Accumulates one column's Arrow buffers (validity, data, offsets for text)."""

    def __init__(self, spec: ColumnSpec) -> None:
        self.spec = spec
        self.valid: list[bool] = []
        self.data = bytearray()
        self.bools: list[bool] = []
        self.offsets: list[int] = [0]

    def null(self) -> None:
        self.valid.append(False)
        k = self.spec.kind
        if k in (t.KIND_STRING, t.KIND_LARGE_STRING, t.KIND_NUMERIC):
            self.offsets.append(len(self.data))
        elif k == t.KIND_BOOL:
            self.bools.append(False)
        elif k == t.KIND_DECIMAL:
            self.data += bytes(16)
        else:
            self.data += bytes(_FIXED_WIDTH[k])

    def value(self, field: memoryview, reader: _Reader) -> None:
        spec, k = self.spec, self.spec.kind
        width = _FIXED_WIDTH.get(k)
        if width is not None and len(field) != width:
            raise reader.fail(
                f"column {spec.name!r} ({spec.pg_type}): field of {len(field)} bytes, "
                f"expected {width}"
            )
        self.valid.append(True)
        if k == t.KIND_UUID:
            self.data += field
        elif k == t.KIND_BOOL:
            self.bools.append(field[0] != 0)
        elif k in (t.KIND_STRING, t.KIND_LARGE_STRING):
            try:
                bytes(field).decode("utf-8")
            except UnicodeDecodeError:
                raise reader.fail(f"column {spec.name!r}: text is not valid UTF-8") from None
            self.data += field
            self.offsets.append(len(self.data))
        elif k == t.KIND_DECIMAL:
            self.data += numeric_unscaled(field, spec, reader).to_bytes(16, "little", signed=True)
        elif k == t.KIND_NUMERIC:
            self.data += numeric_text(field, spec, reader)
            self.offsets.append(len(self.data))
        else:
            (v,) = struct.unpack(_PG_FORMAT[k], field)
            if k == t.KIND_DATE:
                if v in (-(2**31), 2**31 - 1) or v > 2**31 - 1 - PG_EPOCH_DAYS:
                    raise reader.fail(f"column {spec.name!r}: date {v} has no date32 form")
                v += PG_EPOCH_DAYS
            elif k == t.KIND_TIMESTAMP:
                if v in (-(2**63), 2**63 - 1) or v > 2**63 - 1 - PG_EPOCH_US:
                    raise reader.fail(f"column {spec.name!r}: timestamp {v} has no Arrow form")
                v += PG_EPOCH_US
            self.data += struct.pack(_ARROW_FORMAT[k], v)

    def finish(self) -> pa.Array:
        spec, k, n = self.spec, self.spec.kind, len(self.valid)
        validity = None if all(self.valid) else pa.py_buffer(_pack_bits(self.valid))
        if k in (t.KIND_STRING, t.KIND_LARGE_STRING, t.KIND_NUMERIC):
            fmt = "<q" if k == t.KIND_LARGE_STRING else "<i"
            offsets = b"".join(struct.pack(fmt, o) for o in self.offsets)
            if k != t.KIND_LARGE_STRING and self.offsets[-1] > 2**31 - 1:
                raise CodecValueError(f"column {spec.name!r}: more text than a string array holds")
            buffers = [validity, pa.py_buffer(offsets), pa.py_buffer(bytes(self.data))]
        elif k == t.KIND_BOOL:
            buffers = [validity, pa.py_buffer(_pack_bits(self.bools))]
        else:
            buffers = [validity, pa.py_buffer(bytes(self.data))]
        arrow_type = spec.arrow_type
        if isinstance(arrow_type, pa.BaseExtensionType):
            storage = pa.Array.from_buffers(arrow_type.storage_type, n, buffers)
            return pa.ExtensionArray.from_storage(arrow_type, storage)
        return pa.Array.from_buffers(arrow_type, n, buffers)


def from_copy_binary(data: bytes | bytearray | memoryview, schema: pa.Schema) -> pa.RecordBatch:
    """Decode binary COPY output into a record batch of ``schema`` (fields in COPY order)."""
    plan = t.column_plan(schema)
    reader = _Reader(data)
    if bytes(reader.take(len(COPY_SIGNATURE))) != COPY_SIGNATURE:
        reader.pos = 0
        raise reader.fail("missing PGCOPY signature")
    flags = reader.int32()
    if flags & (1 << 16):
        raise reader.fail("OIDs included (flag bit 16): not supported")
    if flags & ~0xFFFF & 0xFFFFFFFF:
        raise reader.fail(f"unknown critical header flags {flags:#x}")
    extension = reader.int32()
    if extension < 0:
        raise reader.fail(f"negative header extension length {extension}")
    reader.take(extension)
    builders = [_ColumnBuilder(spec) for spec in plan]
    while True:
        count = reader.int16()
        if count == -1:
            break
        if count != len(plan):
            raise reader.fail(f"tuple has {count} fields, schema has {len(plan)}")
        for builder in builders:
            length = reader.int32()
            if length == -1:
                builder.null()
            elif length < 0:
                raise reader.fail(f"negative field length {length}")
            else:
                builder.value(reader.take(length), reader)
    if reader.pos != len(reader.data):
        raise reader.fail(f"{len(reader.data) - reader.pos} bytes after the trailer")
    return pa.RecordBatch.from_arrays([b.finish() for b in builders], schema=schema)


# ---------------------------------------------------------------------------------------------
# uuid[] for "= ANY($n)"


def uuid_ids(ids: pa.Array | pa.ChunkedArray) -> list[bytes]:
    """The 16-byte values of a uuid array.

    ``CodecTypeError`` for other types, ``CodecValueError`` on null.
    """
    chunks = ids.chunks if isinstance(ids, pa.ChunkedArray) else [ids]
    if not t.is_uuid(ids.type):
        raise CodecTypeError(f"expected a fixed_size_binary(16) or uuid array, got {ids.type}")
    values: list[bytes] = []
    for chunk in chunks:
        storage = chunk.storage if isinstance(chunk, pa.ExtensionArray) else chunk
        values += storage.to_pylist()
    for i, v in enumerate(values):
        if v is None:
            raise CodecValueError(f"uuid array element {i} is null: ids must not be null")
    return values


def sorted_uuid_bytes(ids: pa.Array | pa.ChunkedArray) -> bytes:
    """The 16-byte values of the uuid array ``ids`` in ascending byte order, concatenated."""
    return b"".join(sorted(uuid_ids(ids)))


def uuid_array_binary(ids: pa.Array | pa.ChunkedArray) -> bytes:
    """PostgreSQL binary ``uuid[]``: ndim, has-null flag, element oid, dimension, lower bound 1."""
    values = uuid_ids(ids)
    if not values:
        return struct.pack(">iii", 0, 0, UUID_OID)
    head = struct.pack(">iiiii", 1, 0, UUID_OID, len(values), 1)
    return head + b"".join(b"\x00\x00\x00\x10" + v for v in values)

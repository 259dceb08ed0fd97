"""Public codec API: Arrow record batches to PostgreSQL binary COPY and canonical JSON, and back.

The daemon imports these names; keep them stable. The work is done by the implementation chosen
in :mod:`metersync.codec._impl` (the Cython core ``metersync.codec._batch`` or the pure-Python twin
``metersync.codec._python``); both produce identical bytes.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import Literal

import pyarrow as pa

from metersync.codec._impl import IMPL, impl_module, page_module
from metersync.errors import CodecValueError

#: The JSON profiles of :func:`json_rows` (see its docstring).
JsonProfile = Literal["metersync", "metertrack"]

__all__ = [
    "IMPL",
    "JsonProfile",
    "copy_binary",
    "from_copy_binary",
    "json_row_sizes",
    "json_rows",
    "parse_page",
    "slices",
    "sorted_uuid_bytes",
    "split_by_body_size",
    "uuid_array_binary",
]


def copy_binary(batch: pa.RecordBatch) -> bytes:
    """Encode ``batch`` as a complete PostgreSQL binary COPY stream.

    The stream holds the 19-byte signature header, one tuple per row (field count, then each
    field length-prefixed, big-endian) and the ``\\xff\\xff`` trailer, ready for
    ``COPY table (columns...) FROM STDIN (FORMAT BINARY)`` with the batch's columns in order.

    Raises :class:`~metersync.errors.CodecTypeError` (a ``TypeError``) naming the column for an
    Arrow type without a PostgreSQL mapping, and :class:`~metersync.errors.CodecValueError` (a
    ``ValueError``) naming column and row for a value PostgreSQL would refuse.
    """
    return impl_module.copy_binary(batch)


def json_rows(batch: pa.RecordBatch, *, profile: JsonProfile = "metersync") -> bytes:
    """Encode ``batch`` as a JSON array of one object per row, keys in schema order.

    Canonical form (``profile="metersync"``): UUID lowercase 36 chars; timestamptz
    ``YYYY-MM-DDTHH:MM:SS.ffffffZ``; timestamp the same without ``Z``; date ``YYYY-MM-DD``;
    decimal a JSON number with exactly the column's scale digits; plain numeric (the
    ``metersync.numeric`` type, decimal text) a JSON number with exactly PostgreSQL's digits and
    display scale (``1.500``, never an exponent), NaN and infinities as the JSON strings
    ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` (no JSON number holds them); float the shortest
    round-trip text (Python ``repr``), NaN and infinities rejected; null ``null``.

    ``profile="metertrack"`` (the original MeterTrack Client System): a null field is omitted
    (its key is absent, a row of nulls is ``{}``) and a decimal is a JSON string with exactly the
    column's scale digits (``"12.5000"``), so it reaches a ``numeric`` column without passing
    through float64 (a plain numeric likewise, as its text); everything else as above. An
    unknown profile raises ``CodecValueError``.
    """
    return impl_module.json_rows(batch, profile=profile)


def json_row_sizes(batch: pa.RecordBatch, *, profile: JsonProfile = "metersync") -> pa.Int64Array:
    """Each row's length in bytes as :func:`json_rows` encodes it, as an Arrow ``int64`` array.

    The length is that of the row's ``{...}`` object, without the comma that separates it from
    the next row, so ``len(json_rows(b)) == 2 + sum(sizes) + max(0, len(b) - 1)``. The C core
    adds up each value's length without writing any text (about a third of the time of
    encoding the rows); the same validation runs, so it raises what :func:`json_rows` would.
    """
    return impl_module.json_row_sizes(batch, profile=profile)


def split_by_body_size(
    batch: pa.RecordBatch, max_body_bytes: int, *, profile: JsonProfile = "metersync"
) -> list[pa.RecordBatch]:
    """Split ``batch`` into zero-copy slices, in order, for a Client System's body limit.

    Every slice is as long as possible such that the upload body
    ``b'{"readings":' + json_rows(slice, profile=profile) + b'}'`` is at most ``max_body_bytes``
    bytes; together the slices cover every row once, in order (an empty batch gives ``[]``).
    Sizes come from :func:`json_row_sizes`, so nothing is tried against the server. A row that
    alone makes a body over the limit raises ``CodecValueError`` naming its index and size;
    ``max_body_bytes`` must be a positive integer.
    """
    return impl_module.split_by_body_size(batch, max_body_bytes, profile=profile)


def from_copy_binary(data: bytes | bytearray | memoryview, schema: pa.Schema) -> pa.RecordBatch:
    """Decode PostgreSQL binary COPY output (header, tuples, trailer) into a record batch.

    ``schema`` gives the Arrow type of each field in COPY column order. Truncated or corrupt
    input raises ``CodecValueError`` naming the byte; it never crashes the process.
    """
    return impl_module.from_copy_binary(data, schema)


def sorted_uuid_bytes(ids: pa.Array | pa.ChunkedArray) -> bytes:
    """The 16-byte values of a ``fixed_size_binary(16)`` (or ``uuid``) array in ascending byte
    order, concatenated: what the upload's Idempotency-Key digests, the same whatever order
    the ids come in. No Python object per id in the compiled core. Nulls are rejected with
    ``CodecValueError``, other types with ``CodecTypeError``.
    """
    return impl_module.sorted_uuid_bytes(ids)


def uuid_array_binary(ids: pa.Array | pa.ChunkedArray) -> bytes:
    """Encode a ``fixed_size_binary(16)`` (or ``uuid``) array as a PostgreSQL binary ``uuid[]``.

    Used to pass a batch's ids to ``... WHERE meter_reading_id = ANY($2)`` without building
    Python ``uuid.UUID`` objects. Nulls are rejected with ``CodecValueError``.
    """
    return impl_module.uuid_array_binary(ids)


def slices(batch: pa.RecordBatch, n: int) -> Iterator[pa.RecordBatch]:
    """Yield consecutive chunks of at most ``n`` rows of ``batch`` without copying data.

    An empty batch yields nothing. ``n`` must be a positive integer.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise CodecValueError(f"slice size must be a positive integer, got {n!r}")
    for start in range(0, batch.num_rows, n):
        yield batch.slice(start, n)


def parse_page(
    body: bytes,
    schema: pa.Schema | None,
    *,
    tenant_id: int | None,
    limit: int,
    unknown_fields: Collection[str] | str | None = None,
) -> tuple[pa.RecordBatch, str | None]:
    """Parse and validate one download page: ``(readings as a batch of schema, next_cursor)``.

    One pass over the JSON bytes (the compiled ``metersync.codec._page`` or its twin
    ``_page_py``, same rule as the rest of the codec): exact decimal128 from the digits, UUIDs,
    RFC 3339 timestamps, ranges, the tenant, duplicates and unknown fields checked as read.
    See :func:`metersync.remote.page.parse_page` for the arguments; raises
    :class:`~metersync.errors.MalformedPageError`.
    """
    return page_module.parse_page(
        body, schema, tenant_id=tenant_id, limit=limit, unknown_fields=unknown_fields
    )

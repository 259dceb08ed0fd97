"""Type stub of the compiled Cython core (same surface as metersync.codec._python)."""

from typing import Any, Literal

import pyarrow as pa

#: The kind and error enum values of _batch.pxd (a test holds them to metersync.codec._types).
CODES: dict[str, int]

def copy_binary(batch: pa.RecordBatch | pa.Table | Any) -> bytes:
    """Complete PostgreSQL binary COPY stream (header, one tuple per row, trailer)."""

def json_rows(
    batch: pa.RecordBatch | pa.Table | Any, *, profile: Literal["metersync", "metertrack"] = ...
) -> bytes:
    """JSON array of one object per row, keys in schema order, canonical value forms, no spaces;
    ``profile`` "metertrack" omits null fields and writes decimals as strings."""

def json_row_sizes(
    batch: pa.RecordBatch | pa.Table | Any, *, profile: Literal["metersync", "metertrack"] = ...
) -> pa.Int64Array:
    """Each row's length in bytes as ``json_rows(batch, profile=profile)`` encodes it (without
    the separating comma), as a pyarrow int64 array."""

def split_by_body_size(
    batch: pa.RecordBatch | pa.Table | Any,
    max_body_bytes: int,
    *,
    profile: Literal["metersync", "metertrack"] = ...,
) -> list[pa.RecordBatch]:
    """Zero-copy slices of ``batch``, in order, each as many rows as fit an upload body
    ``{"readings":<json_rows(slice)>}`` of at most ``max_body_bytes`` bytes."""

def from_copy_binary(data: bytes | bytearray | memoryview, schema: pa.Schema) -> pa.RecordBatch:
    """Decode binary COPY output into a record batch of ``schema`` (fields in COPY order)."""

def uuid_array_binary(ids: pa.Array | pa.ChunkedArray) -> bytes:
    """PostgreSQL binary ``uuid[]`` value of a fixed_size_binary(16) / uuid array."""

def sorted_uuid_bytes(ids: pa.Array | pa.ChunkedArray) -> bytes:
    """The 16-byte values of a uuid array in ascending byte order, concatenated."""

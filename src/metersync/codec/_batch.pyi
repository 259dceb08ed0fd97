"""Type stub of the compiled Cython core (same surface as metersync.codec._python)."""

from typing import Any

import pyarrow as pa

#: The kind and error enum values of _batch.pxd (a test holds them to metersync.codec._types).
CODES: dict[str, int]

def copy_binary(batch: pa.RecordBatch | pa.Table | Any) -> bytes:
    """Complete PostgreSQL binary COPY stream (header, one tuple per row, trailer)."""

def json_rows(batch: pa.RecordBatch | pa.Table | Any) -> bytes:
    """JSON array of one object per row, keys in schema order, canonical value forms."""

def from_copy_binary(data: bytes | bytearray | memoryview, schema: pa.Schema) -> pa.RecordBatch:
    """Decode binary COPY output into a record batch of ``schema`` (fields in COPY order)."""

def uuid_array_binary(ids: pa.Array | pa.ChunkedArray) -> bytes:
    """PostgreSQL binary ``uuid[]`` value of a fixed_size_binary(16) / uuid array."""

"""Arrow casting for the sync database: id lists, and record batches shaped for
``COPY meter_reading`` from the reflected column types (the type plan of :mod:`._types` says
which Arrow type each PostgreSQL column travels as; this module gets a batch there).

No SQL here: the adapter (:mod:`metersync.store.database`) passes the reflected
``(name, Arrow type)`` list of the table and writes the result with binary COPY.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from metersync.codec._types import as_batch, is_uuid

__all__ = ["SET_BY_METERSYNC", "cast_column", "id_array", "insert_batch"]

#: Bookkeeping columns a batch may not carry: metersync sets them.
SET_BY_METERSYNC = frozenset(
    {"retry_count", "last_error", "is_synchronized", "sync_status", "in_doubt_since"}
)


def _id_bytes(value: object) -> bytes:
    if isinstance(value, bytes | bytearray) and len(value) == 16:
        return bytes(value)
    if isinstance(value, uuid.UUID):
        return value.bytes
    if isinstance(value, str):
        try:
            return uuid.UUID(value).bytes
        except ValueError:
            pass
    raise ValueError(f"not a meter_reading_id (UUID): {str(value)[:60]!r}")


def id_array(ids: pa.Array | pa.ChunkedArray | Sequence[Any]) -> pa.Array:
    """Ids as a ``fixed_size_binary(16)`` array: binary/uuid Arrow arrays pass through; UUID
    text (list or string array), ``uuid.UUID`` or 16-byte values are converted
    (``ValueError`` naming a bad one)."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    if isinstance(ids, pa.Array):
        if isinstance(ids.type, pa.BaseExtensionType) and is_uuid(ids.type):
            ids = ids.storage
        if pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type):
            ids = ids.to_pylist()
        elif not is_uuid(ids.type):
            raise ValueError(f"ids must be fixed_size_binary(16) or uuid, got {ids.type}")
        else:
            return ids
    return pa.array([_id_bytes(v) for v in ids], type=pa.binary(16))


def insert_batch(
    batch: pa.RecordBatch,
    columns: Sequence[tuple[str, pa.DataType]],
    tenant_id: int | None,
    synchronized: bool,
) -> pa.RecordBatch:
    """Shape a batch for ``COPY meter_reading``: ``tenant_id`` first (added, or checked against
    ``tenant_id``), the batch's columns among ``columns`` (the table's upload columns and their
    Arrow types) in table order, cast to those types, then the synchronized constants when
    ``synchronized``. ``ValueError`` names any problem."""
    batch = as_batch(batch)
    names = batch.schema.names
    n = batch.num_rows
    types = dict(columns)
    for name in names:
        if name in SET_BY_METERSYNC:
            raise ValueError(f"column {name!r} is set by metersync, not by the batch")
        if name != "tenant_id" and name not in types:
            raise ValueError(f"column {name!r} is not a column of meter_reading")
    if len(set(names)) != len(names):
        raise ValueError("the batch has duplicate column names")
    if "meter_reading_id" not in names:
        raise ValueError("the batch has no meter_reading_id column")
    if "tenant_id" in names:
        tenants = batch.column("tenant_id").cast(pa.int64())
        if tenants.null_count:
            raise ValueError("column 'tenant_id' holds nulls")
        if tenant_id is not None and n and not pc.all(pc.equal(tenants, tenant_id)).as_py():
            other = pc.filter(tenants, pc.not_equal(tenants, tenant_id))[0].as_py()
            raise ValueError(f"the batch for tenant {tenant_id} holds a reading of tenant {other}")
    elif tenant_id is not None:
        tenants = pa.repeat(pa.scalar(tenant_id, pa.int64()), n)
    else:
        raise ValueError("the batch has no tenant_id column (and no tenant was given)")
    arrays: list[pa.Array] = [tenants]
    out: list[str] = ["tenant_id"]
    for name, want in columns:
        if name not in names:
            continue
        arrays.append(cast_column(batch.column(name), want, name))
        out.append(name)
    if batch.column("meter_reading_id").null_count:
        raise ValueError("column 'meter_reading_id' holds nulls")
    if n and len(pc.unique(arrays[out.index("meter_reading_id")])) != n:
        raise ValueError("the batch holds the same meter_reading_id more than once")
    if synchronized:
        arrays += [pa.repeat(True, n), pa.repeat("synchronized", n)]
        out += ["is_synchronized", "sync_status"]
    return pa.RecordBatch.from_arrays(arrays, names=out)


def cast_column(col: pa.Array, want: pa.DataType, name: str) -> pa.Array:
    """``col`` as ``want`` (a uuid extension array as its 16-byte storage); ``ValueError``
    naming the column when Arrow cannot convert it."""
    if isinstance(col.type, pa.BaseExtensionType) and is_uuid(col.type):
        col = col.storage
    if col.type == want:
        return col
    try:
        return col.cast(want)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ValueError(f"column {name!r}: cannot convert {col.type} to {want}: {exc}") from None

"""The values the sync-database adapter takes and returns: the binary ``uuid[]`` parameter,
the row and result records (:class:`TenantRow`, :class:`InsertResult`, :class:`RejectResult`,
:class:`QueueStatus`, :class:`CycleRow`) and the small checks every operation shares.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
import pyarrow as pa
from psycopg import pq
from psycopg.adapt import Dumper

from metersync import codec
from metersync.codec.cast import id_array

log = logging.getLogger("metersync.store.database")  # one logger for the whole adapter


UUID_ARRAY_OID = 2951  # pg_type oid of uuid[]
MAX_ERROR_TEXT = 2000  # last_error / sync_log.error are for humans: keep them bounded


class UuidArray:
    """A binary ``uuid[]`` parameter (what :func:`codec.uuid_array_binary` produced)."""

    __slots__ = ("count", "data")

    def __init__(self, data: bytes, count: int) -> None:
        self.data = data
        self.count = count

    def __repr__(self) -> str:
        return f"UuidArray({self.count} ids)"


class _UuidArrayDumper(Dumper):
    format = pq.Format.BINARY
    oid = UUID_ARRAY_OID

    def dump(self, obj: UuidArray) -> bytes:
        return obj.data


def uuid_param(ids: pa.Array | pa.ChunkedArray | Sequence[Any]) -> UuidArray:
    """A binary ``uuid[]`` parameter for ``= ANY(%s)``."""
    arr = id_array(ids)
    return UuidArray(codec.uuid_array_binary(arr), len(arr))


def _clean_text(text: object) -> str:
    """PostgreSQL text cannot hold NUL; long messages are cut."""
    s = str(text).replace("\x00", "\\x00")
    return s if len(s) <= MAX_ERROR_TEXT else s[: MAX_ERROR_TEXT - 1] + "…"


def _ids_with_texts(
    ids: Sequence[Any] | pa.Array, errors: Sequence[str]
) -> tuple[UuidArray, list[str]] | None:
    """The ids as one ``uuid[]`` parameter and their error texts (cleaned), checked to pair up
    one to one; None when there are no ids."""
    arr = id_array(ids)
    if len(arr) != len(errors):
        raise ValueError(f"{len(arr)} ids but {len(errors)} error texts")
    if not len(arr):
        return None
    return UuidArray(codec.uuid_array_binary(arr), len(arr)), [_clean_text(e) for e in errors]


async def _id_column(cur: psycopg.AsyncCursor[Any]) -> pa.Array:
    """The uuid first column of a cursor's rows as ``fixed_size_binary(16)``, in row order."""
    return pa.array([r[0].bytes for r in await cur.fetchall()], type=pa.binary(16))


def _check_tenant_id(tenant_id: object) -> int:
    if isinstance(tenant_id, bool) or not isinstance(tenant_id, int):
        raise TypeError(f"tenant_id must be an int, got {tenant_id!r}")
    return tenant_id


@dataclass(frozen=True, slots=True)
class TenantRow:
    """A row of ``tenant``. Its ``repr``/``str`` never show the API key."""

    tenant_id: int
    name: str
    api_key: str | None
    active: bool
    download_batch_size: int
    upload_batch_size: int
    updated_at: datetime | None

    def __repr__(self) -> str:
        key = None if self.api_key is None else "'***'"
        return (
            f"TenantRow(tenant_id={self.tenant_id}, name={self.name!r}, api_key={key}, "
            f"active={self.active}, download_batch_size={self.download_batch_size}, "
            f"upload_batch_size={self.upload_batch_size}, updated_at={self.updated_at!r})"
        )

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class InsertResult:
    """Outcome of an insert: rows written, rows skipped (already present), COPY statements."""

    inserted: int
    skipped: int
    chunks: int


@dataclass(frozen=True, slots=True)
class EncodedRows:
    """Readings ready for ``COPY``: ``batch`` in the table's shape (typed columns, ``tenant_id``
    and the sync columns) and ``chunks``, its binary COPY data in chunks of ``chunk_rows``."""

    batch: pa.RecordBatch
    chunks: tuple[bytes, ...]
    chunk_rows: int

    @property
    def num_rows(self) -> int:
        """Readings held."""
        return self.batch.num_rows


@dataclass(frozen=True, slots=True)
class RejectResult:
    """Outcome of :meth:`SyncDatabase.mark_rejected`: rows updated, of which now quarantined."""

    rejected: int
    quarantined: int


@dataclass(frozen=True, slots=True)
class QueueStatus:
    """One tenant's queue: the five counts partition its readings.

    ``pending``: never rejected, waiting; ``failed``: rejected fewer than ``max_retries``
    times, will retry; ``quarantined``: rejected ``max_retries`` times, skipped until requeued;
    ``in_doubt``: sent to a non-idempotent Client System with an unknown outcome, skipped until
    ``metersync resolve``; ``synchronized``: confirmed by the Client System. The oldest pending
    reading counts pending and failed ones (those the queue still serves). ``oldest_in_doubt_at``
    is when the longest-held in-doubt reading was claimed or held (``in_doubt_since``; its
    ``created_at`` only for a reading held before that column existed) and
    ``oldest_in_doubt_age_s`` how long ago that was: how long the Client System has had to finish
    storing it, not the reading's age (``metersync resolve`` waits for a safety window).
    """

    tenant_id: int
    pending: int
    failed: int
    quarantined: int
    synchronized: int
    oldest_pending_at: datetime | None
    oldest_pending_age_s: float | None
    in_doubt: int = 0
    oldest_in_doubt_at: datetime | None = None
    oldest_in_doubt_age_s: float | None = None


@dataclass(frozen=True, slots=True)
class CycleRow:
    """A row of ``sync_log``."""

    tenant_id: int
    operation: str
    started_at: datetime
    batches: int
    records: int
    statements: int
    duration_s: float
    success: bool
    error: str | None

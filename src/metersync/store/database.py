"""``SyncDatabase``: the async adapter to the sync database (psycopg 3, one connection).

The adapter knows SQL (all of it lives in :mod:`metersync.store.sql`); the codec knows bytes. Rows
move as Arrow record batches: fetched with ``COPY (SELECT ...) TO STDOUT (FORMAT BINARY)``
decoded by :func:`metersync.codec.from_copy_binary`, inserted with one binary ``COPY ... FROM
STDIN`` per chunk encoded by :func:`metersync.codec.copy_binary`. Id lists travel as one binary
``uuid[]`` parameter (:func:`metersync.codec.uuid_array_binary`), never as Python UUID objects.

The connection is in autocommit mode; statements that belong together run in an explicit
transaction. ``statements`` counts every statement the adapter issues (each execute and each
COPY counts 1; BEGIN/COMMIT do not), for ``sync_log`` and the benchmarks.

Marks are one ``UPDATE`` per batch keyed by ``tenant_id`` and a binary id list, probing the
primary key; the measurements behind that choice, the fetch and insert figures, and the COPY
read path are in docs/store-notes.md.
"""

from __future__ import annotations

from metersync.codec.cast import id_array
from metersync.store._connection import describe_dsn
from metersync.store.bookkeeping import BookkeepingOps
from metersync.store.companion import CompanionReader
from metersync.store.ingest import IngestOps
from metersync.store.locks import LockOps
from metersync.store.queue import QueueOps
from metersync.store.tenants import TenantOps
from metersync.store.values import (
    CycleRow,
    EncodedRows,
    InsertResult,
    QueueStatus,
    RejectResult,
    TenantRow,
    UuidArray,
    uuid_param,
)

__all__ = [
    "CompanionReader",
    "CycleRow",
    "EncodedRows",
    "InsertResult",
    "QueueStatus",
    "RejectResult",
    "SyncDatabase",
    "TenantRow",
    "UuidArray",
    "describe_dsn",
    "id_array",
    "uuid_param",
]


class SyncDatabase(TenantOps, QueueOps, IngestOps, LockOps, BookkeepingOps):
    """The sync database, through one psycopg ``AsyncConnection`` (autocommit).

    Open with ``await SyncDatabase.connect(dsn)``; close with :meth:`close` or ``async with``.
    Several tasks may share one adapter (managers of one process): its operations take turns on
    the connection (an ``asyncio`` lock around each), so one task's statement never lands inside
    another's transaction or COPY. For parallel work give each worker its own adapter.

    A lost connection (terminated backend, server restart, network) fails the operation it
    interrupts with :class:`DatabaseUnavailableError` (a transaction in progress is rolled back by
    the server: nothing half-written), and the next operation opens a new connection with the
    same DSN. Never in the middle of a transaction: a half-done unit of work is not retried.
    Session advisory locks (:meth:`try_lock_tenant`) end with the lost session, and are
    *fenced*: until the lock is released with :meth:`unlock_tenant` (the end of
    :meth:`tenant_lock`), every operation on that tenant's readings raises
    :class:`TenantLockLostError` instead of running on a session that does not hold the lock
    (another worker may hold it by then and be sending the same readings).
    """

"""The companion session: a second, synchronous connection that reads the upload queue in a
worker thread for a :class:`~metersync.store.database.SyncDatabase`, fenced by its lock.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import TYPE_CHECKING, Any

import psycopg
import pyarrow as pa

from metersync import codec
from metersync.errors import (
    DatabaseUnavailableError,
    TenantLockLostError,
)
from metersync.store import sql as q
from metersync.store._connection import _first_line
from metersync.store.copy_out import read_copy_out_sync

if TYPE_CHECKING:
    from metersync.store.database import SyncDatabase

log = logging.getLogger("metersync.store.database")  # one logger for the whole adapter


class CompanionReader:
    """A second, synchronous session that reads the upload queue for a :class:`SyncDatabase`
    (its *holder*) in a worker thread, while the holder's own session marks.

    Synchronous on purpose: psycopg's async COPY costs an event-loop wait per row (100,000 wide
    rows in 1000-row pages: 0.28 s of client CPU), the sync one in a thread 0.11 s
    (upload-speed notes) — and the rows are decoded in that thread too.

    Reads only, fenced by the holder's ``operation`` lock: :meth:`fetch_unsynchronized` raises
    :class:`TenantLockLostError` when the holder already knows its lock is lost, and its COPY
    runs only while the holder's session holds the lock — PostgreSQL checks ``pg_locks`` in the
    same statement (``queue_select(held_by=...)``), so a lock lost without the holder noticing
    yet is caught too (and then fences the holder). Writes (marks, claims) stay on the session
    holding the lock. A lost companion session raises :class:`DatabaseUnavailableError`; it is
    never reopened (the cycle ends; the next one opens a new companion).
    """

    def __init__(self, holder: SyncDatabase, conn: psycopg.Connection[Any], operation: str) -> None:
        self._holder = holder
        self._conn = conn
        self._operation = operation
        self._lock = threading.Lock()  # the read and close() never overlap on the connection
        self.statements = 0

    async def fetch_unsynchronized(
        self,
        tenant_id: int,
        limit: int,
        *,
        max_retries: int = 5,
        after: tuple[Any, bytes] | None = None,
    ) -> pa.RecordBatch:
        """As :meth:`SyncDatabase.fetch_unsynchronized`, read by this session. One COPY."""
        holder = self._holder
        holder._fence(tenant_id)
        layout = holder._layout or await holder.layout()
        held_by = (holder._conn.info.backend_pid, q.lock_key(self._operation, tenant_id))
        statement = holder.fetch_statement(
            tenant_id, limit, max_retries=max_retries, layout=layout, after=after, held_by=held_by
        )
        self.statements += 1
        try:
            return await asyncio.to_thread(self._read, statement, layout.upload_schema)
        except psycopg.errors.DivisionByZero:  # the holder's session does not hold the lock
            lock = (self._operation, tenant_id)
            if lock in holder._locks:  # lost without the holder noticing yet: fence it now
                holder._locks.discard(lock)
                holder._lost_locks.add(lock)
            holder._fence(tenant_id)
            raise TenantLockLostError(
                f"tenant {tenant_id}: the {self._operation} lock is not held by the session "
                "this read is for; nothing fetched"
            ) from None
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise DatabaseUnavailableError(
                f"lost the second connection to the sync database {holder._where}: "
                f"{_first_line(exc)}"
            ) from None

    def _read(self, statement: Any, schema: pa.Schema) -> pa.RecordBatch:
        with self._lock, self._conn.cursor() as cur, cur.copy(statement):
            data = read_copy_out_sync(self._conn)
        return codec.from_copy_binary(data, schema)

    async def close(self) -> None:
        """Close the session (after a read in progress, if any)."""

        def close() -> None:
            with self._lock:
                self._conn.close()

        await asyncio.to_thread(close)

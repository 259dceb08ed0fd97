"""The upload queue: fetch (one COPY), mark synchronized, record rejections, requeue,
quarantine, and the in-doubt states of readings sent to a non-idempotent Client System
(claim, hold, release, mark); :meth:`QueueOps.companion` opens a second session for reads.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import Sequence
from typing import Any

import psycopg
import pyarrow as pa

from metersync import codec
from metersync.codec.cast import id_array
from metersync.store import sql as q
from metersync.store._connection import Connection, _operation
from metersync.store.companion import CompanionReader
from metersync.store.copy_out import read_copy_out, read_copy_out_in_thread
from metersync.store.schema import TableLayout
from metersync.store.values import (
    RejectResult,
    _check_tenant_id,
    _id_column,
    _ids_with_texts,
    uuid_param,
)

log = logging.getLogger("metersync.store.database")  # one logger for the whole adapter


class QueueOps(Connection):
    """The upload-queue operations of :class:`~metersync.store.database.SyncDatabase`."""

    @_operation
    async def fetch_unsynchronized(
        self,
        tenant_id: int,
        limit: int,
        *,
        max_retries: int = 5,
        exclude: pa.Array | pa.ChunkedArray | Sequence[Any] | None = None,
        after: tuple[Any, bytes] | None = None,
    ) -> pa.RecordBatch:
        """The tenant's oldest ``limit`` unsynchronized readings (order ``created_at,
        meter_reading_id``), skipping quarantined ones (``retry_count >= max_retries``) and the
        ``exclude`` ids, as a record batch of the upload columns. One COPY statement.
        ``after``: keyset lower bound ``(created_at, id bytes)`` (only readings after it)."""
        self._fence(tenant_id)
        layout = await self.layout()
        statement = self.fetch_statement(
            tenant_id, limit, max_retries=max_retries, exclude=exclude, layout=layout, after=after
        )
        self.statements += 1
        async with self._conn.cursor() as cur, cur.copy(statement):
            data = await read_copy_out(self._conn)
        return codec.from_copy_binary(data, layout.upload_schema)

    @_operation
    async def fetch_unsynchronized_many(
        self, limits: Sequence[tuple[int, int]], *, max_retries: int = 5
    ) -> dict[int, pa.RecordBatch]:
        """The first batch of several tenants with ONE COPY: for each ``(tenant_id, limit)``
        the same rows, in the same order, as ``fetch_unsynchronized(tenant_id, limit,
        max_retries=max_retries)`` returns (each tenant gets a batch, empty when its queue is).

        For a group of small tenants (issue 12): one statement and one decode instead of one
        of each per tenant. Every tenant's lock must be held by this adapter (the rows are
        the ones its upload then sends)."""
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 1:
            raise ValueError(f"max_retries must be a positive integer, got {max_retries!r}")
        tenants = [t for t, _ in limits]
        if len(set(tenants)) != len(tenants):
            raise ValueError(f"each tenant once, got {tenants!r}")
        for tenant_id, limit in limits:
            _check_tenant_id(tenant_id)
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise ValueError(f"limit must be a positive integer, got {limit!r}")
            self._fence(tenant_id)
            if not self.holds_lock(tenant_id, "upload"):  # type: ignore[attr-defined]
                raise RuntimeError(f"tenant {tenant_id}: fetch for an upload lock not held")
        if not limits:
            return {}
        layout = await self.layout()
        select = q.queue_select_many(layout.upload_columns, list(limits), max_retries)
        self.statements += 1
        schema = pa.schema([pa.field("group_pos", pa.int64()), *layout.upload_schema])
        # Read and decoded in a worker thread, both without the GIL for most of it: a group's
        # rows (1.2 MB for 16 tenants) cost the event loop ~13 ms there, while the loop is
        # the busiest thread of a many-tenant cycle (its POSTs, the other groups).
        async with self._conn.cursor() as cur, cur.copy(q.copy_out(select)):
            both = await read_copy_out_in_thread(
                self._conn, lambda data: codec.from_copy_binary(data, schema)
            )
        rows = both.drop_columns(["group_pos"]).replace_schema_metadata(
            layout.upload_schema.metadata
        )
        # Rows come ordered by group position: each tenant's are the next run of rows. (Plain
        # Python on a few thousand ints: a compute kernel here releases the GIL and, in a busy
        # process, waits a switch interval (5 ms) to get it back, measured 7 ms per group.)
        positions = both.column(0).to_pylist()
        out: dict[int, pa.RecordBatch] = {}
        start = 0
        for pos, tenant_id in enumerate(tenants, 1):
            end = bisect.bisect_right(positions, pos, lo=start)
            out[tenant_id] = rows.slice(start, end - start)
            start = end
        return out

    async def companion(self, operation: str = "upload") -> CompanionReader | None:
        """A second session for the queue READS that run alongside this adapter's work (the
        upload fetches the next batch on it while this session marks the previous one);
        ``None`` when none can be opened here (no DSN). See :class:`CompanionReader`. The
        caller closes it."""
        if self._dsn is None or self._closed:
            return None
        try:
            conn = await asyncio.to_thread(
                psycopg.Connection.connect, self._dsn, autocommit=True, **self._connect_options
            )
        except psycopg.Error as exc:
            raise self._unavailable(exc) from None
        return CompanionReader(self, conn, operation)

    def fetch_statement(
        self,
        tenant_id: int,
        limit: int,
        *,
        max_retries: int = 5,
        exclude: pa.Array | pa.ChunkedArray | Sequence[Any] | None = None,
        layout: TableLayout | None = None,
        copy: bool = True,
        after: tuple[Any, bytes] | None = None,
        held_by: tuple[int, str] | None = None,
    ) -> Any:
        """The exact COPY statement :meth:`fetch_unsynchronized` runs; with ``copy=False``
        its inner ``SELECT`` (what a test EXPLAINs: COPY itself cannot be explained)."""
        _check_tenant_id(tenant_id)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive integer, got {limit!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 1:
            raise ValueError(f"max_retries must be a positive integer, got {max_retries!r}")
        layout = layout or self._layout
        if layout is None:
            raise RuntimeError("call await layout() first")
        literal = None
        if exclude is not None and len(exclude):
            # Hex digits only: safe as a literal (COPY takes no parameters).
            ids = id_array(exclude)
            literal = "{" + ",".join(b.hex() for b in ids.to_pylist() if b is not None) + "}"
        select = q.queue_select(
            layout.upload_columns,
            tenant_id,
            limit,
            max_retries,
            literal,
            after=after,
            held_by=held_by,
        )
        return q.copy_out(select) if copy else select

    @_operation
    async def mark_synchronized(
        self, tenant_id: int, ids: pa.Array | pa.ChunkedArray | Sequence[Any]
    ) -> int:
        """Mark readings the Client System confirmed: ``is_synchronized = true, sync_status =
        'synchronized', last_error = NULL``. ONE statement; returns the rows newly marked
        (already synchronized ones are not written again). Only ``tenant_id``'s rows change."""
        _check_tenant_id(tenant_id)
        self._fence(tenant_id)
        param = uuid_param(ids)
        if not param.count:
            return 0
        cur = await self._execute(q.MARK_SYNCHRONIZED, (tenant_id, param))
        return cur.rowcount

    @_operation
    async def mark_synchronized_many(
        self, marks: Sequence[tuple[int, pa.Array | pa.ChunkedArray | Sequence[Any]]]
    ) -> dict[int, int]:
        """:meth:`mark_synchronized` for several tenants in ONE statement: for each
        ``(tenant_id, ids)``, that tenant's readings with those ids. Returns the rows newly
        marked per tenant (every tenant given is a key; 0 when none was). A tenant may appear
        more than once; only its own rows change.

        For a group of small tenants (issue 12): one UPDATE and one commit for the group
        instead of one per tenant."""
        params: list[Any] = []
        newly: dict[int, int] = {}
        for tenant_id, ids in marks:
            _check_tenant_id(tenant_id)
            self._fence(tenant_id)
            param = uuid_param(ids)
            newly.setdefault(tenant_id, 0)
            if param.count:
                params += (tenant_id, param)
        if not params:
            return newly
        cur = await self._execute(q.mark_synchronized_many(len(params) // 2), params)
        for tenant_id, count in await cur.fetchall():
            newly[tenant_id] = count
        return newly

    @_operation
    async def mark_rejected(
        self,
        tenant_id: int,
        ids: Sequence[Any] | pa.Array,
        errors: Sequence[str],
        max_retries: int = 5,
    ) -> RejectResult:
        """Record individual rejections: ``sync_status = 'failed', retry_count + 1,
        last_error``. ONE statement. ``quarantined`` counts the rows that reached
        ``max_retries`` (the queue skips them until :meth:`requeue`)."""
        _check_tenant_id(tenant_id)
        self._fence(tenant_id)
        paired = _ids_with_texts(ids, errors)
        if paired is None:
            return RejectResult(0, 0)
        cur = await self._execute(q.MARK_REJECTED, (*paired, tenant_id, max_retries))
        flags = await cur.fetchall()
        return RejectResult(len(flags), sum(1 for (f,) in flags if f))

    @_operation
    async def requeue(
        self, tenant_id: int, ids: pa.Array | pa.ChunkedArray | Sequence[Any] | None = None
    ) -> int:
        """Put rejected readings back in the queue (``retry_count = 0, sync_status =
        'pending'``): the given ids, or every rejected unsynchronized reading of the tenant."""
        _check_tenant_id(tenant_id)
        self._fence(tenant_id)
        return await self._ids_or_all(tenant_id, ids, q.REQUEUE_IDS, q.REQUEUE_ALL)

    @_operation
    async def quarantined_ids(self, tenant_id: int, max_retries: int = 5) -> pa.Array:
        """Ids of the tenant's quarantined readings (oldest first), ``fixed_size_binary(16)``."""
        _check_tenant_id(tenant_id)
        cur = await self._execute(q.QUARANTINED_IDS, (tenant_id, max_retries))
        return await _id_column(cur)

    # -- in doubt (non-idempotent Client System; upload owner) ----------------------------------

    @_operation
    async def claim_unsynchronized(
        self,
        tenant_id: int,
        limit: int,
        *,
        max_retries: int = 5,
        after: tuple[Any, bytes] | None = None,
    ) -> pa.RecordBatch:
        """Claim the tenant's oldest ``limit`` queue readings (``sync_status = 'in_doubt'``,
        committed) and return them in queue order, in ONE statement: ``COPY (UPDATE ...
        RETURNING ...) TO STDOUT`` (:func:`sql.queue_claim`). Readings already in doubt are
        skipped; ``after`` is a keyset lower bound ``(created_at, id bytes)``."""
        _check_tenant_id(tenant_id)
        self._fence(tenant_id)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive integer, got {limit!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 1:
            raise ValueError(f"max_retries must be a positive integer, got {max_retries!r}")
        layout = await self.layout()
        statement = q.copy_out(
            q.queue_claim(layout.upload_columns, tenant_id, limit, max_retries, after)
        )
        self.statements += 1
        async with self._conn.cursor() as cur, cur.copy(statement):
            data = await read_copy_out(self._conn)
        batch = codec.from_copy_binary(data, layout.upload_schema)
        if batch.num_rows > 1:  # RETURNING has no order: restore the queue order
            batch = batch.sort_by([("created_at", "ascending"), ("meter_reading_id", "ascending")])
        return batch

    @_operation
    async def release_in_doubt(
        self, tenant_id: int, ids: pa.Array | pa.ChunkedArray | Sequence[Any] | None = None
    ) -> int:
        """Put in-doubt readings back in the queue with the status they had (``failed`` when
        rejected before, else ``pending``): the given ids, or all of the tenant's. ONE
        statement; returns the rows released."""
        _check_tenant_id(tenant_id)
        if ids is not None:
            self._fence(tenant_id)
        return await self._ids_or_all(
            tenant_id, ids, q.RELEASE_IN_DOUBT_IDS, q.RELEASE_IN_DOUBT_ALL
        )

    @_operation
    async def hold_in_doubt(
        self, tenant_id: int, ids: Sequence[Any] | pa.Array, errors: Sequence[str]
    ) -> int:
        """Keep readings in doubt and record why (``last_error``). ONE statement."""
        _check_tenant_id(tenant_id)
        self._fence(tenant_id)
        paired = _ids_with_texts(ids, errors)
        if paired is None:
            return 0
        cur = await self._execute(q.HOLD_IN_DOUBT, (*paired, tenant_id))
        return cur.rowcount

    @_operation
    async def mark_in_doubt_synchronized(
        self, tenant_id: int, ids: pa.Array | pa.ChunkedArray | Sequence[Any] | None = None
    ) -> int:
        """Mark in-doubt readings synchronized (an operator found them on the Client System):
        the given ids, or all of the tenant's. ONE statement; returns the rows marked."""
        _check_tenant_id(tenant_id)
        return await self._ids_or_all(
            tenant_id, ids, q.MARK_IN_DOUBT_SYNCHRONIZED_IDS, q.MARK_IN_DOUBT_SYNCHRONIZED_ALL
        )

    @_operation
    async def in_doubt_ids(self, tenant_id: int) -> pa.Array:
        """Ids of the tenant's in-doubt readings (oldest first), ``fixed_size_binary(16)``."""
        _check_tenant_id(tenant_id)
        cur = await self._execute(q.IN_DOUBT_IDS, (tenant_id,))
        return await _id_column(cur)

    @_operation
    async def in_doubt_held(self, tenant_id: int) -> tuple[pa.Array, pa.Array]:
        """The tenant's in-doubt readings (oldest first) and how long each has been held:
        ``(ids fixed_size_binary(16), seconds float64)``, seconds by the database's clock since
        the reading was claimed or held (``in_doubt_since``). ONE statement."""
        _check_tenant_id(tenant_id)
        cur = await self._execute(q.IN_DOUBT_HELD, (tenant_id,))
        rows = await cur.fetchall()
        return (
            pa.array([r[0].bytes for r in rows], type=pa.binary(16)),
            pa.array([r[1] for r in rows], type=pa.float64()),
        )

    async def _ids_or_all(
        self,
        tenant_id: int,
        ids: pa.Array | pa.ChunkedArray | Sequence[Any] | None,
        ids_sql: Any,
        all_sql: Any,
    ) -> int:
        """ONE statement over the given ids (``ids_sql``; no ids: no statement) or, ``ids``
        None, over all of the tenant's (``all_sql``); returns the rows it changed."""
        if ids is None:
            cur = await self._execute(all_sql, (tenant_id,))
        else:
            param = uuid_param(ids)
            if not param.count:
                return 0
            cur = await self._execute(ids_sql, (tenant_id, param))
        return cur.rowcount

"""Readings into the sync database: insert (existing-id check overlapped with encoding, one
binary COPY per chunk, a staging-table redo after a concurrent writer), and a downloaded page
stored with its cursor in one transaction.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any, Self

import psycopg
import pyarrow as pa
import pyarrow.compute as pc

from metersync import codec
from metersync._failpoints import failpoint
from metersync.codec.cast import insert_batch
from metersync.errors import (
    SchemaError,
    TenantLockLostError,
)
from metersync.store import sql as q
from metersync.store._connection import Connection, _first_line, _operation
from metersync.store.schema import TableLayout
from metersync.store.values import EncodedRows, InsertResult, _check_tenant_id, uuid_param

log = logging.getLogger("metersync.store.database")  # one logger for the whole adapter


#: Below this many rows an insert encodes inline: a worker thread costs more than it hides.
OVERLAP_MIN_ROWS = 2000


class IngestOps(Connection):
    """The insert and download operations of :class:`~metersync.store.database.SyncDatabase`."""

    @_operation
    async def insert_readings(
        self, batch: pa.RecordBatch, chunk_rows: int, *, synchronized: bool = False
    ) -> InsertResult:
        """Insert readings (upload columns + ``tenant_id``), skipping ids already present.

        One transaction: one existing-id check per tenant in the batch, then one binary COPY
        per chunk of ``chunk_rows``. A concurrent writer inserting one of the ids in between
        (the COPY then meets its row): the transaction is redone through a staging table
        (:meth:`_insert_staged`), which skips whatever is present by then.
        """
        layout = await self.layout()
        prepared = insert_batch(batch, _typed_columns(layout), None, synchronized)
        if prepared.num_rows == 0:
            return InsertResult(0, 0, 0)

        async def insert() -> InsertResult:
            return await self._insert(prepared, chunk_rows)

        return await self._insert_unit(insert, lambda: prepared, chunk_rows)

    @_operation
    async def store_download_page(
        self, tenant_id: int, batch: pa.RecordBatch, chunk_rows: int, next_cursor: str | None
    ) -> InsertResult:
        """Store a downloaded page as synchronized readings and advance the tenant's cursor, in
        ONE transaction (a crash replays the page and duplicates nothing)."""
        page = self.encode_download_page(await self.layout(), tenant_id, batch, chunk_rows)
        return await self.store_download_pages(tenant_id, [page], next_cursor)

    def encode_download_page(
        self, layout: TableLayout, tenant_id: int, batch: pa.RecordBatch, chunk_rows: int
    ) -> EncodedRows:
        """A downloaded page (upload columns) as synchronized readings of ``tenant_id``, encoded
        for COPY in chunks of ``chunk_rows``: CPU only, no connection, so a worker thread may
        run it while this connection stores the page before (the encoder releases the GIL).

        Raises :class:`SchemaError` / ``ValueError`` for a page that does not fit the table.
        """
        _check_tenant_id(tenant_id)
        _check_chunk_rows(chunk_rows)
        prepared = insert_batch(batch, _typed_columns(layout), tenant_id, True)
        return EncodedRows(prepared, tuple(_encode_chunks(prepared, chunk_rows)), chunk_rows)

    @_operation
    async def store_download_pages(
        self,
        tenant_id: int,
        pages: Sequence[EncodedRows],
        next_cursor: str | None,
        *,
        check_present: bool = True,
        before_cursor: Callable[[], Awaitable[None]] | None = None,
        held_by: tuple[int, str] | None = None,
    ) -> InsertResult:
        """Store encoded pages (:meth:`encode_download_page`) and advance the tenant's cursor to
        ``next_cursor``, all in ONE transaction.

        ``check_present``: look up which readings are already stored first and skip them (one
        statement). ``False`` for pages expected to be new: their COPY goes straight in, and if
        a reading is present after all, the unit is redone through a staging table that skips
        it; the result is the same, only slower then.

        ``before_cursor``: awaited inside the transaction after the COPYs, before the cursor
        moves (a second writer waits there for the unit before it to commit: cursors commit in
        page order). If it raises, nothing of this unit is written.

        ``held_by``: ``(backend pid, lock key)`` of the session holding the tenant's download
        lock when this is another session (:meth:`download_writer`): the cursor upsert then
        fails unless that session still holds the lock, and nothing is written
        (:class:`TenantLockLostError`).
        """
        _check_tenant_id(tenant_id)
        self._fence(tenant_id)
        for page in pages:
            if (
                page.num_rows
                and not pc.all(pc.equal(page.batch.column("tenant_id"), tenant_id)).as_py()
            ):
                raise ValueError(f"encoded rows of another tenant given to store for {tenant_id}")

        async def cursor() -> None:
            if before_cursor is not None:
                await before_cursor()
            failpoint("download.before_commit")
            if held_by is None:
                await self._execute(q.UPSERT_CURSOR, (tenant_id, next_cursor))
                return
            try:
                await self._execute(q.upsert_cursor_held_by(*held_by), (tenant_id, next_cursor))
            except psycopg.errors.DivisionByZero:
                raise TenantLockLostError(
                    f"tenant {tenant_id}: the download lock is not held by the session these "
                    "pages are written for; nothing written"
                ) from None

        async def insert() -> InsertResult:
            return await self._copy_encoded(pages, check_present)

        batches = [p.batch for p in pages if p.num_rows]
        return await self._insert_unit(
            insert,
            lambda: _concat(batches),
            min((p.chunk_rows for p in pages), default=1),
            cursor,
        )

    async def download_writer(self) -> Self | None:
        """A second session on the same database that stores downloaded pages while this one
        stores the pages before them (:meth:`store_download_pages` with ``held_by`` =
        :meth:`lock_holder` of this session, and ``before_cursor`` for the commit order);
        ``None`` when there is no DSN to open one with. The caller closes it."""
        if self._dsn is None or self._closed:
            return None
        return await type(self).connect(self._dsn)

    def lock_holder(self, tenant_id: int, operation: str) -> tuple[int, str]:
        """``(backend pid, lock key)`` of this session's ``operation`` lock on ``tenant_id``:
        what another session passes as ``held_by`` to write under this session's lock."""
        return (self._conn.info.backend_pid, q.lock_key(operation, _check_tenant_id(tenant_id)))

    async def _insert_unit(
        self,
        insert: Callable[[], Awaitable[InsertResult]],
        rows: Callable[[], pa.RecordBatch],
        chunk_rows: int,
        then: Callable[[], Awaitable[None]] | None = None,
    ) -> InsertResult:
        """One transaction: ``insert()`` (the fast path), then ``then()``.

        The fast path (existing ids skipped after a check, or no check for rows expected to be
        new, then COPY straight into ``meter_reading``) fails with a unique violation when a
        reading is present after all (another writer inserted it after the check, or it was
        never checked). Then the whole unit is redone once through :meth:`_insert_staged` with
        ``rows()``, which cannot fail so: no raw driver error reaches the caller, nothing is
        written twice.
        """
        _check_chunk_rows(chunk_rows)
        try:
            async with self._transaction():
                result = await insert()
                if then is not None:
                    await then()
            return result
        except psycopg.errors.UniqueViolation as exc:
            batch = rows()
            log.info(
                "%d readings met readings already stored (%s); redoing the insert through a "
                "staging table",
                batch.num_rows,
                exc.diag.constraint_name or "unique violation",
            )
        try:
            async with self._transaction():
                result = await self._insert_staged(batch, chunk_rows)
                if then is not None:
                    await then()
            return result
        except psycopg.errors.UniqueViolation as exc:
            # Not the key (ON CONFLICT covers it): a unique constraint of the site's own.
            raise SchemaError(
                f"readings violate the unique constraint {exc.diag.constraint_name} of "
                f"meter_reading ({_first_line(exc)}); only the key (tenant_id, meter_reading_id) "
                "may be unique for metersync to store them; nothing was written"
            ) from None

    async def _insert_staged(self, batch: pa.RecordBatch, chunk_rows: int) -> InsertResult:
        """COPY into a temporary copy of ``meter_reading`` (dropped at commit), then one
        ``INSERT ... SELECT ... ON CONFLICT (tenant_id, meter_reading_id) DO NOTHING``: rows
        present by then, committed by anyone, are skipped instead of failing the unit."""
        names = batch.schema.names
        await self._execute(q.CREATE_STAGE)
        count = await self._copy_chunks(
            q.copy_in(names, table=q.STAGE), _chunk_data(batch, chunk_rows)
        )
        cur = await self._execute(q.insert_from_stage(names))
        inserted = max(cur.rowcount, 0)
        return InsertResult(inserted, batch.num_rows - inserted, count)

    async def _insert(self, batch: pa.RecordBatch, chunk_rows: int) -> InsertResult:
        _check_chunk_rows(chunk_rows)
        total = batch.num_rows
        # The existing-id check (a primary-key probe per id, ~12% of the COPY's own time) runs
        # on the server while a worker thread encodes the chunks (the C encoder releases the
        # GIL): the encoding is then free, and it is only redone if the check found readings
        # to skip.
        check = asyncio.ensure_future(self._present_ids(batch))
        encoded: list[bytes] | None = None
        try:
            if total >= OVERLAP_MIN_ROWS:
                encoded = await asyncio.to_thread(_encode_chunks, batch, chunk_rows)
        finally:
            present = await check
        if present:
            batch = _absent(batch, present)
            encoded = None
        chunks = encoded if encoded is not None else _chunk_data(batch, chunk_rows)
        count = await self._copy_chunks(q.copy_in(batch.schema.names), chunks)
        return InsertResult(batch.num_rows, total - batch.num_rows, count)

    async def _copy_encoded(
        self, pages: Sequence[EncodedRows], check_present: bool
    ) -> InsertResult:
        """COPY encoded pages, chunk by chunk; with ``check_present``, readings already stored
        are looked up first (one statement for all pages) and left out (those pages are
        encoded again without them)."""
        total = sum(p.num_rows for p in pages)
        if total == 0:
            return InsertResult(0, 0, 0)
        if check_present:
            present = await self._present_ids(_concat([p.batch for p in pages if p.num_rows]))
            if len(present):
                pages = [_without(p, present) for p in pages]
        inserted = sum(p.num_rows for p in pages)
        count = await self._copy_chunks(
            q.copy_in(pages[0].batch.schema.names), (data for p in pages for data in p.chunks)
        )
        return InsertResult(inserted, total - inserted, count)

    async def _copy_chunks(self, statement: Any, chunks: Iterable[bytes]) -> int:
        """One ``COPY ... FROM STDIN`` per chunk of binary COPY data; how many ran."""
        count = 0
        async with self._conn.cursor() as cur:
            for data in chunks:
                self.statements += 1
                async with cur.copy(statement) as copy:
                    await copy.write(data)
                count += 1
        return count

    async def _present_ids(self, batch: pa.RecordBatch) -> pa.Array:
        """Ids of the batch already stored: one statement per tenant in the batch."""
        ids = batch.column("meter_reading_id")
        tenants = batch.column("tenant_id")
        distinct = pc.unique(tenants).to_pylist()
        present: list[bytes] = []
        for tenant in distinct:
            mine = ids if len(distinct) == 1 else ids.filter(pc.equal(tenants, tenant))
            cur = await self._execute(q.EXISTING_IDS, (tenant, uuid_param(mine)))
            present += [r[0].bytes for r in await cur.fetchall()]
        return pa.array(present, type=pa.binary(16))

    @_operation
    async def get_download_cursor(self, tenant_id: int) -> str | None:
        """Where the tenant's download resumes (``None``: from the beginning)."""
        return await self._scalar(q.GET_CURSOR, (_check_tenant_id(tenant_id),))


def _chunk_data(batch: pa.RecordBatch, chunk_rows: int) -> Iterator[bytes]:
    """Binary COPY data of ``batch``, one piece per chunk of ``chunk_rows``, as it is needed."""
    return (codec.copy_binary(chunk) for chunk in codec.slices(batch, chunk_rows))


def _encode_chunks(batch: pa.RecordBatch, chunk_rows: int) -> list[bytes]:
    return list(_chunk_data(batch, chunk_rows))


def _concat(batches: Sequence[pa.RecordBatch]) -> pa.RecordBatch:
    """One record batch of ``batches`` (same schema; at least one)."""
    if len(batches) == 1:
        return batches[0]
    return pa.Table.from_batches(batches).combine_chunks().to_batches()[0]


def _absent(batch: pa.RecordBatch, present: pa.Array) -> pa.RecordBatch:
    """The readings of ``batch`` whose ids are not in ``present``."""
    return batch.filter(pc.invert(pc.is_in(batch.column("meter_reading_id"), value_set=present)))


def _without(page: EncodedRows, present: pa.Array) -> EncodedRows:
    """``page`` without the readings whose ids are in ``present`` (encoded again if any)."""
    kept = _absent(page.batch, present)
    if kept.num_rows == page.num_rows:
        return page
    return EncodedRows(kept, tuple(_encode_chunks(kept, page.chunk_rows)), page.chunk_rows)


def _check_chunk_rows(chunk_rows: object) -> None:
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")


def _typed_columns(layout: TableLayout) -> list[tuple[str, pa.DataType]]:
    """The upload columns of ``meter_reading`` with their Arrow types, in table order."""
    return [(c.name, c.arrow_type) for c in layout.columns]

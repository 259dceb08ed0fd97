"""What the upload and download managers need from the sync database and the Client System.

The managers are written against these protocols, not against :class:`~metersync.store.database.
SyncDatabase` and :class:`~metersync.remote.client.ClientSystemApiClient` themselves: the engine
knows the order of things, the adapters know SQL and HTTP. The tests and the benchmarks pass the
real adapters (which satisfy these structurally); a daemon may pass its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import pyarrow as pa

if TYPE_CHECKING:
    from metersync.remote.client import DownloadPage, UploadResult
    from metersync.store.database import EncodedRows, InsertResult, RejectResult
    from metersync.store.schema import TableLayout

__all__ = ["DownloadClient", "DownloadStore", "UploadClient", "UploadStore"]

#: Reading ids as the adapters take them: an Arrow array of 16-byte ids, or a sequence of ids.
Ids: TypeAlias = pa.Array | pa.ChunkedArray | Sequence[Any]


class _LockingStore(Protocol):
    #: Every statement the adapter has issued (the managers report their share).
    statements: int

    def tenant_lock(self, tenant_id: int, operation: str) -> AbstractAsyncContextManager[None]:
        """Hold the tenant's ``operation`` advisory lock (``TenantBusyError`` when taken)."""
        ...

    def holds_lock(self, tenant_id: int, operation: str) -> bool:
        """Whether this adapter holds the tenant's ``operation`` lock (a caller took it: the
        upload's ``prefetched`` batch)."""
        ...


class UploadStore(_LockingStore, Protocol):
    """The sync database as the upload cycle uses it (every call keyed by ``tenant_id``)."""

    async def fetch_unsynchronized(
        self,
        tenant_id: int,
        limit: int,
        *,
        max_retries: int = 5,
        exclude: Ids | None = None,
        after: tuple[Any, bytes] | None = None,
    ) -> pa.RecordBatch:
        """The oldest ≤ ``limit`` pending readings after the keyset bound ``after``."""
        ...

    async def claim_unsynchronized(
        self,
        tenant_id: int,
        limit: int,
        *,
        max_retries: int = 5,
        after: tuple[Any, bytes] | None = None,
    ) -> pa.RecordBatch:
        """Fetch and hold ``in_doubt`` in one statement (non-idempotent Client System)."""
        ...

    async def mark_synchronized(self, tenant_id: int, ids: Ids) -> int:
        """Mark confirmed readings synchronized (one statement)."""
        ...

    async def mark_rejected(
        self, tenant_id: int, ids: Ids, errors: Sequence[str], max_retries: int = 5
    ) -> RejectResult:
        """Record individual rejections (one statement)."""
        ...

    async def hold_in_doubt(self, tenant_id: int, ids: Ids, errors: Sequence[str]) -> int:
        """Hold readings whose outcome is unknown, with why."""
        ...

    async def release_in_doubt(self, tenant_id: int, ids: Ids | None = None) -> int:
        """Put held readings back in the queue (nothing of them was stored)."""
        ...


class DownloadStore(_LockingStore, Protocol):
    """The sync database as the download cycle uses it."""

    async def layout(self, *, refresh: bool = False) -> TableLayout:
        """The reflected ``meter_reading`` (the page parser's schema)."""
        ...

    async def get_download_cursor(self, tenant_id: int) -> str | None:
        """Where the tenant's download resumes."""
        ...

    def encode_download_page(
        self, layout: TableLayout, tenant_id: int, batch: pa.RecordBatch, chunk_rows: int
    ) -> EncodedRows:
        """A parsed page encoded for storing (CPU only: called from a worker thread)."""
        ...

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
        """Store encoded pages and advance the cursor, all in one transaction (``before_cursor``
        awaited before the cursor moves; ``held_by`` fences another session's write by the lock
        holder's lock)."""
        ...

    def lock_holder(self, tenant_id: int, operation: str) -> tuple[int, str]:
        """``(backend pid, lock key)`` of this session's lock: the ``held_by`` of a second
        session's writes (only asked for when ``download_writer()`` gave one)."""
        ...


class UploadClient(Protocol):
    """The Client System as the upload cycle uses it (``profile()`` is optional)."""

    async def post_batch(
        self, readings_json: bytes, count: int, *, idempotency_key: str
    ) -> UploadResult:
        """POST one batch body; the Client System's confirmed answer."""
        ...


class DownloadClient(Protocol):
    """The Client System as the download cycle uses it (``profile()`` and ``site_id`` optional)."""

    async def get_readings(
        self,
        limit: int,
        after: str | None = None,
        *,
        schema: pa.Schema | None = None,
        tenant_id: int | None = None,
        unknown_fields: Collection[str] | str | None = None,
        exclude_site: str | None = None,
        on_body: Callable[[bytes], None] | None = None,
    ) -> DownloadPage:
        """One page of the key's tenant after ``after`` (``on_body`` sees its bytes before
        the parse)."""
        ...

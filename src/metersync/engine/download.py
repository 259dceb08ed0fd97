"""The download cycle of one tenant: Client System → sync database (spec §5).

One cycle, under the tenant's download lock::

    sizes from the tenant cache (once); cursor from sync_state
    loop: GET ≤ download_batch_size readings after the cursor
          → validate into an Arrow batch (page.py; a page longer than asked is refused)
          → one transaction: binary COPY in chunks of upload_batch_size (rows already present
            are skipped; rows stored synchronized so they are never uploaded back) + the new
            cursor
    until the Client System has nothing more, the page budget is spent or a stop was requested.

A malformed or oversize page raises :class:`MalformedPageError`: nothing of it is written and
the cursor does not move, so the next cycle asks for the same page again. A Client System that
cannot be reached ends the cycle with ``report.error`` set (pages committed so far stay).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any

import httpx

from metersync._failpoints import failpoint
from metersync.engine.tenant_cache import TenantCache
from metersync.errors import (
    AuthError,
    BadRequestError,
    ClientSystemError,
    MalformedPageError,
)
from metersync.remote.page import page_to_batch

__all__ = ["DownloadManager", "DownloadReport"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DownloadReport:
    """What one download cycle did.

    ``readings`` = readings received in valid pages; ``inserted`` / ``skipped`` = of those,
    stored new / already present; ``chunks`` = COPY statements; ``statements`` = SQL statements
    the sync database saw during the cycle; ``error`` = why the cycle ended early.
    """

    tenant_id: int
    download_batch_size: int = 0
    upload_batch_size: int = 0
    pages: int = 0
    readings: int = 0
    inserted: int = 0
    skipped: int = 0
    chunks: int = 0
    statements: int = 0
    seconds: float = 0.0
    cursor: str | None = None
    error: str | None = None

    @property
    def success(self) -> bool:
        """True when the cycle ended without an error."""
        return self.error is None


class DownloadManager:
    """Runs download cycles for one tenant.

    ``db`` is a :class:`~metersync.store.database.SyncDatabase`, ``client`` a
    :class:`~metersync.remote.client.ClientSystemApiClient` holding the tenant's key, ``cache`` the
    :class:`TenantCache` the sizes come from (read once per cycle). ``max_pages`` bounds one
    cycle (``None``: until the Client System has no more readings).
    """

    def __init__(
        self,
        db: Any,
        client: Any,
        cache: TenantCache,
        *,
        tenant_id: int,
        max_pages: int | None = None,
    ) -> None:
        if max_pages is not None and max_pages < 1:
            raise ValueError(f"max_pages must be >= 1 or None, got {max_pages}")
        self._db = db
        self._client = client
        self._cache = cache
        self.tenant_id = tenant_id
        self.max_pages = max_pages
        self._stop_requested = False
        #: The report of the cycle running now or of the last one (also after it raised).
        self.report = DownloadReport(tenant_id=tenant_id)
        #: The exception behind ``report.error`` (its type says what failed), else ``None``.
        self.error_cause: BaseException | None = None

    def request_stop(self) -> None:
        """Finish the page in flight (committed with its cursor), then end the cycle."""
        self._stop_requested = True

    async def download(self) -> DownloadReport:
        """Run one download cycle and return its report.

        Raises :class:`TenantBusyError` when another worker downloads this tenant,
        :class:`MalformedPageError` for a page that fails validation or is larger than asked
        for (nothing of it written, cursor unchanged), :class:`AuthError` for a refused key.
        """
        self._stop_requested = False
        started = time.perf_counter()
        statements0 = self._db.statements
        self.report = DownloadReport(tenant_id=self.tenant_id)
        self.error_cause = None
        settings = await self._cache.get(self.tenant_id)
        batch_cfg = settings.batch
        self.report = replace(
            self.report,
            download_batch_size=batch_cfg.download_batch_size,
            upload_batch_size=batch_cfg.upload_batch_size,
        )
        try:
            async with self._db.tenant_lock(self.tenant_id, "download"):  # or TenantBusyError
                await self._cycle(batch_cfg.download_batch_size, batch_cfg.upload_batch_size)
        finally:
            self.report = replace(
                self.report,
                statements=self._db.statements - statements0,
                seconds=time.perf_counter() - started,
            )
        r = self.report
        log.log(
            logging.WARNING if r.error else logging.INFO,
            "tenant %s download: %d pages, %d readings (%d inserted, %d already present), "
            "%d statements, %.3f s%s",
            self.tenant_id,
            r.pages,
            r.readings,
            r.inserted,
            r.skipped,
            r.statements,
            r.seconds,
            f"; ended early: {r.error}" if r.error else "",
        )
        return r

    async def _cycle(self, page_size: int, chunk_rows: int) -> None:
        layout = await self._db.layout()
        schema = layout.upload_schema
        cursor = await self._db.get_download_cursor(self.tenant_id)
        self.report = replace(self.report, cursor=cursor)
        while not self._stop_requested and (
            self.max_pages is None or self.report.pages < self.max_pages
        ):
            try:
                page = await self._client.get_readings(page_size, cursor)
            except (AuthError, BadRequestError):
                raise
            except (ClientSystemError, httpx.HTTPError) as exc:
                self.error_cause = exc
                self.report = replace(
                    self.report,
                    error=f"fetching a page after cursor {cursor!r} failed "
                    f"({type(exc).__name__}: {exc}); the cursor did not move",
                )
                return
            failpoint("download.after_fetch_page")
            readings = page.readings
            if not readings:
                break
            try:
                batch = page_to_batch(
                    readings, schema=schema, tenant_id=self.tenant_id, limit=page_size
                )
            except MalformedPageError as exc:
                raise MalformedPageError(
                    f"{exc} (page after cursor {cursor!r}; nothing written, cursor unchanged)"
                ) from None
            # Never move the cursor backwards: a last page may come without a next cursor.
            next_cursor = page.next_cursor if page.next_cursor is not None else cursor
            result = await self._db.store_download_page(
                self.tenant_id, batch, chunk_rows, next_cursor
            )
            failpoint("download.after_commit")
            r = self.report
            self.report = replace(
                r,
                pages=r.pages + 1,
                readings=r.readings + batch.num_rows,
                inserted=r.inserted + result.inserted,
                skipped=r.skipped + result.skipped,
                chunks=r.chunks + result.chunks,
                cursor=next_cursor,
            )
            log.debug(
                "tenant %s download page %d: %d readings, %d inserted, %d present, %d chunks",
                self.tenant_id,
                self.report.pages,
                batch.num_rows,
                result.inserted,
                result.skipped,
                result.chunks,
            )
            # No cursor, the same cursor, or a short page: the Client System has no more now.
            if page.next_cursor is None or page.next_cursor == cursor or len(readings) < page_size:
                break
            cursor = next_cursor

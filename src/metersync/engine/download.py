"""The download cycle of one tenant: Client System → sync database (spec §5).

One cycle, under the tenant's download lock::

    the Client System's profile (once): no download offered → an empty, successful cycle
    sizes from the tenant cache (once); cursor from sync_state
    loop: GET ≤ download_batch_size readings after the cursor (exclude_site=<this site> when
            the profile has a site filter, so a site never downloads back what it uploaded)
          → parsed and validated into an Arrow batch in one pass (remote/page.py; a page
            longer than asked is refused)
          → while the NEXT page is fetched and parsed, one transaction stores this one: binary
            COPY in chunks of upload_batch_size (rows already present are skipped; rows stored
            synchronized so they are never uploaded back) + the new cursor
    until the Client System has nothing more, the page budget is spent or a stop was requested.

A malformed or oversize page raises :class:`MalformedPageError`: nothing of it is written and
the cursor does not move, so the next cycle asks for the same page again (a page fetched ahead
is only ever stored after the one before it committed). A Client System that cannot be reached
ends the cycle with ``report.error`` set (pages committed so far stay).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Collection
from dataclasses import dataclass, replace
from typing import Any

import httpx
import pyarrow as pa

from metersync import observe
from metersync._failpoints import failpoint
from metersync.engine.cycle import CycleClock
from metersync.engine.ports import DownloadClient, DownloadStore
from metersync.engine.tenant_cache import TenantCache
from metersync.errors import (
    AuthError,
    BadRequestError,
    ClientSystemError,
    MalformedPageError,
)

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
    cycle (``None``: until the Client System has no more readings). ``unknown_fields``: page
    fields that are not columns of ``meter_reading`` and may be dropped (``None``: a page with
    one is refused; ``"all"``: drop any; or a collection of names).
    """

    def __init__(
        self,
        db: DownloadStore,
        client: DownloadClient,
        cache: TenantCache,
        *,
        tenant_id: int,
        max_pages: int | None = None,
        unknown_fields: Collection[str] | str | None = None,
    ) -> None:
        if max_pages is not None and max_pages < 1:
            raise ValueError(f"max_pages must be >= 1 or None, got {max_pages}")
        #: Page fields that are not columns and may be dropped (None: refuse them; "all").
        self.unknown_fields = unknown_fields
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
        clock = CycleClock(self._db)
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
            self.report = replace(self.report, **clock.totals())
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
            extra=observe.report_fields(r),
        )
        return r

    async def _cycle(self, page_size: int, chunk_rows: int) -> None:
        if not await self._offers_download():
            return
        layout = await self._db.layout()
        schema = layout.upload_schema
        exclude_site = await self._exclude_site()
        cursor = await self._db.get_download_cursor(self.tenant_id)
        self.report = replace(self.report, cursor=cursor)

        def fetch(after: str | None) -> asyncio.Task[Any]:
            task = asyncio.ensure_future(
                self._client.get_readings(
                    page_size,
                    after,
                    schema=schema,
                    tenant_id=self.tenant_id,
                    unknown_fields=self.unknown_fields,
                    exclude_site=exclude_site,
                )
            )
            return observe.timed(task, "download_page", self.tenant_id)

        if self._stop_requested:
            return
        ahead: asyncio.Task[Any] | None = fetch(cursor)
        try:
            while ahead is not None:
                task, ahead = ahead, None
                try:
                    page = await task
                except (AuthError, BadRequestError):
                    raise
                except MalformedPageError as exc:
                    raise MalformedPageError(
                        f"{exc} (page after cursor {cursor!r}; nothing written, cursor unchanged)"
                    ) from None
                except (ClientSystemError, httpx.HTTPError) as exc:
                    self.error_cause = exc
                    self.report = replace(
                        self.report,
                        error=f"fetching a page after cursor {cursor!r} failed "
                        f"({type(exc).__name__}: {exc}); the cursor did not move",
                    )
                    return
                failpoint("download.after_fetch_page")
                batch: pa.RecordBatch = page.batch
                # Never move the cursor backwards: a last page may come without a next cursor.
                next_cursor = page.next_cursor if page.next_cursor is not None else cursor
                if batch.num_rows == 0:
                    if next_cursor != cursor:
                        # An empty page that moves the cursor: a site filter skipped readings
                        # this site uploaded itself; remember where they end.
                        await self._db.store_download_page(
                            self.tenant_id, batch_of(schema), chunk_rows, next_cursor
                        )
                        self.report = replace(self.report, cursor=next_cursor)
                    return
                # No cursor, the same cursor, or a short page: the Client System has no more
                # now. Otherwise fetch (and parse) the next page while this one is written.
                more = not (
                    page.next_cursor is None
                    or page.next_cursor == cursor
                    or batch.num_rows < page_size
                )
                if (
                    more
                    and not self._stop_requested
                    and (self.max_pages is None or self.report.pages + 1 < self.max_pages)
                ):
                    ahead = fetch(next_cursor)
                await self._store(batch, chunk_rows, next_cursor)
                cursor = next_cursor
                if self._stop_requested and ahead is not None:
                    break
        finally:
            if ahead is not None:
                ahead.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await ahead

    async def _store(self, batch: pa.RecordBatch, chunk_rows: int, next_cursor: str | None) -> None:
        """One page and its cursor in one transaction; the report follows."""
        copy_started = time.perf_counter()
        result = await self._db.store_download_page(self.tenant_id, batch, chunk_rows, next_cursor)
        observe.phase("copy", self.tenant_id, time.perf_counter() - copy_started)
        observe.readings("downloaded", self.tenant_id, result.inserted)
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

    async def _offers_download(self) -> bool:
        """False (said once per process and Client System) when its profile has no download."""
        profile_of = getattr(self._client, "profile", None)
        if profile_of is None:  # a stand-in client without profiles: assume the contract
            return True
        try:
            profile = await profile_of()
        except (ClientSystemError, httpx.HTTPError) as exc:
            self.error_cause = exc
            self.report = replace(
                self.report,
                error=f"asking the Client System for its profile failed "
                f"({type(exc).__name__}: {exc})",
            )
            return False
        if profile.download:
            return True
        where = getattr(self._client, "base_url", "?")
        if where not in _TOLD_NO_DOWNLOAD:
            _TOLD_NO_DOWNLOAD.add(where)
            log.warning(
                "this Client System offers no download (profile %s at %s): download skipped",
                profile.name,
                where,
            )
        return False

    async def _exclude_site(self) -> str | None:
        """This site's id when the Client System filters by site (never download back what this
        site uploaded), else None."""
        profile_of = getattr(self._client, "profile", None)
        if profile_of is None:
            return None
        profile = await profile_of()
        site = getattr(self._client, "site_id", None)
        return site if profile.site_filter and site else None


#: Client Systems (base URLs) already reported as offering no download, so that it is said once.
_TOLD_NO_DOWNLOAD: set[str] = set()


def batch_of(schema: pa.Schema) -> pa.RecordBatch:
    """An empty record batch of ``schema`` (a cursor-only page)."""
    return pa.RecordBatch.from_pylist([], schema=schema)

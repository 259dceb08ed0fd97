"""The download cycle of one tenant: Client System → sync database (spec §5).

One cycle, under the tenant's download lock::

    the Client System's profile (once): no download offered → an empty, successful cycle
    sizes from the tenant cache (once); cursor from sync_state
    a fetcher: GET ≤ download_batch_size readings after the cursor (exclude_site=<this site>
            when the profile has a site filter, so a site never downloads back what it
            uploaded) → parsed and validated into an Arrow batch in one pass (remote/page.py;
            a page longer than asked is refused) → waits for the writer; the next page is
            fetched at once, up to UNIT_PAGES pages ahead
    the writer: the pages waiting (at least one, at most UNIT_PAGES) in ONE transaction:
            binary COPY in chunks of upload_batch_size (rows already present are skipped;
            rows stored synchronized so they are never uploaded back) + the last page's cursor
    until the Client System has nothing more, the page budget is spent or a stop was requested.

A malformed or oversize page raises :class:`MalformedPageError`: nothing of it is written and
the cursor does not move, so the next cycle asks for the same page again (the pages before it
are stored; a page fetched ahead is only ever stored with or after the ones before it). A
Client System that cannot be reached ends the cycle with ``report.error`` set (pages committed
so far stay).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import httpx
import pyarrow as pa
import pyarrow.compute as pc

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
from metersync.remote.page import peek_page

if TYPE_CHECKING:
    from metersync.store.schema import TableLayout
    from metersync.store.values import EncodedRows

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
    one is refused; ``"all"``: drop any; or a collection of names). ``second_writer``: store a
    unit of pages on a second session of the sync database while the lock's session commits
    the one before (cursors still commit in page order); ``False``: one session only.
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
        second_writer: bool = True,
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
        #: Store a unit on a second session while the first commits the unit before (opened
        #: only when a cycle has a unit ready while another is being stored).
        self.second_writer = second_writer
        self._stop_requested = False
        self._check_present = True
        self._second_statements = 0
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
        self._second_statements = 0
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
            self.report = replace(self.report, **clock.totals(self._second_statements))
        r = self.report
        level = logging.WARNING if r.error else logging.INFO
        if not log.isEnabledFor(level):  # the fields below cost ~0.1 ms: not for nothing
            return r
        log.log(
            level,
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
        if self._stop_requested:
            return

        def fetch(after: str | None, on_body: Callable[[bytes], None]) -> asyncio.Task[Any]:
            task = asyncio.ensure_future(
                self._client.get_readings(
                    page_size,
                    after,
                    schema=schema,
                    tenant_id=self.tenant_id,
                    unknown_fields=self.unknown_fields,
                    exclude_site=exclude_site,
                    on_body=on_body,
                )
            )
            return observe.timed(task, "download_page", self.tenant_id)

        # The fetcher runs ahead of the writer by at most UNIT_PAGES pages: the Client System's
        # latency and the parse hide behind the COPY, and the pages waiting when the writer is
        # free are stored in one transaction (one existing-id check, one commit).
        waiting: asyncio.Queue[_Fetched] = asyncio.Queue(maxsize=UNIT_PAGES)
        fetcher = asyncio.ensure_future(
            self._fetch_pages(waiting, fetch, cursor, page_size, layout, chunk_rows)
        )
        # The first unit is checked for readings already stored (a replayed page, a cycle that
        # resumes after a crash); after a unit that had none, the next goes straight in (if one
        # is present after all, the store redoes that unit through a staging table).
        self._check_present = True
        # Units being stored, oldest first: at most one per writer. A second writer (its own
        # session, opened when a unit is ready while another is still being stored) COPYs
        # while the first commits; cursors still commit in page order (_store).
        stores: deque[_Store] = deque()
        second: Any = None
        second_tried = False
        try:
            while True:
                unit = [await waiting.get()]
                while not unit[-1].last and not waiting.empty() and len(unit) < UNIT_PAGES:
                    unit.append(waiting.get_nowait())
                pages = [f for f in unit if f.moves]
                if pages:
                    if stores and not second_tried and self.second_writer:
                        second_tried = True
                        second = await self._open_second_writer()
                    width = 2 if second is not None else 1
                    while len(stores) >= width or (stores and _shares_ids(stores[-1], pages)):
                        # (a reading in both units: the later waits, or its COPY would wait
                        # on the earlier's uncommitted row while the earlier waits for nothing)
                        await stores.popleft().task
                    writer = (
                        second
                        if second is not None and stores and stores[-1].writer is self._db
                        else self._db
                    )
                    previous = stores[-1].task if stores else None
                    task = asyncio.ensure_future(self._store(writer, pages, previous))
                    stores.append(_Store(task, writer, pages))
                end = unit[-1]
                if end.error is not None or end.last or self._stop_requested:
                    while stores:  # what was handed to the writers commits (or raises)
                        await stores.popleft().task
                    if end.error is not None:
                        self._fetch_failed(end.error, end.after)
                    return
        finally:
            fetcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await fetcher
            for store in stores:  # only after an error: a unit not yet committed rolls back
                store.task.cancel()
            for store in stores:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await store.task
            if second is not None:
                self._second_statements += second.statements
                with contextlib.suppress(Exception):
                    await second.close()

    async def _open_second_writer(self) -> Any:
        """The second session that stores units alongside this one (``None``: there is none —
        an adapter without :meth:`~metersync.store.database.SyncDatabase.download_writer`, no
        DSN, or it could not be opened; the units are then stored one after the other)."""
        open_writer = getattr(self._db, "download_writer", None)
        if open_writer is None:
            return None
        try:
            return await open_writer()
        except Exception as exc:  # the overlap is an optimisation: carry on without it
            log.warning(
                "tenant %s: no second database connection for the download (%s: %s); storing "
                "on the lock's connection only",
                self.tenant_id,
                type(exc).__name__,
                exc,
            )
            return None

    async def _fetch_pages(
        self,
        waiting: asyncio.Queue[_Fetched],
        fetch: Callable[[str | None, Callable[[bytes], None]], asyncio.Task[Any]],
        cursor: str | None,
        page_size: int,
        layout: TableLayout,
        chunk_rows: int,
    ) -> None:
        """Fetch, parse and encode pages one after the other from ``cursor`` into ``waiting``,
        until the Client System has no more, the page budget is spent, a stop was requested or
        a fetch failed. The last item put says so (``last``; ``error`` when a fetch failed).

        The next page is asked for as soon as this one's bytes arrive, with the cursor they
        END with (:func:`~metersync.remote.page.peek_page`, a hint), so it travels while this
        one is parsed; when the parse says otherwise (another cursor, a short page) that
        request is dropped and, if there is a next page, it is asked for with the parsed one.
        """
        fetched = 0
        # Pages asked for on a hint, by the cursor they start after, in chain order: each
        # guessed page's own body asks for the one after it, up to PAGES_AHEAD, so the pages'
        # parses (worker threads, GIL released) overlap instead of taking turns.
        guesses: dict[str | None, asyncio.Task[Any]] = {}

        def on_body(after: str | None) -> Callable[[bytes], None]:
            def ask_next(body: bytes) -> None:
                hint = peek_page(body)
                if hint is None or len(guesses) >= PAGES_AHEAD:
                    return
                guess, readings = hint
                if guess is None or guess == after or readings < page_size or guess in guesses:
                    return  # no more after this page, by its own account
                if self._stop_requested or (
                    self.max_pages is not None and fetched + len(guesses) + 2 > self.max_pages
                ):
                    return
                guesses[guess] = start(guess)

            return ask_next

        def start(after: str | None) -> asyncio.Task[tuple[Any, EncodedRows]]:
            """The page after ``after``, fetched, parsed and encoded for COPY (in worker
            threads, GIL released: a page ahead is encoded while this one is handed on)."""

            async def fetched_and_encoded() -> tuple[Any, EncodedRows]:
                page = await fetch(after, on_body(after))
                encoded = await asyncio.to_thread(
                    self._db.encode_download_page, layout, self.tenant_id, page.batch, chunk_rows
                )
                return page, encoded

            return asyncio.ensure_future(fetched_and_encoded())

        task = start(cursor)
        try:
            while True:
                try:
                    page, encoded = await task
                    failpoint("download.after_fetch_page")
                    batch: pa.RecordBatch = page.batch
                except Exception as exc:  # handed to the writer, which decides (_fetch_failed)
                    await waiting.put(_Fetched(None, cursor, cursor, last=True, error=exc))
                    return
                fetched += 1
                # Never move the cursor backwards: a last page may come without a next cursor.
                next_cursor = page.next_cursor if page.next_cursor is not None else cursor
                # No cursor, the same cursor, or a short page: the Client System has no more
                # now. (An empty page that moves the cursor: a site filter skipped readings
                # this site uploaded itself; storing it remembers where they end.)
                last = (
                    page.next_cursor is None
                    or page.next_cursor == cursor
                    or batch.num_rows < page_size
                    or self._stop_requested
                    or (self.max_pages is not None and fetched >= self.max_pages)
                )
                await waiting.put(_Fetched(encoded, cursor, next_cursor, last=last))
                if last:
                    return
                cursor = next_cursor
                guessed = guesses.pop(cursor, None)
                if guessed is None:  # a hint the parse contradicted, and the chain after it
                    _drop(guesses.values())
                    guesses.clear()
                task = guessed if guessed is not None else start(cursor)
        finally:
            _drop([task, *guesses.values()])

    def _fetch_failed(self, exc: BaseException, cursor: str | None) -> None:
        """A fetch after ``cursor`` failed (the pages before it are committed): raise what the
        caller must see, or end the cycle with ``report.error`` when the Client System could
        not be reached."""
        if isinstance(exc, (AuthError, BadRequestError)):
            raise exc
        if isinstance(exc, MalformedPageError):
            raise MalformedPageError(
                f"{exc} (page after cursor {cursor!r}; nothing written, cursor unchanged)"
            ) from None
        if isinstance(exc, (ClientSystemError, httpx.HTTPError)):
            self.error_cause = exc
            self.report = replace(
                self.report,
                error=f"fetching a page after cursor {cursor!r} failed "
                f"({type(exc).__name__}: {exc}); the cursor did not move",
            )
            return
        raise exc

    async def _store(
        self, writer: Any, pages: list[_Fetched], previous: asyncio.Task[None] | None
    ) -> None:
        """Pages and the last one's cursor in one transaction on ``writer``, the cursor only
        after ``previous`` (the unit before, on the other writer) committed; the report
        follows. A unit whose predecessor failed writes nothing and fails too."""
        encoded = [f.page for f in pages if f.page is not None]
        rows = sum(p.num_rows for p in encoded)
        stored_pages = sum(1 for p in encoded if p.num_rows)
        next_cursor = pages[-1].next_cursor

        async def in_page_order() -> None:
            if previous is not None:
                # Bounded: should the unit before wait on a third session that waits on this
                # one's rows, this one gives up (and rolls back) instead of waiting forever.
                await asyncio.wait_for(asyncio.shield(previous), PREVIOUS_UNIT_TIMEOUT)

        copy_started = time.perf_counter()
        result = await writer.store_download_pages(
            self.tenant_id,
            encoded,
            next_cursor,
            check_present=self._check_present,
            before_cursor=in_page_order if previous is not None else None,
            held_by=(
                None if writer is self._db else self._db.lock_holder(self.tenant_id, "download")
            ),
        )
        observe.phase("copy", self.tenant_id, time.perf_counter() - copy_started)
        observe.readings("downloaded", self.tenant_id, result.inserted)
        failpoint("download.after_commit")
        r = self.report
        self.report = replace(
            r,
            pages=r.pages + stored_pages,
            readings=r.readings + rows,
            inserted=r.inserted + result.inserted,
            skipped=r.skipped + result.skipped,
            chunks=r.chunks + result.chunks,
            cursor=next_cursor,
        )
        self._check_present = result.skipped > 0
        log.debug(
            "tenant %s download: %d page(s) in one transaction (%d in all): %d readings, "
            "%d inserted, %d present, %d chunks",
            self.tenant_id,
            stored_pages,
            self.report.pages,
            rows,
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


#: Seconds a unit waits for the unit before it to commit before giving up (rolled back).
PREVIOUS_UNIT_TIMEOUT = 120.0

#: Pages asked for ahead of the one being parsed, on the cursor hints of their predecessors'
#: bodies (3: the next page's parse starts while this one's runs; more only holds memory).
PAGES_AHEAD = 3

#: Pages fetched ahead of the writer at most; the writer stores the pages waiting (up to this
#: many) in one transaction with the last one's cursor.
UNIT_PAGES = 4


@dataclass(frozen=True, slots=True)
class _Fetched:
    """A page fetched after cursor ``after`` (``page``, encoded; ``None`` when the fetch failed
    with ``error``), the cursor stored with it, and whether it is the last of the cycle."""

    page: EncodedRows | None
    after: str | None
    next_cursor: str | None
    last: bool
    error: BaseException | None = None

    @property
    def moves(self) -> bool:
        """True when storing it writes something: readings, or a cursor further on."""
        if self.page is None:
            return False
        return self.page.num_rows > 0 or self.next_cursor != self.after


@dataclass(frozen=True, slots=True)
class _Store:
    """A unit being stored: its task, the session it runs on, its pages."""

    task: asyncio.Task[None]
    writer: Any
    pages: list[_Fetched]


def _drop(tasks: Collection[asyncio.Task[Any]]) -> None:
    """Cancel fetches no longer wanted; their outcome (even an error) is of no interest."""
    for task in tasks:
        task.cancel()
        task.add_done_callback(lambda t: t.cancelled() or t.exception())


def _shares_ids(store: _Store, pages: list[_Fetched]) -> bool:
    """True when a reading of ``pages`` is also in the unit ``store`` is writing."""
    mine = [f.page.batch.column("meter_reading_id") for f in store.pages if f.page is not None]
    theirs = [f.page.batch.column("meter_reading_id") for f in pages if f.page is not None]
    if not mine or not theirs:
        return False
    value_set = pa.concat_arrays(mine)
    return any(pc.any(pc.is_in(ids, value_set=value_set)).as_py() for ids in theirs)


#: Client Systems (base URLs) already reported as offering no download, so that it is said once.
_TOLD_NO_DOWNLOAD: set[str] = set()


def batch_of(schema: pa.Schema) -> pa.RecordBatch:
    """An empty record batch of ``schema`` (a cursor-only page)."""
    return pa.RecordBatch.from_pylist([], schema=schema)

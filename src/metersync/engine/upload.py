"""The upload cycle of one tenant: sync database → Client System (spec §4).

One cycle, under the tenant's upload lock::

    sizes from the tenant cache (once)
    loop: fetch ≤ upload_batch_size oldest pending readings (Arrow)
          → JSON body (codec) → POST with a stable Idempotency-Key
          → ONE UPDATE marking the confirmed readings synchronized
          → ONE UPDATE recording the individually rejected ones (if any)
    until the queue is empty, the budget (batches, seconds) is spent, or a stop was requested.

Overlap and the in-flight window: up to ``max_in_flight`` POSTs of one tenant are on the wire at
once (default 2: the reference Client System spends ~40 % of a request in PostgreSQL, so two
requests overlap well). The oldest flight is always settled first (FIFO), and while POSTs are in
flight the next batch is fetched and encoded and the settled one is marked. Every fetch excludes
the ids rejected earlier in the cycle (``failed`` but still in the queue until quarantined) and
the ids of every batch in flight or answered but not yet marked, so no reading is ever in two
batches of one cycle; across processes the per-tenant advisory lock does the same job. A reading
is marked only after the answer to the batch that carried it confirmed it.

Failure rules (spec §4): a batch that fails as a whole (retries spent on timeouts, connection
errors, 408/429/5xx, or an answer whose counts do not add up) marks nothing, does not touch
``retry_count`` and ends the cycle with ``report.error`` set; the readings go again next cycle.
A refused key (401/403), a 413 or a 400 raise, because only an operator can fix them. A marking
failure after a successful POST is logged and ends the cycle; the readings go up again next
cycle and the Client System counts them as duplicates (same Idempotency-Key too).

When the cycle ends early on such an error, the *other* POSTs still in flight are cancelled and
marked nothing (even if the Client System stored them: the next cycle's re-send is counted as
duplicates and marked then). A stop request, a spent budget or a failed fetch only stop new
POSTs: the flights already started are awaited and marked one by one, oldest first.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Protocol

import httpx
import pyarrow as pa
import pyarrow.compute as pc

from metersync import codec
from metersync._failpoints import failpoint
from metersync.engine.tenant_cache import TenantCache
from metersync.errors import (
    AuthError,
    BadRequestError,
    ClientSystemError,
    InconsistentResponseError,
    PayloadTooLargeError,
)

__all__ = ["MeterReadingUploadManager", "UploadReport", "idempotency_key"]

log = logging.getLogger(__name__)

ID_COLUMN = "meter_reading_id"


@dataclass(frozen=True, slots=True)
class UploadReport:
    """What one upload cycle did.

    ``confirmed`` = readings marked synchronized (``inserted + duplicates`` as the Client System
    counted them); ``rejected`` = readings the Client System refused one by one (marked
    ``failed``); ``quarantined`` = of those, how many reached ``max_retries`` in this cycle;
    ``statements`` = SQL statements the sync database saw during the cycle; ``error`` = why the
    cycle ended early (``None`` when the queue was drained or the budget spent).
    """

    tenant_id: int
    upload_batch_size: int = 0
    batches: int = 0
    readings_sent: int = 0
    confirmed: int = 0
    inserted: int = 0
    duplicates: int = 0
    rejected: int = 0
    quarantined: int = 0
    statements: int = 0
    seconds: float = 0.0
    error: str | None = None

    @property
    def success(self) -> bool:
        """True when the cycle ended without an error."""
        return self.error is None

    @property
    def readings_per_second(self) -> float:
        """Readings sent per second of the cycle."""
        return self.readings_sent / self.seconds if self.seconds > 0 else 0.0


class _Result(Protocol):
    inserted: int
    duplicates: int
    rejected: dict[str, str]


def idempotency_key(tenant_id: int, ids: pa.Array) -> str:
    """The batch's Idempotency-Key: a digest of its sorted reading ids, the same on every retry.

    Sorted so that the same set of readings gets the same key whatever order a later fetch
    returns them in (a re-send after a failed mark is then recognised by the Client System).
    """
    digest = hashlib.sha256(b"".join(sorted(ids.to_pylist())))
    return f"ms1-{tenant_id}-{digest.hexdigest()[:40]}"


@dataclass(slots=True)
class _Flight:
    """A batch whose POST has started."""

    batch: pa.RecordBatch
    body: bytes
    ids: pa.Array
    batch_no: int
    task: asyncio.Future[Any]
    started: float


class _Stop(Exception):
    """Internal: end the cycle with ``error`` set in the report."""


class MeterReadingUploadManager:
    """Runs upload cycles for one tenant.

    ``db`` is a :class:`~metersync.store.database.SyncDatabase`; ``client`` a
    :class:`~metersync.remote.client.ClientSystemApiClient` holding the tenant's key; ``cache`` the
    :class:`TenantCache` the batch size comes from (read once per cycle). ``max_retries`` is the
    number of individual rejections after which a reading is quarantined. ``max_batches`` and
    ``max_seconds`` bound the number of batches one cycle starts (``None``: until the queue is
    empty). ``overlap`` fetches, encodes and marks while POSTs are in flight, with up to
    ``max_in_flight`` POSTs on the wire at once (1: one at a time); without ``overlap`` every
    step waits for the previous one and ``max_in_flight`` does not matter.

    When another worker holds the tenant's upload lock, :meth:`upload` raises
    :class:`TenantBusyError` at once without touching anything: two uploaders never send the
    same reading at the same time, and the caller decides whether that is worth a log line.
    """

    def __init__(
        self,
        db: Any,
        client: Any,
        cache: TenantCache,
        *,
        tenant_id: int,
        max_retries: int = 5,
        max_batches: int | None = None,
        max_seconds: float | None = None,
        overlap: bool = True,
        max_in_flight: int = 2,
    ) -> None:
        if max_retries < 1:
            raise ValueError(f"max_retries must be >= 1, got {max_retries}")
        if max_batches is not None and max_batches < 1:
            raise ValueError(f"max_batches must be >= 1 or None, got {max_batches}")
        if max_seconds is not None and max_seconds <= 0:
            raise ValueError(f"max_seconds must be > 0 or None, got {max_seconds}")
        if (
            isinstance(max_in_flight, bool)
            or not isinstance(max_in_flight, int)
            or max_in_flight < 1
        ):
            raise ValueError(f"max_in_flight must be an int >= 1, got {max_in_flight!r}")
        self._db = db
        self._client = client
        self._cache = cache
        self.tenant_id = tenant_id
        self.max_retries = max_retries
        self.max_batches = max_batches
        self.max_seconds = max_seconds
        self.overlap = overlap
        self.max_in_flight = max_in_flight
        self._stop_requested = False
        #: The report of the cycle running now or of the last one (also after it raised).
        self.report = UploadReport(tenant_id=tenant_id)
        #: The exception behind ``report.error`` (its type says what failed), else ``None``.
        self.error_cause: BaseException | None = None

    def request_stop(self) -> None:
        """Start no new batch; finish those in flight (POST and mark), then end the cycle.

        Idempotent."""
        self._stop_requested = True

    async def upload(self) -> UploadReport:
        """Run one upload cycle and return its report (see the module docstring for failures).

        Raises :class:`TenantBusyError` when another worker is uploading this tenant,
        :class:`AuthError` (401/403), :class:`PayloadTooLargeError` (413) and
        :class:`BadRequestError` (400) — each after releasing the lock, with no reading touched
        by the failing batch. ``self.report`` holds the counts up to that point.
        """
        self._stop_requested = False
        started = time.perf_counter()
        statements0 = self._db.statements
        self.report = UploadReport(tenant_id=self.tenant_id)
        self.error_cause = None
        settings = await self._cache.get(self.tenant_id)
        size = settings.batch.upload_batch_size
        self.report = replace(self.report, upload_batch_size=size)
        try:
            async with self._db.tenant_lock(self.tenant_id, "upload"):  # or TenantBusyError
                try:
                    await self._cycle(size, started)
                except _Stop as stop:
                    self.report = replace(self.report, error=str(stop))
                    # The typed cause (exit codes and the scheduler's policy use the type).
                    self.error_cause = stop.__cause__ or stop
        finally:
            self.report = replace(
                self.report,
                statements=self._db.statements - statements0,
                seconds=time.perf_counter() - started,
            )
        r = self.report
        log.log(
            logging.WARNING if r.error else logging.INFO,
            "tenant %s upload: %d batches, %d readings (%d inserted, %d duplicates, "
            "%d rejected, %d quarantined), %d statements, %.3f s%s",
            self.tenant_id,
            r.batches,
            r.readings_sent,
            r.inserted,
            r.duplicates,
            r.rejected,
            r.quarantined,
            r.statements,
            r.seconds,
            f"; ended early: {r.error}" if r.error else "",
        )
        return r

    # -- the cycle -----------------------------------------------------------------------------

    async def _fetch(self, size: int, exclude: list[bytes]) -> tuple[pa.RecordBatch, bytes]:
        batch = await self._db.fetch_unsynchronized(
            self.tenant_id,
            size,
            max_retries=self.max_retries,
            exclude=pa.array(exclude, type=pa.binary(16)) if exclude else None,
        )
        if batch.num_rows > size:  # a broken adapter must not make us exceed the tenant's size
            raise RuntimeError(
                f"fetch_unsynchronized returned {batch.num_rows} rows for a limit of {size}"
            )
        failpoint("upload.after_fetch")
        body = codec.json_rows(batch) if batch.num_rows else b"[]"
        return batch, body

    def _may_start(self, started: float, batches_started: int) -> bool:
        """Whether another batch may be sent (stop request, batch and time budget)."""
        if self._stop_requested:
            return False
        if self.max_batches is not None and batches_started >= self.max_batches:
            return False
        return self.max_seconds is None or time.perf_counter() - started < self.max_seconds

    def _start_post(self, batch: pa.RecordBatch, body: bytes, batch_no: int) -> _Flight:
        ids = batch.column(ID_COLUMN)
        key = idempotency_key(self.tenant_id, ids)
        failpoint("upload.before_post")
        task = asyncio.ensure_future(
            self._client.post_batch(body, batch.num_rows, idempotency_key=key)
        )
        return _Flight(batch, body, ids, batch_no, task, time.perf_counter())

    async def _cycle(self, size: int, started: float) -> None:
        """The batch loop around a FIFO window of at most ``W`` POSTs: 1 until the first
        answer of the cycle was good, then ``N = max_in_flight``.

        ::

            fill:    while < W in flight and may start: fetch (excluding) → start POST
            overlap: fetch+encode the next batch while the window is on the wire
            settle:  await the OLDEST POST → check its answer
            refill:  start the prefetched batch (the wire stays busy) → mark the oldest

            N=2:  POST k   ───────────┐ POST k+2 ────────────
                  POST k+1 ──────────────────────┐
                  fetch k+2 ──┘  mark k ── fetch k+3 ──┘ mark k+1 ...

        Every fetch excludes the ids in the window and those rejected in this cycle; the only
        answered-but-unmarked batch is the oldest, between its settle and its mark, and no fetch
        runs then (the refill uses a batch fetched while it was still in the window). Without
        ``overlap``: N=1, no prefetch, so fetch → POST → mark strictly one after the other.
        """
        # One POST until the Client System has answered one batch of this cycle well: a wrong
        # key, a 413 or a 400 then costs a single request, as with one POST at a time.
        width = 1
        rejected_ids: list[bytes] = []  # rejected in this cycle: not fetched again until next
        window: deque[_Flight] = deque()  # POSTs started and not yet settled, oldest first
        count = 0  # batches started (the batch budget)
        drained = False  # a fetch came back empty: the queue (minus exclusions) is done
        fetch_error: Exception | None = None  # stops new POSTs; raised once the window is done

        def may_start() -> bool:
            return not drained and fetch_error is None and self._may_start(started, count)

        async def fetch() -> tuple[pa.RecordBatch, bytes] | None:
            """The next batch to send, or ``None`` when there is none (or the fetch failed
            while POSTs are in flight: those are settled first, then the cycle stops)."""
            nonlocal drained, fetch_error
            exclude = rejected_ids + [i for f in window for i in f.ids.to_pylist()]
            try:
                batch, body = await self._fetch(size, exclude)
            except Exception as exc:
                if not window:
                    raise
                log.warning(
                    "tenant %s: fetching the next batch failed (%s: %s); settling the %d "
                    "batches in flight, then ending the cycle",
                    self.tenant_id,
                    type(exc).__name__,
                    exc,
                    len(window),
                )
                fetch_error = exc
                return None
            if not batch.num_rows:
                drained = True
                return None
            return batch, body

        def start(prepared: tuple[pa.RecordBatch, bytes]) -> None:
            nonlocal count
            count += 1
            window.append(self._start_post(*prepared, count))

        try:
            while True:
                while len(window) < width and may_start():  # fill
                    prepared = await fetch()
                    # Asked again: a stop or the time budget may have come during the fetch.
                    if prepared is not None and may_start():
                        start(prepared)
                if not window:
                    break
                prefetched = await fetch() if self.overlap and may_start() else None
                oldest = window[0]
                result = await self._await_post(oldest)
                window.popleft()
                failpoint("upload.after_post")
                confirmed_ids, rejected = self._check_answer(oldest, result)
                if self.overlap:
                    width = self.max_in_flight  # the key and the body shape work: open up
                if prefetched is not None and self._may_start(started, count):
                    start(prefetched)  # before marking, so the wire stays busy
                await self._mark(oldest, result, confirmed_ids, rejected, rejected_ids)
            if fetch_error is not None:
                raise _Stop(
                    f"fetching the next batch failed: {type(fetch_error).__name__}: {fetch_error}"
                ) from fetch_error
        finally:
            await self._settle_abandoned(list(window))

    async def _settle_abandoned(self, flights: list[_Flight]) -> None:
        """POSTs still open when the cycle ends early (an error elsewhere): cancel them and
        mark nothing. Their readings stay pending; if the Client System stored them anyway, the
        next cycle's re-send is counted as duplicates and marked then."""
        open_flights = [f for f in flights if not f.task.done()]
        if not open_flights:
            return
        for flight in open_flights:
            flight.task.cancel()
        await asyncio.gather(*(f.task for f in open_flights), return_exceptions=True)
        for flight in open_flights:
            log.warning(
                "tenant %s: batch %d was in flight when the cycle ended early; not marked, its "
                "%d readings go again next cycle",
                self.tenant_id,
                flight.batch_no,
                flight.batch.num_rows,
            )

    async def _await_post(self, flight: _Flight) -> _Result:
        n = flight.batch.num_rows
        where = f"tenant {self.tenant_id}: batch of {n} readings"
        try:
            return await flight.task
        except AuthError as exc:
            raise AuthError(
                f"{where}: the Client System refused the API key (HTTP {exc.status}); "
                "upload stopped, no reading was marked. Check the tenant's api_key.",
                status=exc.status,
            ) from exc
        except PayloadTooLargeError as exc:
            raise PayloadTooLargeError(
                f"{where} ({len(flight.body)} bytes) is larger than the Client System accepts "
                f"(HTTP 413); lower the tenant's upload_batch_size "
                f"(metersync tenant set {self.tenant_id} --upload-batch-size N). "
                "No reading was marked.",
                status=exc.status,
            ) from exc
        except BadRequestError as exc:
            raise BadRequestError(
                f"{where}: the Client System refused the body as malformed (HTTP 400): {exc}. "
                "No reading was marked.",
                status=exc.status,
            ) from exc
        except (ClientSystemError, httpx.HTTPError) as exc:
            # Retries spent (timeouts, connection errors, 408/429/5xx) or counts that do not
            # add up: the whole batch failed. Nothing is marked, retry_count is not touched.
            # (httpx errors should arrive wrapped by the client; never mark on one either way.)
            raise _Stop(
                f"{where} failed as a whole ({type(exc).__name__}: {exc}); "
                "nothing marked, the readings stay pending"
            ) from exc

    def _check_answer(self, flight: _Flight, result: _Result) -> tuple[pa.Array, dict[str, str]]:
        """The ids to mark synchronized and the rejections; ``_Stop`` if the answer is odd."""
        ids = flight.ids
        n = flight.batch.num_rows
        rejected = dict(result.rejected or {})
        confirmed_ids = ids
        if rejected:
            try:
                rej_bytes = [uuid.UUID(s).bytes for s in rejected]
            except (ValueError, TypeError, AttributeError):
                rej_bytes = []
            if len(rej_bytes) != len(rejected) or not set(rej_bytes) <= set(ids.to_pylist()):
                raise _Stop(
                    f"tenant {self.tenant_id}: batch {flight.batch_no}: the Client System "
                    "rejected ids that were not in the batch; answer treated as failed, "
                    "nothing marked"
                ) from InconsistentResponseError("rejected ids outside the batch")
            value_set = pa.array(rej_bytes, type=pa.binary(16))
            confirmed_ids = pc.filter(ids, pc.invert(pc.is_in(ids, value_set=value_set)))
        if result.inserted + result.duplicates != len(confirmed_ids):
            raise _Stop(
                f"tenant {self.tenant_id}: batch {flight.batch_no}: counts do not add up "
                f"({result.inserted} inserted + {result.duplicates} duplicates + "
                f"{len(rejected)} rejected != {n} sent); nothing marked"
            ) from InconsistentResponseError("counts do not add up")
        return confirmed_ids, rejected

    async def _mark(
        self,
        flight: _Flight,
        result: _Result,
        confirmed_ids: pa.Array,
        rejected: dict[str, str],
        rejected_ids: list[bytes],
    ) -> None:
        """Mark what the Client System confirmed and record what it rejected (ONE statement
        each)."""
        n = flight.batch.num_rows
        confirmed = len(confirmed_ids)
        quarantined = 0
        try:
            if confirmed:
                failpoint("upload.before_mark")
                marked = await self._db.mark_synchronized(self.tenant_id, confirmed_ids)
                failpoint("upload.after_mark")
                if marked != confirmed:
                    log.warning(
                        "tenant %s: batch %d: %d readings confirmed but %d newly marked "
                        "(marked meanwhile by another worker or a previous cycle?)",
                        self.tenant_id,
                        flight.batch_no,
                        confirmed,
                        marked,
                    )
            if rejected:
                texts = [str(uuid.UUID(s)) for s in rejected]
                quarantined = await self._mark_rejected(texts, list(rejected.values()))
                rejected_ids.extend(uuid.UUID(s).bytes for s in rejected)
        except Exception as exc:
            self._count(n, confirmed=0, inserted=0, duplicates=0, rejected=0, quarantined=0)
            log.error(
                "tenant %s: batch %d was accepted by the Client System but marking it failed "
                "(%s: %s); its readings go up again next cycle and count as duplicates",
                self.tenant_id,
                flight.batch_no,
                type(exc).__name__,
                exc,
            )
            raise _Stop(
                f"marking batch {flight.batch_no} failed: {type(exc).__name__}: {exc}"
            ) from exc
        self._count(
            n,
            confirmed=confirmed,
            inserted=result.inserted,
            duplicates=result.duplicates,
            rejected=len(rejected),
            quarantined=quarantined,
        )
        log.debug(
            "tenant %s upload batch %d: %d sent, %d inserted, %d duplicates, %d rejected "
            "(%d quarantined), %.3f s since the POST started",
            self.tenant_id,
            flight.batch_no,
            n,
            result.inserted,
            result.duplicates,
            len(rejected),
            quarantined,
            time.perf_counter() - flight.started,
        )

    async def _mark_rejected(self, ids: list[str], errors: list[str]) -> int:
        """Record individual rejections (ONE statement); return how many are now quarantined."""
        result = await self._db.mark_rejected(self.tenant_id, ids, errors, self.max_retries)
        return int(getattr(result, "quarantined", 0))

    def _count(
        self,
        n: int,
        *,
        confirmed: int,
        inserted: int,
        duplicates: int,
        rejected: int,
        quarantined: int,
    ) -> None:
        r = self.report
        self.report = replace(
            r,
            batches=r.batches + 1,
            readings_sent=r.readings_sent + n,
            confirmed=r.confirmed + confirmed,
            inserted=r.inserted + inserted,
            duplicates=r.duplicates + duplicates,
            rejected=r.rejected + rejected,
            quarantined=r.quarantined + quarantined,
        )

"""The upload cycle of one tenant: sync database → Client System (spec §4, issue 10).

One cycle, under the tenant's upload lock::

    profile of the Client System (negotiated once per client: idempotent or not, body limit)
    sizes from the tenant cache (once)
    loop: fetch ≤ upload_batch_size oldest queue readings (Arrow; after the last one fetched)
          → split below the profile's body limit (codec sizes) → JSON body per profile (codec)
          → POST → ONE UPDATE marking the confirmed readings synchronized (idempotent
            profile: in the background, merged with the batches confirmed while the previous
            one ran — engine/marks.py; the cycle waits for every mark before it ends)
          → ONE UPDATE recording the individually rejected ones (if any)
    until the queue is empty, the budget (batches, seconds) is spent, or a stop was requested.

Two profiles (:mod:`metersync.remote.profiles`):

* **idempotent** (our ``metersync`` contract): the fetch is a plain ``COPY (SELECT ...)``; a
  batch whose outcome is unknown is simply sent again (same ``Idempotency-Key``), the server
  keeps one copy. Nothing is claimed.
* **not idempotent** (``metertrack``): the fetch *claims* the batch in the same statement
  (``COPY (UPDATE ... SET sync_status = 'in_doubt' ... RETURNING ...)``), committed before the
  POST. A confirmed batch is marked synchronized (the mark also ends the claim: no extra
  statement on the happy path). A failure that proves nothing was stored (connection refused,
  401/403, 400, 413, other 4xx, a 5xx saying the batch failed — after the client's retries)
  releases the readings back to the queue with their old status. An unknown outcome (read
  timeout, connection dropped after sending, another 5xx, an unreadable answer, a crash or a
  failed mark after the POST) leaves them ``in_doubt``: never resent automatically, shown by
  ``metersync status``, released by ``metersync resolve``
  (:func:`~metersync.engine.in_doubt.resolve_in_doubt`).
  MeterTrack's ``skipped`` readings name meters, not readings: a skip is attributed to a
  reading only when that is certain (every reading of the meter in the batch was skipped, e.g.
  its only one) — those take the failed → quarantine path; the readings of a meter with fewer
  errors than readings are held ``in_doubt`` with the server's words as ``last_error``; the
  readings of meters without errors are marked synchronized. A 400 whose field errors name
  readings (``readings[3].voltage_thd``) rejects exactly those; the rest of the batch is sent
  again at once (the 400 proves nothing was stored).

Within a cycle every fetch starts after the last reading fetched (a keyset bound
``(created_at, meter_reading_id) > (...)``, one index condition), so readings in flight or
rejected earlier in the cycle are never fetched twice, without an id list in the statement;
across processes the per-tenant advisory lock does that job. The idempotency key is a digest
of the batch's sorted id bytes (no Python object per id).

Overlap and the in-flight window: up to ``max_in_flight`` POSTs of one tenant are on the wire at
once (default 2). The oldest flight is always settled first (FIFO), and while POSTs are in
flight the settled one is marked and — idempotent profile only — the next batch is fetched and
encoded (in the claiming profile a batch is claimed right before its own POST, so that a crash
holds in doubt only batches that may have been sent).

Failure rules of the idempotent profile (spec §4): a batch that fails as a whole (retries spent
on timeouts, connection errors, 408/429/5xx, or an answer whose counts do not add up) marks
nothing, does not touch ``retry_count`` and ends the cycle with ``report.error`` set; the
readings go again next cycle. A refused key (401/403), a 413 or a 400 raise, because only an
operator can fix them. A marking failure after a successful POST is logged and ends the cycle;
the readings go up again next cycle and the Client System counts them as duplicates. When the
cycle ends early the *other* POSTs still in flight are cancelled and marked nothing. In the
non-idempotent profile they are awaited and settled instead (cancelling one would make its
outcome unknown).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.compute as pc

from metersync import codec, observe
from metersync._failpoints import failpoint
from metersync.engine.answers import Answer, OddAnswerError, attribute_skips, read_answer
from metersync.engine.cycle import CycleClock
from metersync.engine.in_doubt import (
    RESOLVE_MIN_HELD_SECONDS,
    HeldTooBrieflyError,
    ResolveResult,
    check_held_long_enough,
    resolve_in_doubt,
)
from metersync.engine.marks import Confirmed, GroupMarks, GroupShare, MarkFailedError, MarkQueue
from metersync.engine.ports import UploadClient, UploadStore
from metersync.engine.tenant_cache import TenantCache
from metersync.errors import (
    AuthError,
    BadRequestError,
    ClientSystemError,
    OutcomeUnknownError,
    PayloadTooLargeError,
)
from metersync.remote.profiles import METERSYNC, ClientProfile

__all__ = [
    "RESOLVE_MIN_HELD_SECONDS",
    "HeldTooBrieflyError",
    "MeterReadingUploadManager",
    "ResolveResult",
    "UploadReport",
    "check_held_long_enough",
    "idempotency_key",
    "resolve_in_doubt",
]

log = logging.getLogger(__name__)

ID_COLUMN = "meter_reading_id"


@dataclass(frozen=True, slots=True)
class UploadReport:
    """What one upload cycle did.

    ``confirmed`` = readings marked synchronized (``inserted + duplicates`` as the Client System
    counted them); ``rejected`` = readings the Client System refused one by one (marked
    ``failed``); ``quarantined`` = of those, how many reached ``max_retries`` in this cycle;
    ``in_doubt`` = readings whose outcome is unknown against a non-idempotent Client System,
    held ``sync_status = 'in_doubt'`` (never resent; ``metersync resolve``); ``released`` =
    claimed readings put back in the queue because a failure proved nothing was stored;
    ``partial_batches`` = batches answered with skips that could not all be attributed;
    ``statements`` = SQL statements the sync database saw during the cycle; ``error`` = why
    the cycle ended early or needs an operator (``None`` when the queue was drained or the
    budget spent and nothing is in doubt); ``profile`` = the Client System profile used.
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
    in_doubt: int = 0
    released: int = 0
    partial_batches: int = 0
    statements: int = 0
    seconds: float = 0.0
    error: str | None = None
    profile: str | None = None

    @property
    def success(self) -> bool:
        """True when the cycle ended without an error and left nothing in doubt."""
        return self.error is None and not self.in_doubt

    @property
    def readings_per_second(self) -> float:
        """Readings sent per second of the cycle."""
        return self.readings_sent / self.seconds if self.seconds > 0 else 0.0


def idempotency_key(tenant_id: int, ids: pa.Array) -> str:
    """The batch's Idempotency-Key: a digest of its sorted reading ids, the same on every retry.

    Sorted so that the same set of readings gets the same key whatever order a later fetch
    returns them in (a re-send after a failed mark is then recognised by the Client System).
    The ids are sorted as bytes in the codec (one copy, a C sort): no Python object per id,
    and no Arrow compute call (two kernels per batch were ~5% of a 300-tenant cycle).
    """
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    if isinstance(ids.type, pa.BaseExtensionType):  # e.g. arrow.uuid over 16-byte storage
        ids = ids.storage
    if not pa.types.is_fixed_size_binary(ids.type) or ids.type.byte_width != 16:
        ids = pa.array([bytes(b) for b in ids.to_pylist()], type=pa.binary(16))
    digest = hashlib.sha256(codec.sorted_uuid_bytes(ids))
    return f"ms1-{tenant_id}-{digest.hexdigest()[:40]}"


@dataclass(slots=True)
class _Piece:
    """A batch ready to send: its readings and their JSON body."""

    batch: pa.RecordBatch
    body: bytes


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


def _encode(batch: pa.RecordBatch, profile: ClientProfile) -> bytes:
    """The JSON array of a batch in the profile's shape (codec, both twins byte-identical):
    ``metertrack`` omits null fields and sends numerics as strings with the column's scale."""
    if not batch.num_rows:
        return b"[]"
    return codec.json_rows(batch, profile=profile.json_profile)


#: Confirmed batches that may wait for their mark before the cycle waits too (the mark running
#: meanwhile carries others): bounds the readings a crash would send again as duplicates.
_MARK_BACKLOG = 4

#: ``len(b'{"readings":' + b'}')``: what the client wraps around the JSON array.
_ENVELOPE = 13


def _pieces(batch: pa.RecordBatch, profile: ClientProfile) -> list[_Piece]:
    """The batch as bodies that fit the profile's limit. Encoded once; only a body over the
    limit is split, into zero-copy slices from the sizes the codec computes (no trial and
    error against the server)."""
    body = _encode(batch, profile)
    if len(body) + _ENVELOPE <= profile.max_body_bytes or batch.num_rows <= 1:
        return [_Piece(batch, body)]
    slices = codec.split_by_body_size(batch, profile.max_body_bytes, profile=profile.json_profile)
    return [_Piece(s, _encode(s, profile)) for s in slices]


class MeterReadingUploadManager:
    """Runs upload cycles for one tenant.

    ``db`` is a :class:`~metersync.store.database.SyncDatabase`; ``client`` a
    :class:`~metersync.remote.client.ClientSystemApiClient` holding the tenant's key (its
    ``profile()`` decides the idempotent or the claiming path; a client without one speaks the
    idempotent metersync contract); ``cache`` the :class:`TenantCache` the batch size comes
    from (read once per cycle). ``max_retries`` is the number of individual rejections after
    which a reading is quarantined. ``max_batches`` and ``max_seconds`` bound the number of
    batches one cycle starts (``None``: until the queue is empty). ``overlap`` fetches, encodes
    and marks while POSTs are in flight, with up to ``max_in_flight`` POSTs on the wire at once
    (1: one at a time); without ``overlap`` every step waits for the previous one.

    When another worker holds the tenant's upload lock, :meth:`upload` raises
    :class:`TenantBusyError` at once without touching anything: two uploaders never send the
    same reading at the same time, and the caller decides whether that is worth a log line.
    ``error_cause`` holds the exception behind ``report.error`` (callers map its type).
    """

    def __init__(
        self,
        db: UploadStore,
        client: UploadClient,
        cache: TenantCache,
        *,
        tenant_id: int,
        max_retries: int = 5,
        max_batches: int | None = None,
        max_seconds: float | None = None,
        overlap: bool = True,
        # 2: hides a real Client System's answer time. Against a zero-cost one (`serve --sink`,
        # 100k wide, B=1000) 1 and 2 measured equal — same CPU per process, walls within this
        # 2-core box's noise (upload-speed notes); the "2 is slower" figures were load swings.
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
        #: Prefetch on a second connection (see ``_open_companion``); False: on the lock's.
        self.use_companion = True
        self._stop_requested = False
        self._companion_statements = 0  # statements of this cycle's companion connection
        self._profile: ClientProfile = METERSYNC
        #: The cycle's first batch when the caller fetched it (``upload(prefetched=...)``).
        self._prefetched: pa.RecordBatch | None = None
        #: This cycle's place in its group's one UPDATE (``upload(group_marks=...)``).
        self._share: GroupShare | None = None
        #: The report of the cycle running now or of the last one (also after it raised).
        self.report = UploadReport(tenant_id=tenant_id)
        #: The exception behind ``report.error`` (``None`` when there is none).
        self.error_cause: BaseException | None = None

    def request_stop(self) -> None:
        """Start no new batch; finish those in flight (POST and mark), then end the cycle.

        Idempotent."""
        self._stop_requested = True

    async def _client_profile(self) -> ClientProfile:
        probe = getattr(self._client, "profile", None)
        return METERSYNC if probe is None else await probe()

    async def upload(
        self,
        *,
        prefetched: pa.RecordBatch | None = None,
        group_marks: GroupMarks | None = None,
    ) -> UploadReport:
        """Run one upload cycle and return its report (see the module docstring for failures).

        Raises :class:`TenantBusyError` when another worker is uploading this tenant,
        :class:`AuthError` (401/403), :class:`PayloadTooLargeError` (413) and
        :class:`BadRequestError` (400) — each after releasing the lock, with no reading touched
        by the failing batch. ``self.report`` holds the counts up to that point.

        ``prefetched``: the cycle's first batch, already fetched by the caller under the
        tenant's upload lock, which the caller took on this manager's connection and releases
        itself (the scheduler does so for a group of small tenants: one lock statement and one
        fetch for the group, :meth:`SyncDatabase.fetch_unsynchronized_many`). Used only under
        the idempotent profile, where a fetch claims nothing, and only when it fits the
        tenant's batch size now; otherwise the cycle fetches as usual.

        ``group_marks``: the group's one UPDATE (:class:`~metersync.engine.marks.GroupMarks`).
        When the prefetched batch is this tenant's whole queue (fewer readings than its batch
        size), its confirmed readings are left to that UPDATE, which the caller runs after
        the group (before releasing the locks); the report is completed then, and
        :meth:`marks_pending` says so until it is.
        """
        if prefetched is not None and not self._db.holds_lock(self.tenant_id, "upload"):
            raise RuntimeError(
                f"tenant {self.tenant_id}: a prefetched batch needs the upload lock held on "
                "this manager's connection"
            )
        self._stop_requested = False
        self.error_cause = None
        self._share = None
        clock = CycleClock(self._db)
        self._companion_statements = 0
        self.report = UploadReport(tenant_id=self.tenant_id)
        try:
            self._profile = await self._client_profile()
        except ClientSystemError as exc:
            if isinstance(exc, AuthError):
                raise
            self.error_cause = exc
            self.report = replace(
                self.report,
                error=f"the Client System's profile is unknown ({type(exc).__name__}: {exc})",
                seconds=clock.seconds(),
            )
            log.warning("tenant %s upload: %s", self.tenant_id, self.report.error)
            return self.report
        settings = await self._cache.get(self.tenant_id)
        size = settings.batch.upload_batch_size
        self.report = replace(self.report, upload_batch_size=size, profile=self._profile.name)
        usable = prefetched is not None and self._profile.idempotent
        self._prefetched = prefetched if usable and prefetched.num_rows <= size else None
        first = self._prefetched
        # The whole cycle is this one batch (fewer readings than the size: the queue's end);
        # without overlap every mark runs in line, as it always has.
        whole = first is not None and 0 < first.num_rows < size
        if group_marks is not None and whole and self.overlap:
            self._share = group_marks.share(
                self.tenant_id, self._group_marked, self._group_mark_failed
            )
        held = (
            contextlib.nullcontext()
            if prefetched is not None
            else self._db.tenant_lock(self.tenant_id, "upload")  # or TenantBusyError
        )
        try:
            async with held:
                try:
                    await self._cycle(size, clock.started)
                except (_Stop, MarkFailedError) as stop:  # the cycle ended early, said why
                    cause = stop.__cause__ or stop
                    if isinstance(cause, OutcomeUnknownError):  # the error line says what to do
                        cause = OutcomeUnknownError(str(stop), status=cause.status)
                    self.error_cause = cause
                    self.report = replace(self.report, error=str(stop))
        finally:
            self.report = replace(self.report, **clock.totals(self._companion_statements))
            # Readings held in doubt are always said in the report — also when the cycle ends
            # with a raised error (a 401 on one batch while another's answer was lost).
            if self.report.in_doubt and self.report.error is None:
                text = self._in_doubt_hint(
                    f"tenant {self.tenant_id}: {self.report.in_doubt} readings held in_doubt: "
                    "the Client System's answer did not say whether (or which of them) it "
                    "stored them"
                )
                self.error_cause = OutcomeUnknownError(text)
                self.report = replace(self.report, error=text)
            elif self.report.in_doubt and "metersync resolve" not in self.report.error:
                # The cycle ended for another reason (e.g. a later batch failed as a whole)
                # after earlier readings were held: the error line still says what to do with
                # them. Its cause (and so the exit code) stays the error that ended the cycle.
                self.report = replace(
                    self.report,
                    error=self._in_doubt_hint(
                        f"{self.report.error}; and {self.report.in_doubt} readings held in_doubt"
                    ),
                )
        if not self.marks_pending:  # else logged once the group's UPDATE has run
            self._log_report()
        return self.report

    @property
    def marks_pending(self) -> bool:
        """Whether the last cycle left confirmed readings to its group's UPDATE, not run yet
        (the report does not count them until then)."""
        return self._share is not None and bool(self._share.batches)

    def _group_marked(
        self, batches: list[Confirmed], marked: int, seconds: float, statements: int
    ) -> None:
        """The group's UPDATE committed: count this tenant's batches (and the statement, on
        the group's first tenant) in its report."""
        self._marked(batches, marked, seconds)
        self.report = replace(self.report, statements=self.report.statements + statements)
        self._share = None
        self._log_report()

    def _group_mark_failed(self, err: MarkFailedError) -> None:
        """The group's UPDATE failed: this tenant's cycle ends with it, as a failed mark of
        its own would end it."""
        self._marks_failed(err)
        said = self.report.error
        if said is None:  # the error that ended the cycle, if any, stays its cause
            self.error_cause = err.__cause__ or err
        self.report = replace(self.report, error=f"{said}; {err}" if said else str(err))
        self._share = None
        self._log_report()

    def _log_report(self) -> None:
        """The cycle's one log line (INFO, WARNING when it ended with an error)."""
        r = self.report
        level = logging.WARNING if r.error else logging.INFO
        if not log.isEnabledFor(level):  # the fields below cost ~0.1 ms: not for nothing
            return
        log.log(
            level,
            "tenant %s upload (%s profile): %d batches, %d readings (%d inserted, "
            "%d duplicates, %d rejected, %d quarantined, %d in doubt), %d statements, "
            "%.3f s%s",
            self.tenant_id,
            r.profile,
            r.batches,
            r.readings_sent,
            r.inserted,
            r.duplicates,
            r.rejected,
            r.quarantined,
            r.in_doubt,
            r.statements,
            r.seconds,
            f"; {r.error}" if r.error else "",
            extra=observe.report_fields(r),
        )

    def _in_doubt_hint(self, why: str) -> str:
        return (
            f"{why}; held in_doubt, never resent automatically: check the Client System, then "
            f"`metersync resolve --tenant {self.tenant_id} --resend` (not stored there) or "
            "`--mark-synchronized` (stored)"
        )

    # -- the cycle -----------------------------------------------------------------------------

    async def _fetch(
        self, size: int, after: tuple[Any, bytes] | None, reader: Any = None
    ) -> tuple[list[_Piece], tuple[Any, bytes] | None]:
        """The next batch, split and encoded, and the keyset bound after it. ``reader``: the
        adapter to read it with (the companion connection; default the lock's own)."""
        fetch_started = time.perf_counter()
        if self._prefetched is not None and after is None:
            batch, self._prefetched = self._prefetched, None  # the group's fetch brought it
        elif self._profile.idempotent:
            batch = await (reader or self._db).fetch_unsynchronized(
                self.tenant_id, size, max_retries=self.max_retries, after=after
            )
        else:
            batch = await self._db.claim_unsynchronized(
                self.tenant_id, size, max_retries=self.max_retries, after=after
            )
        observe.phase("fetch", self.tenant_id, time.perf_counter() - fetch_started)
        if batch.num_rows > size:  # a broken adapter must not make us exceed the tenant's size
            raise RuntimeError(
                f"fetch_unsynchronized returned {batch.num_rows} rows for a limit of {size}"
            )
        if not batch.num_rows:
            return [], after
        last = batch.num_rows - 1
        bound = (batch.column("created_at")[last].as_py(), batch.column(ID_COLUMN)[last].as_py())
        failpoint("upload.after_fetch")
        encode_started = time.perf_counter()
        try:
            pieces = _pieces(batch, self._profile)
        except Exception:
            if not self._profile.idempotent:
                await self._release(batch.column(ID_COLUMN), "the batch could not be encoded")
            raise
        observe.phase("encode", self.tenant_id, time.perf_counter() - encode_started)
        return pieces, bound

    async def _open_companion(self) -> Any:
        """The second connection the idempotent prefetch reads with (``None``: there is none —
        an adapter without :meth:`~metersync.store.database.SyncDatabase.companion`, no DSN, or
        it could not be opened; the prefetch then shares the lock's connection)."""
        open_companion = getattr(self._db, "companion", None)
        if open_companion is None or not self.use_companion:
            return None
        try:
            return await open_companion("upload")
        except Exception as exc:  # the overlap is an optimisation: carry on without it
            log.warning(
                "tenant %s: no second database connection for the prefetch (%s: %s); fetching "
                "on the lock's connection",
                self.tenant_id,
                type(exc).__name__,
                exc,
            )
            return None

    def _may_start(self, started: float, batches_started: int) -> bool:
        """Whether another batch may be sent (stop request, batch and time budget)."""
        if self._stop_requested:
            return False
        if self.max_batches is not None and batches_started >= self.max_batches:
            return False
        return self.max_seconds is None or time.perf_counter() - started < self.max_seconds

    def _start_post(self, piece: _Piece, batch_no: int) -> _Flight:
        batch = piece.batch
        ids = batch.column(ID_COLUMN)
        key = idempotency_key(self.tenant_id, ids)
        failpoint("upload.before_post")
        task = asyncio.ensure_future(
            self._client.post_batch(piece.body, batch.num_rows, idempotency_key=key)
        )
        observe.timed(task, "post", self.tenant_id)
        return _Flight(batch, piece.body, ids, batch_no, task, time.perf_counter())

    async def _cycle(self, size: int, started: float) -> None:
        """The batch loop around a FIFO window of at most ``W`` POSTs: 1 until the first
        answer of the cycle was good, then ``N = max_in_flight``.

        ::

            fill:    while < W in flight and may start: next piece (fetch when none) → POST
            overlap: fetch+encode the next batch while the window is on the wire
                     (idempotent profile; the claiming profile claims right before a POST)
            settle:  await the OLDEST POST → check its answer
            refill:  start the prefetched piece (the wire stays busy) → mark the oldest

        Every fetch starts after the last reading fetched (keyset bound). Pieces fetched but
        not sent when the cycle ends are released (non-idempotent profile: they were claimed).
        Without ``overlap``: N=1, no prefetch, so fetch → POST → mark one after the other.
        """
        # One POST until the Client System has answered one batch of this cycle well: a wrong
        # key, a 413 or a 400 then costs a single request, as with one POST at a time.
        width = 1
        window: deque[_Flight] = deque()  # POSTs started and not yet settled, oldest first
        ready: deque[_Piece] = deque()  # fetched (and claimed), encoded, not yet sent
        after: tuple[Any, bytes] | None = None  # keyset bound: the last reading fetched
        count = 0  # batches started (the batch budget)
        drained = False  # a fetch came back empty or short: the queue is done for this cycle
        fetch_error: Exception | None = None  # stops new POSTs; raised once the window is done
        cancelled = False
        # The next batch's fetch, running while the previous batch is marked (idempotent
        # profile). On a second connection (the "companion": reads only, fenced by this
        # session's lock) the fetch and the mark really run at once; without one they take
        # turns on the same connection. At most one fetch at a time: the keyset bound chains.
        prefetch: asyncio.Future[bool] | None = None
        reader: Any = None  # the companion, opened at the first prefetch
        reader_tried = False
        # Idempotent profile: a plainly confirmed batch is marked in the background, merged
        # with those confirmed while the previous UPDATE ran (group commit, engine/marks.py).
        # A group's small tenant (one batch): its mark is the group's one UPDATE, after it.
        marks: MarkQueue | GroupShare | None = self._share
        if marks is None and self.overlap and self._profile.idempotent:
            marks = MarkQueue(self._mark_ids, self._marked)

        def may_start() -> bool:
            # After a failed mark no new POST starts: the cycle ends once the window is done.
            marks_ok = marks is None or marks.failure is None
            return fetch_error is None and marks_ok and self._may_start(started, count)

        async def fetch() -> bool:
            """Fetch the next batch into ``ready``; False when there is none (or the fetch
            failed while POSTs are in flight: those are settled first, then the cycle stops)."""
            nonlocal drained, fetch_error, after
            if drained:
                return False
            try:
                pieces, after = await self._fetch(size, after, reader)
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
                return False
            if not pieces:
                drained = True
                return False
            # A short batch: the queue held fewer than `size` readings, so it is empty now (a
            # reading added meanwhile goes next cycle). Many small tenants: no empty COPY each.
            if sum(p.batch.num_rows for p in pieces) < size:
                drained = True
            ready.extend(pieces)
            return True

        def start() -> None:
            nonlocal count
            count += 1
            window.append(self._start_post(ready.popleft(), count))

        async def refill() -> bool:
            """A piece in ``ready``: the prefetch's, else a fetch now. False when none."""
            nonlocal prefetch
            if prefetch is not None:
                task, prefetch = prefetch, None
                await task
            if ready:
                return True
            return fetch_error is None and await fetch()

        async def start_prefetch() -> None:
            """Start fetching the next batch in the background (idempotent profile only: a
            fetch there claims nothing; a claimed batch a crash catches before its POST
            would be held in doubt without ever having been sent)."""
            nonlocal prefetch, reader, reader_tried
            if prefetch is not None or ready or drained or not may_start():
                return
            if not (self.overlap and self._profile.idempotent):
                return
            if not reader_tried:  # only a cycle of more than one batch gets here
                reader_tried = True
                reader = await self._open_companion()
            prefetch = asyncio.ensure_future(fetch())

        try:
            while True:
                while len(window) < width and may_start():  # fill
                    if not ready and not await refill():
                        break
                    # Asked again: a stop or the time budget may have come during the fetch.
                    if ready and may_start():
                        start()
                if not window:
                    break
                # Prefetch while the window is on the wire (idempotent profile only).
                await start_prefetch()
                oldest = window.popleft()  # settled below, whatever its answer
                try:
                    result = await self._await_post(oldest)
                except _Retry as retry:
                    if retry.piece is not None:
                        ready.appendleft(retry.piece)  # the rest of a 400'd batch: sent now
                    continue
                if marks is not None:
                    marks.check()  # a failed mark ends the cycle (counted in _finish_marks)
                failpoint("upload.after_post")
                if self.overlap:
                    width = self.max_in_flight  # the key and the body shape work: open up
                if not ready and prefetch is not None and may_start():
                    await refill()  # the next batch is needed now to keep the wire busy
                if ready and may_start():
                    start()  # before marking, so the wire stays busy
                # The batch after it is fetched (companion connection) while this one is marked.
                await start_prefetch()
                await self._settle(oldest, result, marks)
                if marks is not None:
                    await marks.room(_MARK_BACKLOG)
            if marks is not None:
                await marks.drain()
            if fetch_error is not None:
                raise _Stop(
                    f"fetching the next batch failed: {type(fetch_error).__name__}: {fetch_error}"
                ) from fetch_error
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            if prefetch is not None:  # a read: nothing to undo, only to wait for
                if cancelled or not window:
                    prefetch.cancel()
                await asyncio.gather(prefetch, return_exceptions=True)
            if reader is not None:
                self._companion_statements += reader.statements
                await reader.close()
            if marks is not None:
                await self._finish_marks(marks, cancelled=cancelled)
            await self._settle_abandoned(list(window), cancelled=cancelled)
            if ready and not self._profile.idempotent:
                ids = pa.concat_arrays([p.batch.column(ID_COLUMN) for p in ready])
                await self._release(ids, "the cycle ended before this batch was sent")

    async def _settle_abandoned(self, flights: list[_Flight], *, cancelled: bool) -> None:
        """POSTs still open when the cycle ends early (an error elsewhere).

        Idempotent profile: cancel them and mark nothing (the next cycle's re-send is counted
        as duplicates). Non-idempotent: await and settle each one (a cancelled POST would have
        an unknown outcome); when the cycle itself was cancelled they stay ``in_doubt``.
        """
        open_flights = [f for f in flights if not f.task.done()] if cancelled else flights
        if not flights:
            return
        if self._profile.idempotent or cancelled:
            for flight in open_flights:
                flight.task.cancel()
            await asyncio.gather(*(f.task for f in flights), return_exceptions=True)
            for flight in flights:
                log.warning(
                    "tenant %s: batch %d was in flight when the cycle ended early; not marked, "
                    "its %d readings %s",
                    self.tenant_id,
                    flight.batch_no,
                    flight.batch.num_rows,
                    "go again next cycle" if self._profile.idempotent else "stay in_doubt",
                )
            return
        for flight in flights:
            try:
                result = await self._await_post(flight)
                await self._settle(flight, result)
            except _Retry as retry:
                if retry.piece is not None:
                    await self._release(retry.piece.batch.column(ID_COLUMN), "cycle ended")
            except (_Stop, ClientSystemError) as exc:
                log.warning(
                    "tenant %s: batch %d (in flight when the cycle ended): %s",
                    self.tenant_id,
                    flight.batch_no,
                    exc,
                )

    async def _await_post(self, flight: _Flight) -> Answer:
        """The answer to a flight; failures are settled here (release, hold, reject) and then
        raised as ``_Stop`` (cycle ends), ``_Retry`` (send the rest of the batch now) or the
        typed error an operator must see (401/403, 413, 400)."""
        n = flight.batch.num_rows
        where = f"tenant {self.tenant_id}: batch of {n} readings"
        claimed = not self._profile.idempotent
        try:
            return await flight.task
        except asyncio.CancelledError:
            raise
        except AuthError as exc:
            await self._release_if(claimed, flight, str(exc))
            raise AuthError(
                f"{where}: the Client System refused the API key (HTTP {exc.status}): {exc}; "
                "upload stopped, no reading was marked. Check the tenant's api_key.",
                status=exc.status,
            ) from exc
        except PayloadTooLargeError as exc:
            await self._release_if(claimed, flight, str(exc))
            raise PayloadTooLargeError(
                f"{where} ({len(flight.body)} bytes) is larger than the Client System accepts "
                f"(HTTP 413): {exc}; set max_body_bytes (or lower the tenant's "
                f"upload_batch_size: metersync tenant set {self.tenant_id} --upload-batch-size "
                "N). No reading was marked.",
                status=exc.status,
            ) from exc
        except BadRequestError as exc:
            if claimed:
                await self._field_errors(flight, exc)  # raises _Retry when it attributed them
                await self._release(flight.ids, str(exc))
            raise BadRequestError(
                f"{where}: the Client System refused the body as malformed (HTTP 400): {exc}. "
                "No reading was marked.",
                status=exc.status,
            ) from exc
        except OutcomeUnknownError as exc:
            await self._hold(flight, f"outcome unknown: {exc}")
            raise _Stop(self._in_doubt_hint(f"{where}: outcome unknown ({exc})")) from exc
        except (ClientSystemError, httpx.HTTPError) as exc:
            # Retries spent (timeouts, connection errors, 408/429/5xx) or counts that do not
            # add up: the whole batch failed. Idempotent: nothing is marked, retry_count is not
            # touched. Non-idempotent: the client only lets failures through that prove
            # nothing was stored (an httpx error should never arrive unwrapped; if one does it
            # proves nothing, so the batch is held).
            if claimed and isinstance(exc, httpx.HTTPError):
                await self._hold(flight, f"outcome unknown: {exc}")
                why = f"{where}: outcome unknown ({type(exc).__name__}: {exc})"
                raise _Stop(self._in_doubt_hint(why)) from OutcomeUnknownError(why)
            await self._release_if(claimed, flight, str(exc))
            raise _Stop(
                f"{where} failed as a whole ({type(exc).__name__}: {exc}); "
                "nothing marked, the readings stay pending"
            ) from exc
        except Exception as exc:
            if claimed:  # a bug after the POST started: its outcome is unknown
                await self._hold(flight, f"outcome unknown: {type(exc).__name__}: {exc}")
            raise

    async def _field_errors(self, flight: _Flight, exc: BadRequestError) -> None:
        """A 400 naming readings by index: reject exactly those (failed → quarantine path) and
        raise ``_Retry`` with the rest of the batch (the 400 proves nothing was stored). Returns
        when the errors cannot all be attributed (the caller releases the whole batch)."""
        errors = getattr(exc, "field_errors", ())
        n = flight.batch.num_rows
        if not errors or getattr(exc, "unattributed", 0) or any(e.index >= n for e in errors):
            return
        by_index: dict[int, list[str]] = {}
        for e in errors:
            by_index.setdefault(e.index, []).append(e.message)
        bad = sorted(by_index)
        mask = pa.array([i in by_index for i in range(n)])
        bad_ids = flight.ids.filter(mask)
        texts = [f"HTTP 400: {'; '.join(by_index[i])}" for i in bad]
        quarantined = await self._mark_rejected(bad_ids, texts)
        self._count(0, rejected=len(bad), quarantined=quarantined)
        log.warning(
            "tenant %s: batch %d: the Client System refused %d of %d readings (HTTP 400: %s); "
            "the other %d are sent again",
            self.tenant_id,
            flight.batch_no,
            len(bad),
            n,
            texts[0],
            n - len(bad),
        )
        rest = flight.batch.filter(pc.invert(mask))
        if not rest.num_rows:
            raise _Retry(None)
        raise _Retry(_Piece(rest, _encode(rest, self._profile)))

    def _check_answer(self, flight: _Flight, result: Answer) -> tuple[pa.Array, dict[str, str]]:
        """The ids to mark synchronized and the rejections; ``_Stop`` if the answer is odd."""
        try:
            return read_answer(
                self.tenant_id, flight.batch_no, flight.ids, flight.batch.num_rows, result
            )
        except OddAnswerError as odd:
            raise _Stop(str(odd)) from odd.cause

    async def _settle(
        self, flight: _Flight, result: Any, marks: MarkQueue | GroupShare | None = None
    ) -> None:
        """Mark what an answered batch confirmed and record what it refused. With ``marks``
        a batch confirmed whole is queued there (marked in the background, merged)."""
        skipped = int(getattr(result, "skipped", 0) or 0)
        if skipped:
            await self._settle_skips(flight, result)
            return
        try:
            confirmed_ids, rejected = self._check_answer(flight, result)
        except _Stop as stop:
            if not self._profile.idempotent:  # an answer we cannot trust: outcome unknown
                await self._hold(flight, f"outcome unknown: {stop}")
                raise _Stop(self._in_doubt_hint(str(stop))) from OutcomeUnknownError(str(stop))
            raise
        if marks is not None and not rejected:
            marks.add(
                Confirmed(
                    flight.batch_no,
                    flight.batch.num_rows,
                    confirmed_ids,
                    result.inserted,
                    result.duplicates,
                )
            )
            return
        rejected_ids = None
        texts: list[str] = []
        if rejected:
            rejected_ids = pa.array([uuid.UUID(s).bytes for s in rejected], type=pa.binary(16))
            texts = list(rejected.values())
        await self._mark(
            flight,
            confirmed_ids,
            rejected_ids,
            texts,
            inserted=result.inserted,
            duplicates=result.duplicates,
        )

    async def _settle_skips(self, flight: _Flight, result: Any) -> None:
        """MeterTrack skipped readings and named their meters: attribute what is certain.

        A meter whose every reading in the batch was skipped (one error per reading; e.g. its
        only reading) → those readings are rejected (failed → quarantine path). A meter with
        fewer errors than readings → all its readings are held in doubt with the server's
        words. Meters without errors → synchronized. Errors that name no meter of the batch,
        or fewer errors than skips → the whole batch is held in doubt.
        """
        n = flight.batch.num_rows
        attribution = attribute_skips(flight.batch, flight.ids, result)
        if attribution is None:
            errors: Sequence[Any] = getattr(result, "meter_errors", ())
            summary = getattr(result, "message", None) or f"{result.skipped} readings skipped"
            await self._hold(
                flight,
                f"partial batch: {summary}: "
                + "; ".join(f"meter {e.meter_id}: {e.error}" for e in errors[:5]),
            )
            self._count_partial()
            log.error(
                "tenant %s: batch %d: %s; the skips cannot be attributed to readings, so all %d "
                "are held in_doubt",
                self.tenant_id,
                flight.batch_no,
                summary,
                n,
            )
            return
        await self._mark(
            flight,
            attribution.confirmed_ids,
            attribution.rejected_ids,
            attribution.texts,
            inserted=result.inserted,
            duplicates=0,
            held=attribution.held,
        )

    async def _mark(
        self,
        flight: _Flight,
        confirmed_ids: pa.Array,
        rejected_ids: pa.Array | None,
        texts: list[str],
        *,
        inserted: int,
        duplicates: int,
        held: tuple[pa.Array, list[str]] | None = None,
    ) -> None:
        """Mark what the Client System confirmed and record what it rejected (ONE statement
        each) and what stays in doubt (one more, only for a partial answer)."""
        n = flight.batch.num_rows
        confirmed = len(confirmed_ids)
        quarantined = 0
        done = 0  # confirmed readings whose mark committed (counted even if a later step fails)
        mark_started = time.perf_counter()
        try:
            if confirmed:
                failpoint("upload.before_mark")
                marked = await self._db.mark_synchronized(self.tenant_id, confirmed_ids)
                done = confirmed
                failpoint("upload.after_mark")
                self._check_marked([flight.batch_no], confirmed, marked)
            if rejected_ids is not None and len(rejected_ids):
                quarantined = await self._mark_rejected(rejected_ids, texts)
            if held is not None:
                await self._db.hold_in_doubt(self.tenant_id, held[0], held[1])
        except Exception as exc:
            self._count(
                n,
                confirmed=done,
                inserted=inserted if done else 0,
                duplicates=duplicates if done else 0,
            )
            log.error(
                "tenant %s: batch %d was accepted by the Client System but marking it failed "
                "(%s: %s); its readings %s",
                self.tenant_id,
                flight.batch_no,
                type(exc).__name__,
                exc,
                "go up again next cycle and count as duplicates"
                if self._profile.idempotent
                else "stay in_doubt (never resent automatically)",
            )
            if not self._profile.idempotent:
                self._count(0, in_doubt=n - done)
            raise _Stop(
                f"marking batch {flight.batch_no} failed: {type(exc).__name__}: {exc}"
            ) from exc
        observe.phase("mark", self.tenant_id, time.perf_counter() - mark_started)
        rejected = 0 if rejected_ids is None else len(rejected_ids)
        in_doubt = 0 if held is None else len(held[0])
        self._count(
            n,
            confirmed=confirmed,
            inserted=inserted,
            duplicates=duplicates,
            rejected=rejected,
            quarantined=quarantined,
            in_doubt=in_doubt,
        )
        if in_doubt:
            self._count_partial()
        log.debug(
            "tenant %s upload batch %d: %d sent, %d inserted, %d duplicates, %d rejected "
            "(%d quarantined), %d in doubt, %.3f s since the POST started",
            self.tenant_id,
            flight.batch_no,
            n,
            inserted,
            duplicates,
            rejected,
            quarantined,
            in_doubt,
            time.perf_counter() - flight.started,
        )

    def _check_marked(self, batch_numbers: list[int], confirmed: int, marked: int) -> None:
        if marked != confirmed:
            log.warning(
                "tenant %s: batch %s: %d readings confirmed but %d newly marked (marked "
                "meanwhile by another worker or a previous cycle?)",
                self.tenant_id,
                ", ".join(map(str, batch_numbers)),
                confirmed,
                marked,
            )

    async def _mark_ids(self, ids: pa.Array | pa.ChunkedArray) -> int:
        """The UPDATE of a :class:`MarkQueue`: ONE statement for one or more batches."""
        return await self._db.mark_synchronized(self.tenant_id, ids)

    def _marked(self, batches: list[Confirmed], marked: int, seconds: float) -> None:
        """One UPDATE of the :class:`MarkQueue` committed: count the batches it carried."""
        for _ in batches:  # each batch's mark step took the one UPDATE that carried it
            observe.phase("mark", self.tenant_id, seconds)
        confirmed = sum(len(b.ids) for b in batches)
        self._check_marked([b.batch_no for b in batches], confirmed, marked)
        debug = log.isEnabledFor(logging.DEBUG)
        for b in batches:
            self._count(b.rows, confirmed=len(b.ids), inserted=b.inserted, duplicates=b.duplicates)
            if debug:
                log.debug(
                    "tenant %s upload batch %d: %d sent, %d inserted, %d duplicates, 0 rejected "
                    "(0 quarantined), 0 in doubt; marked in one statement with %d batches "
                    "(%.3f s)",
                    self.tenant_id,
                    b.batch_no,
                    b.rows,
                    b.inserted,
                    b.duplicates,
                    len(batches),
                    seconds,
                )

    def _marks_failed(self, err: MarkFailedError) -> None:
        """Count and log the batches a failed mark left unmarked (sent, not confirmed here)."""
        for b in err.batches:
            self._count(b.rows)
        log.error(
            "tenant %s: the Client System accepted %d readings but %s; they go up again next "
            "cycle and count as duplicates",
            self.tenant_id,
            sum(b.rows for b in err.batches),
            err,
        )

    async def _finish_marks(self, marks: MarkQueue | GroupShare, *, cancelled: bool) -> None:
        """The cycle is ending: wait for the marks still queued (confirmed readings are marked
        before the lock goes), or — when the cycle was cancelled — stop them. The batches a
        failed mark left are counted and logged here, once, however the cycle ended."""
        if cancelled:
            left = await marks.cancel()
            for b in left:
                self._count(b.rows)
            if left:
                log.warning(
                    "tenant %s: the cycle was cancelled before %d confirmed readings were "
                    "marked; they go up again next cycle and count as duplicates",
                    self.tenant_id,
                    sum(b.rows for b in left),
                )
            return
        try:
            await marks.drain()
        except MarkFailedError as err:
            self._marks_failed(err)

    async def _mark_rejected(self, ids: pa.Array, errors: list[str]) -> int:
        """Record individual rejections (ONE statement); return how many are now quarantined."""
        result = await self._db.mark_rejected(self.tenant_id, ids, errors, self.max_retries)
        return int(getattr(result, "quarantined", 0))

    async def _release_if(self, claimed: bool, flight: _Flight, why: str) -> None:
        if claimed:
            await self._release(flight.ids, why)

    async def _release(self, ids: pa.Array, why: str) -> None:
        """Claimed readings back to the queue (a failure proved nothing was stored). If that
        fails they stay in doubt: safe, an operator releases them."""
        try:
            released = await self._db.release_in_doubt(self.tenant_id, ids)
        except Exception as exc:
            log.error(
                "tenant %s: %d claimed readings could not be released (%s: %s); they stay "
                "in_doubt until `metersync resolve --tenant %s --resend` (%s)",
                self.tenant_id,
                len(ids),
                type(exc).__name__,
                exc,
                self.tenant_id,
                why,
            )
            self._count(0, in_doubt=len(ids))
            return
        self.report = replace(self.report, released=self.report.released + int(released))

    async def _hold(self, flight: _Flight, why: str) -> None:
        """Keep a batch in doubt and record why (``last_error``)."""
        n = flight.batch.num_rows
        self._count(n, in_doubt=n)
        log.error(
            "tenant %s: batch %d: %d readings held in_doubt: %s",
            self.tenant_id,
            flight.batch_no,
            n,
            why,
        )
        try:
            await self._db.hold_in_doubt(self.tenant_id, flight.ids, [why] * n)
        except Exception as exc:  # they are in doubt already (claimed); only the text is lost
            log.error(
                "tenant %s: recording why batch %d is in doubt failed (%s: %s)",
                self.tenant_id,
                flight.batch_no,
                type(exc).__name__,
                exc,
            )

    def _count_partial(self) -> None:
        self.report = replace(self.report, partial_batches=self.report.partial_batches + 1)

    def _count(
        self,
        n: int,
        *,
        confirmed: int = 0,
        inserted: int = 0,
        duplicates: int = 0,
        rejected: int = 0,
        quarantined: int = 0,
        in_doubt: int = 0,
    ) -> None:
        observe.readings("uploaded", self.tenant_id, confirmed)  # per batch, as the report
        observe.readings("rejected", self.tenant_id, rejected)
        r = self.report
        self.report = replace(
            r,
            batches=r.batches + (1 if n else 0),
            readings_sent=r.readings_sent + n,
            confirmed=r.confirmed + confirmed,
            inserted=r.inserted + inserted,
            duplicates=r.duplicates + duplicates,
            rejected=r.rejected + rejected,
            quarantined=r.quarantined + quarantined,
            in_doubt=r.in_doubt + in_doubt,
        )


class _Retry(Exception):
    """Internal: a 400 named the bad readings; send ``piece`` (the rest, or None) now."""

    def __init__(self, piece: _Piece | None) -> None:
        super().__init__("retry the rest of the batch")
        self.piece = piece

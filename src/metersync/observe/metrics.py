"""Prometheus metrics of the sync engine: one dedicated registry and the hooks the engine calls.

Everything lives in :data:`REGISTRY` (a ``CollectorRegistry`` of its own, not the
prometheus_client default one), so a daemon that embeds metersync can expose it on its own
endpoint, merge it into another, or serve it with :func:`metersync.observe.serve`.

The hooks (:func:`phase`, :func:`readings`, :func:`cycle`, :func:`statements`,
:func:`batch_sizes`, :func:`profile`, :func:`queue`) are called once per batch or per cycle,
never per reading: each is a dict lookup for the labelled child plus one prometheus_client
call. They never raise: a metric problem must not fail a sync (a bad argument is logged once
and ignored).

The queue gauges (pending / failed / quarantined / in doubt / oldest pending age) are read from
``SyncDatabase.queue_status()`` by a :class:`QueueCollector` at scrape time through a source
function, cached for ``ttl`` seconds so a busy scraper (or several) cannot hammer the database;
an engine that already has the rows can push them with :func:`queue` instead.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from metersync.observe.activity import ACTIVITY

__all__ = [
    "BATCH_PHASES",
    "READING_KINDS",
    "REGISTRY",
    "QueueCollector",
    "batch_sizes",
    "cycle",
    "phase",
    "profile",
    "queue",
    "readings",
    "recording",
    "statements",
    "timed",
]

log = logging.getLogger(__name__)

#: The registry every metersync metric is in (expose it, or merge it into yours).
REGISTRY = CollectorRegistry(auto_describe=True)

#: Steps of a batch whose latency is recorded (upload: fetch → encode → post → mark; download:
#: download_page → copy).
BATCH_PHASES = ("fetch", "encode", "post", "mark", "download_page", "copy")
#: What :func:`readings` counts.
READING_KINDS = ("uploaded", "downloaded", "rejected")

# From 1 ms (a small fetch on a warm cache) to a minute (a POST retried until its budget is
# spent): the phases of a 1 000-reading batch sit between 2 ms and 200 ms on the reference
# hardware (PERF-NOTES), so the buckets are densest there.
_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

_PHASE_SECONDS = Histogram(
    "metersync_batch_phase_seconds",
    "Latency of one batch step, by phase (fetch, encode, post, mark, download_page, copy).",
    ["tenant_id", "phase"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
_READINGS = {
    "uploaded": Counter(
        "metersync_readings_uploaded",
        "Readings the Client System confirmed (inserted or duplicate) and that were marked.",
        ["tenant_id"],
        registry=REGISTRY,
    ),
    "downloaded": Counter(
        "metersync_readings_downloaded",
        "Readings received from the Client System in valid pages and stored (new ones).",
        ["tenant_id"],
        registry=REGISTRY,
    ),
    "rejected": Counter(
        "metersync_readings_rejected",
        "Readings the Client System refused one by one (marked failed).",
        ["tenant_id"],
        registry=REGISTRY,
    ),
}
_CYCLES = Counter(
    "metersync_cycles",
    "Operations (upload or download cycles) ended, by outcome and error kind.",
    ["tenant_id", "operation", "outcome", "error_kind"],
    registry=REGISTRY,
)
_LAST_CYCLE = Gauge(
    "metersync_last_cycle_timestamp_seconds",
    "Unix time the tenant's last operation of this kind ended (any outcome).",
    ["tenant_id", "operation"],
    registry=REGISTRY,
)
_STATEMENTS = Counter(
    "metersync_sql_statements",
    "SQL statements the sync database saw for the tenant's operations.",
    ["tenant_id"],
    registry=REGISTRY,
)
_BATCH_SIZE = Gauge(
    "metersync_batch_size",
    "Effective batch size of the tenant (direction upload/download) and where it came from "
    "(source: tenant row, default, fallback, tenant+default).",
    ["tenant_id", "direction", "source"],
    registry=REGISTRY,
)
_PROFILE = Gauge(
    "metersync_client_profile",
    "The Client System profile in use (1 for the current one).",
    ["profile"],
    registry=REGISTRY,
)

_children: dict[tuple[Any, ...], Any] = {}  # labelled children by (metric, labels): one lookup
_sources: dict[int, str] = {}  # the batch-size source exported per tenant (to drop old series)
_profile_now: list[str] = []
_warned: set[str] = set()


class _Unrecorded:
    """What :func:`_child` hands out while recording is off: every update is a no-op."""

    def observe(self, value: float) -> None:
        """Nothing (recording is off)."""

    def inc(self, amount: float = 1) -> None:
        """Nothing (recording is off)."""

    def set(self, value: float) -> None:
        """Nothing (recording is off)."""


_UNRECORDED = _Unrecorded()
_recording = [True]  # a list: set in place by `recording()` (no `global` statement)


@contextlib.contextmanager
def recording(enabled: bool) -> Iterator[None]:
    """Record the metrics (``True``, the default) or skip them (``False``) inside the block.

    A process that never exposes :data:`REGISTRY` — the one-shot ``metersync upload`` /
    ``download`` / ``sync --once`` commands — records nothing: creating the labelled children
    of 300 tenants cost ~0.1 CPU-s of such a run (issue 12), for series no one can scrape.
    The liveness stamps for ``/healthz`` (:data:`ACTIVITY`) are kept either way.
    """
    before = _recording[0]
    _recording[0] = bool(enabled)
    try:
        yield
    finally:
        _recording[0] = before


def _child(metric: Any, *labels: str) -> Any:
    if not _recording[0]:
        return _UNRECORDED
    key = (id(metric), *labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child


def _complain(what: str, exc: BaseException | None = None) -> None:
    """Log a bad hook call once per kind of problem (the hooks never raise)."""
    if what in _warned:
        return
    _warned.add(what)
    log.warning("metersync.observe: %s%s (ignored)", what, f": {exc!r}" if exc else "")


def phase(phase: str, tenant_id: int, seconds: float) -> None:
    """Record how long one batch step took (``phase`` in :data:`BATCH_PHASES`)."""
    try:
        if phase not in BATCH_PHASES:
            _complain(f"unknown batch phase {phase!r}")
            return
        _child(_PHASE_SECONDS, str(tenant_id), phase).observe(seconds)
        ACTIVITY.batch_step(tenant_id)
    except Exception as exc:
        _complain("phase() failed", exc)


def timed(task: Any, phase_name: str, tenant_id: int) -> Any:
    """Record ``phase_name`` when ``task`` (an asyncio future: a POST, a page GET) finishes.

    The time runs from this call to the task's end, so a request that finishes while the
    engine is busy elsewhere (overlap) is timed as it happened. A cancelled task records
    nothing; a failed one records its duration (its error is counted by :func:`cycle`).
    Returns ``task``.
    """
    try:
        started = time.perf_counter()

        def done(t: Any) -> None:
            if not t.cancelled():
                phase(phase_name, tenant_id, time.perf_counter() - started)

        task.add_done_callback(done)
    except Exception as exc:
        _complain("timed() failed", exc)
    return task


def readings(kind: str, tenant_id: int, n: int) -> None:
    """Count ``n`` readings uploaded, downloaded or rejected (once per batch)."""
    try:
        counter = _READINGS.get(kind)
        if counter is None:
            _complain(f"unknown readings kind {kind!r}")
            return
        if n:
            _child(counter, str(tenant_id)).inc(n)
    except Exception as exc:
        _complain("readings() failed", exc)


def cycle(tenant_id: int, operation: str, outcome: str, error_kind: str | None = None) -> None:
    """Count one ended operation (``operation`` upload/download; ``outcome`` e.g. ok, partial,
    error, busy; ``error_kind`` the exception type name or a short word, ``None`` when fine).

    Also stamps the tenant's liveness for ``/healthz``.
    """
    try:
        _child(_CYCLES, str(tenant_id), operation, outcome, error_kind or "none").inc()
        _child(_LAST_CYCLE, str(tenant_id), operation).set(time.time())
        ACTIVITY.cycle_ended(tenant_id, outcome)
    except Exception as exc:
        _complain("cycle() failed", exc)


def statements(tenant_id: int, n: int) -> None:
    """Count ``n`` SQL statements issued for the tenant (e.g. a cycle's report.statements)."""
    try:
        if n:
            _child(_STATEMENTS, str(tenant_id)).inc(n)
    except Exception as exc:
        _complain("statements() failed", exc)


def batch_sizes(tenant_id: int, upload: int, download: int, source: str) -> None:
    """Export the tenant's effective batch sizes and their source (once per cycle is plenty).

    A change of source replaces the tenant's series (no stale ``source`` label lingers).
    """
    try:
        tid = str(tenant_id)
        previous = _sources.get(tenant_id)
        if previous is not None and previous != source:
            for direction in ("upload", "download"):
                _children.pop((id(_BATCH_SIZE), tid, direction, previous), None)
                with contextlib.suppress(KeyError):
                    _BATCH_SIZE.remove(tid, direction, previous)
        _sources[tenant_id] = source
        _child(_BATCH_SIZE, tid, "upload", source).set(upload)
        _child(_BATCH_SIZE, tid, "download", source).set(download)
        ACTIVITY.expect(tenant_id)
    except Exception as exc:
        _complain("batch_sizes() failed", exc)


def profile(name: str) -> None:
    """Export the Client System profile in use (``metersync`` or ``metertrack``)."""
    try:
        if not _recording[0] or (_profile_now and _profile_now[0] == name):
            return
        for old in _profile_now:
            with contextlib.suppress(KeyError):
                _PROFILE.remove(old)
        _profile_now[:] = [name]
        _PROFILE.labels(name).set(1)
    except Exception as exc:
        _complain("profile() failed", exc)


# -- the queue gauges, read at scrape time ------------------------------------------------------

#: (metric name, QueueStatus attribute, help) of the per-tenant queue gauges.
_QUEUE_GAUGES = (
    ("metersync_readings_pending", "pending", "Readings waiting for their first upload."),
    (
        "metersync_readings_failed",
        "failed",
        "Readings rejected at least once, retried next cycle, not yet quarantined.",
    ),
    (
        "metersync_readings_quarantined",
        "quarantined",
        "Readings rejected max_retries times: skipped by the queue until requeued.",
    ),
    (
        "metersync_readings_in_doubt",
        "in_doubt",
        "Readings whose upload outcome is unknown (non-idempotent Client System): never resent "
        "automatically; release them with metersync resolve.",
    ),
    (
        "metersync_oldest_pending_age_seconds",
        "oldest_pending_age_s",
        "Age of the oldest reading still in the queue (pending or failed); 0 when empty.",
    ),
    (
        "metersync_oldest_in_doubt_age_seconds",
        "oldest_in_doubt_age_s",
        "How long the longest-held in-doubt reading has waited for metersync resolve; 0: none.",
    ),
)

QueueSource = Callable[[], Sequence[Any]]


class QueueCollector(Collector):
    """The per-tenant queue gauges, from ``queue_status()`` rows cached for ``ttl`` seconds.

    ``source`` returns the rows (``QueueStatus`` objects or dicts with the same keys); it is
    called at scrape time at most once per ``ttl``, by one scraper at a time. When it fails the
    queue gauges are left out of the scrape (a stale number is worse than none) and
    ``metersync_sync_database_up`` is 0.
    """

    def __init__(self, ttl: float = 10.0) -> None:
        self.ttl = ttl
        self._source: QueueSource | None = None
        self._rows: Sequence[Any] = ()
        self._at: float | None = None  # monotonic time of the rows (None: never read)
        self._ok: bool | None = None  # last refresh succeeded (None: no source yet)
        self._error: str | None = None
        self._lock = threading.Lock()

    def set_source(self, source: QueueSource | None, ttl: float | None = None) -> None:
        """Read the queue from ``source`` at scrape time (``None``: only what :func:`queue`
        pushes)."""
        with self._lock:
            self._source = source
            if ttl is not None:
                self.ttl = ttl
            self._at = None
            self._ok = None
            self._error = None

    def push(self, rows: Sequence[Any]) -> None:
        """Rows an engine already read (e.g. after a cycle): used until they are ``ttl`` old."""
        with self._lock:
            self._rows = list(rows)
            self._at = time.monotonic()
            self._ok = True
            self._error = None

    def refresh(self, *, force: bool = False) -> tuple[bool | None, str | None]:
        """Read the source unless the cached rows are fresh; return (ok, error)."""
        with self._lock:
            fresh = self._at is not None and time.monotonic() - self._at < self.ttl
            if self._source is not None and (force or not fresh):
                try:
                    self._rows = list(self._source())
                    self._ok, self._error = True, None
                except Exception as exc:
                    self._rows = ()
                    self._ok, self._error = False, f"{type(exc).__name__}: {exc}"
                self._at = time.monotonic()
            return self._ok, self._error

    def rows(self) -> list[Any]:
        """The cached rows (after :meth:`refresh`)."""
        with self._lock:
            return list(self._rows)

    def describe(self) -> Iterable[Metric]:
        """The families without samples (so registering never calls the source)."""
        for name, _attr, doc in _QUEUE_GAUGES:
            yield GaugeMetricFamily(name, doc, labels=["tenant_id"])
        yield GaugeMetricFamily("metersync_sync_database_up", "1 when the last queue read worked.")

    def collect(self) -> Iterator[Metric]:
        """The queue gauges of every tenant in the cached rows."""
        ok, _error = self.refresh()
        rows = self.rows() if ok is not False else []
        for name, attr, doc in _QUEUE_GAUGES:
            family = GaugeMetricFamily(name, doc, labels=["tenant_id"])
            for row in rows:
                value = _field(row, attr)
                family.add_metric([str(_field(row, "tenant_id"))], float(value or 0))
            yield family
        if ok is not None:
            yield GaugeMetricFamily(
                "metersync_sync_database_up",
                "1 when the last read of the queue from the sync database worked.",
                value=1.0 if ok else 0.0,
            )


def _field(row: Any, name: str) -> Any:
    if isinstance(row, dict):
        return row.get(name)
    return getattr(row, name, None)


#: The process-wide queue collector (its source is set by :func:`metersync.observe.serve`).
QUEUE = QueueCollector()
REGISTRY.register(QUEUE)


def queue(rows: Sequence[Any]) -> None:
    """Push ``queue_status()`` rows the engine already has (no extra query at scrape time)."""
    try:
        QUEUE.push(rows)
    except Exception as exc:
        _complain("queue() failed", exc)

"""One orchestration path: upload and download cycles for many tenants (issue 9, item 2).

The command line (``upload``, ``download``, ``sync --once``, the ``sync`` loop) and the library's
:class:`~metersync.engine.manager.SyncManager` (``run_cycle``, the auto loop) both run their
cycles through a :class:`Scheduler`; they only differ in what they print or return.

How a cycle runs::

    tenants ──► up to `concurrency` workers, each leasing ONE connection of a small pool
                 per tenant, in order: upload (its lock) → download (its lock) → sync_log row
                 sizes and key from ONE shared TenantCache (one LISTEN connection for all)

* **Bounded concurrency.** At most ``concurrency`` tenants run at once, each on its own
  connection (a ``SyncDatabase`` is one connection and not safe for two tasks). A connection is
  *leased* to one task at a time; the lease is a per-connection lock, so even schedulers (or
  managers) that share one connection take turns instead of racing on it.
* **Per-tenant locks.** The upload and download managers take the tenant's advisory lock for
  their operation; a tenant another worker holds is *skipped* (``busy``), not an error.
* **Live sizes.** The managers read the shared cache at the start of each operation; a NOTIFY
  (``tenant set``) drops the entry, so a new size applies from the next cycle on.
* **Bookkeeping in bulk.** A cycle of many tenants loads their sizes and keys with ONE query
  (:meth:`TenantCache.prime`) and each worker writes its sync_log rows in one round trip, so a
  tenant costs only its own upload/download statements (issue 12: many small tenants).
* **Groups of small tenants.** A worker takes up to 16 waiting tenants on one connection: their
  upload locks in ONE statement, their first batches in ONE COPY, and — for those whose first
  batch is their whole queue — their marks in ONE UPDATE after the last of them
  (:class:`~metersync.engine.marks.GroupMarks`); their results are recorded after it.

The error policy (the only one; the CLI and SyncManager do not add their own):

=========================================  =================================================
what happened                              what the scheduler does
=========================================  =================================================
another worker holds the tenant's lock     operation skipped (outcome ``busy``), INFO line
readings rejected one by one               operation done; ``partial`` if something moved,
                                           ``rejected`` (not a success) if nothing did
Client System refused the key (401/403)    operation failed; in a loop the tenant is parked
                                           (one ERROR) until its ``api_key`` changes
413, 400, malformed page, odd answer,      operation failed (one ERROR per tenant and
a configuration or schema problem          cycle); the tenant is tried again next cycle
Client System unreachable (retries spent)  operation failed; the cycle ends for everyone
                                           (one Client System serves all tenants)
sync database unavailable (or lock lost)   the cycle ends for everyone (one database)
anything else (a bug)                      operation failed, logged with its traceback
=========================================  =================================================

A cycle that ended on an outage is logged once (one WARNING for the cycle, not one per tenant)
and the loop retries after a backoff (1 s, doubling, at most the interval) instead of the full
interval; the first good cycle resets it. Only a stop request ends the loop.

A stop (:meth:`Scheduler.request_stop`, e.g. SIGINT/SIGTERM) starts no new tenant or batch:
the batches in flight finish (POST and mark) and the cycle returns. Cancelling the task instead
abandons the POSTs in flight unmarked (idempotent Client System: they go again next run; a
non-idempotent one: held in doubt): nothing is marked without a confirmation either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import logging
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

from metersync import observe
from metersync.batch_sizes import sizes_from_row
from metersync.engine.download import DownloadManager, DownloadReport
from metersync.engine.marks import GroupMarks
from metersync.engine.tenant_cache import TenantCache, TenantSettings
from metersync.engine.upload import MeterReadingUploadManager, UploadReport
from metersync.errors import (
    AuthError,
    ConfigError,
    DatabaseUnavailable,
    MeterSyncError,
    RemoteUnavailableError,
    TenantBusyError,
)

__all__ = [
    "OPERATIONS",
    "EngineOptions",
    "OperationFailed",
    "OperationResult",
    "Scheduler",
    "operation_outcome",
]

log = logging.getLogger(__name__)

#: The operations of a full cycle, in the order they run for a tenant.
OPERATIONS = ("upload", "download")

#: First retry delay after an outage (seconds); doubles per failed cycle, capped at the interval.
_BACKOFF_FIRST = 1.0
#: sync_log rows a worker keeps before writing them in one round trip (bounded loss on a kill).
_LOG_FLUSH_ROWS = 64


#: Most tenants one worker takes at a time in a cycle of many (one lock statement, one fetch
#: and one unlock for all of them instead of one each): 16 keeps the locks held at most a few
#: tenants' time longer, and 300 tenants cost ~20 group statements per statement kind.
_GROUP_MAX = 16


def _group_size(waiting: int, workers: int) -> int:
    """How many tenants a worker takes now: 1 (the one it popped) when the queue is short,
    else an even share of what is waiting, at most :data:`_GROUP_MAX`."""
    return max(1, min(_GROUP_MAX, waiting, (waiting + 1) // max(workers, 1)))


class OperationFailed(MeterSyncError):
    """An operation ended early without an exception object to show (the report's text only)."""


# -- results ----------------------------------------------------------------------------------


def operation_outcome(
    operation: str,
    report: UploadReport | DownloadReport | None,
    error: BaseException | None,
) -> str:
    """The outcome word of one operation (metrics, sync_log, the CLI's result column).

    ``error`` — it failed; ``rejected`` — an upload sent readings and the Client System refused
    every one of them (nothing moved: not a success); ``partial`` — something moved and some
    readings were rejected; ``ok`` — everything sent was confirmed, or there was nothing to send
    and nothing failed.
    """
    if error is not None or (report is not None and report.error):
        return "error"
    if operation == "upload" and isinstance(report, UploadReport):
        if report.readings_sent and not report.confirmed:
            return "rejected"
        if report.rejected or report.quarantined:
            return "partial"
    return "ok"


def _empty_report(tenant_id: int, operation: str) -> UploadReport | DownloadReport:
    return UploadReport(tenant_id) if operation == "upload" else DownloadReport(tenant_id)


@dataclasses.dataclass
class OperationResult:
    """One upload or download of one tenant: its report and how it ended.

    ``error`` is the exception that ended it early — raised by the manager (``raised`` True) or
    the cause behind ``report.error`` (``raised`` False) — and ``skipped`` says why it did not
    run (another worker held the tenant, or the Client System offers no download).
    """

    tenant_id: int
    operation: str
    report: UploadReport | DownloadReport | None = None
    error: BaseException | None = None
    skipped: str | None = None
    raised: bool = False

    @property
    def outcome(self) -> str:
        """``busy``/``skipped``, else :func:`operation_outcome`."""
        if self.skipped is not None:
            return "busy" if self.skipped.startswith("busy") else "skipped"
        return operation_outcome(self.operation, self.report, self.error)

    @property
    def success(self) -> bool:
        """What ``sync_log.success`` records: something moved, or nothing was to move and
        nothing failed (an all-rejected upload is not a success; a partial one is)."""
        return self.outcome in ("ok", "partial")

    @property
    def ok(self) -> bool:
        """Nothing for an operator to look at: ``ok``, or skipped."""
        return self.outcome in ("ok", "busy", "skipped")

    @property
    def readings(self) -> int:
        """Readings moved: confirmed (upload) or stored new (download)."""
        if self.report is None:
            return 0
        if isinstance(self.report, UploadReport):
            return int(self.report.confirmed)
        return int(self.report.inserted)

    @property
    def error_text(self) -> str | None:
        """One line for sync_log, logs and tables (the report's text, else the exception's)."""
        if self.report is not None and self.report.error:
            return self.report.error
        if self.error is not None:
            return f"{type(self.error).__name__}: {self.error}"
        if self.outcome == "rejected":
            r = self.report
            assert isinstance(r, UploadReport)
            return (
                f"every reading sent was rejected by the Client System ({r.rejected} rejected, "
                f"{r.quarantined} quarantined); nothing moved"
            )
        return None

    def document(self) -> dict[str, Any]:
        """Plain data for ``--json``: the same keys whatever the outcome (skipped included)."""
        report = self.report or _empty_report(self.tenant_id, self.operation)
        doc: dict[str, Any] = {"tenant_id": self.tenant_id, "operation": self.operation}
        # The reports' fields are scalars: a shallow copy is asdict() without its deep copy
        # of every value (~0.1 ms per tenant, 300 tenants per cycle).
        doc.update((f.name, getattr(report, f.name)) for f in dataclasses.fields(report))
        seconds = report.seconds or 0.0
        doc["readings_per_s"] = round(self.readings / seconds, 1) if seconds > 0 else None
        doc["outcome"] = self.outcome
        doc["ok"] = self.ok
        doc["skip_reason"] = self.skipped  # ("skipped" is a download count)
        doc["error"] = self.error_text
        doc["error_type"] = type(self.error).__name__ if self.error is not None else None
        return doc


# -- options ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EngineOptions:
    """How each tenant's upload and download managers run (see their classes)."""

    max_retries: int = 5
    max_batches_per_cycle: int | None = None
    max_seconds_per_cycle: float | None = None
    max_pages_per_cycle: int | None = None
    overlap: bool = True
    max_in_flight: int = 2
    #: Page fields that are not columns of meter_reading and may be dropped (the setting
    #: ``drop_unknown_fields``): ``None`` refuses such a page, ``"*"`` drops any, or names.
    drop_unknown_fields: tuple[str, ...] | str | None = None


# -- the connection pool ----------------------------------------------------------------------

# One lock per connection object, whoever holds it: schedulers (or SyncManagers) that were given
# the same SyncDatabase take turns on it instead of interleaving statements and transactions.
_connection_locks: weakref.WeakKeyDictionary[Any, asyncio.Lock] = weakref.WeakKeyDictionary()
# The connection the current task has leased (tasks copy it: a POST task sees its parent's).
_leased: contextvars.ContextVar[Any] = contextvars.ContextVar("metersync_leased_db", default=None)


def _lock_of(db: Any) -> asyncio.Lock:
    lock = _connection_locks.get(db)
    if lock is None:
        lock = _connection_locks[db] = asyncio.Lock()
    return lock


class _Pool:
    """Up to ``size`` SyncDatabase connections, opened on demand and leased one task at a time.

    With ``database`` given, the pool is that one connection (not closed here).
    """

    def __init__(self, *, dsn: str | None, database: Any, size: int) -> None:
        self._dsn = dsn
        self._given = database
        self._size = 1 if database is not None else size
        self._all: list[Any] = [database] if database is not None else []
        self._idle: asyncio.Queue[Any] = asyncio.Queue()
        if database is not None:
            self._idle.put_nowait(database)
        self._opening = 0

    @property
    def size(self) -> int:
        return self._size

    async def _open(self) -> Any:
        from metersync.store.database import SyncDatabase  # psycopg: loaded on demand

        assert self._dsn is not None
        return await SyncDatabase.connect(self._dsn)

    @contextlib.asynccontextmanager
    async def lease(self) -> AsyncIterator[Any]:
        """A connection for this task alone (re-entrant: a task holding one gets it again)."""
        held = _leased.get()
        if held is not None:
            yield held
            return
        if self._idle.empty() and len(self._all) + self._opening < self._size:
            self._opening += 1
            try:
                db = await self._open()
            finally:
                self._opening -= 1
            self._all.append(db)
        else:
            db = await self._idle.get()
        try:
            async with _lock_of(db):
                token = _leased.set(db)
                try:
                    yield db
                finally:
                    _leased.reset(token)
        finally:
            self._idle.put_nowait(db)

    async def close(self) -> None:
        """Close the connections this pool opened."""
        opened = [db for db in self._all if db is not self._given]
        self._all = [self._given] if self._given is not None else []
        for db in opened:
            with contextlib.suppress(Exception):
                await db.close()


class _LeasedSource:
    """The tenant cache's database: the connection the calling task leased, else a short lease.

    So the one shared cache never runs a statement on a connection another task is using.
    """

    def __init__(self, pool: _Pool) -> None:
        self._pool = pool

    async def get_tenant_batch_config(self, tenant_id: int) -> Any:
        async with self._pool.lease() as db:
            return await db.get_tenant_batch_config(tenant_id)

    async def get_tenant(self, tenant_id: int) -> Any:
        async with self._pool.lease() as db:
            return await db.get_tenant(tenant_id)


# -- per tenant -------------------------------------------------------------------------------


@dataclasses.dataclass
class _Tenant:
    tenant_id: int
    client: Any = None
    own_client: bool = False
    client_key: str | None = None  # the api_key the client was built with (auth parking)
    uploader: MeterReadingUploadManager | None = None
    downloader: DownloadManager | None = None
    bound_db: Any = None  # the connection and client the two managers were built with
    bound_client: Any = None
    parked: str | None = None  # why the loop stopped running this tenant (refused key)


#: Builds a Client System client for a tenant from its API key (the CLI's settings decide how).
ClientFactory = Callable[[int, str], Any]


class Scheduler:
    """Runs upload/download cycles for many tenants with one error policy (module docstring).

    Give the sync database as ``dsn`` (a pool of up to ``concurrency`` connections is opened
    and closed here) or ``database`` (one open connection, leased in turns, not closed here).
    ``cache`` is a shared :class:`TenantCache` (not stopped here); by default one is built whose
    loads go through the pool, listening on ``dsn`` when ``listen`` is true. Clients come from
    :meth:`add_tenant` or, built lazily from the tenant row's key, from ``client_factory``.
    """

    def __init__(
        self,
        *,
        dsn: str | None = None,
        database: Any = None,
        concurrency: int = 4,
        cache: TenantCache | None = None,
        cache_ttl_seconds: float = 60.0,
        listen: bool = True,
        client_factory: ClientFactory | None = None,
        options: EngineOptions | None = None,
        write_sync_log: bool = True,
    ) -> None:
        if database is None and not dsn:
            raise ConfigError("Scheduler: give the sync database as `dsn` or `database`")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigError(f"Scheduler: concurrency must be an int >= 1, got {concurrency!r}")
        self._dsn = dsn
        self._pool = _Pool(dsn=dsn, database=database, size=concurrency)
        self._own_cache = cache is None
        self.cache: TenantCache = cache or TenantCache(
            _LeasedSource(self._pool),  # type: ignore[arg-type]
            ttl_seconds=cache_ttl_seconds,
        )
        self._listen = listen and dsn is not None
        self._client_factory = client_factory
        self.options = options or EngineOptions()
        self._write_sync_log = write_sync_log
        self._tenants: dict[int, _Tenant] = {}
        self._stop = asyncio.Event()
        self._profiles: dict[int, Any] = {}  # id(client) -> ClientProfile (asked once per run)
        self._said_no_download = False
        self._opened = False
        #: Results of the cycle running now, as they come (progress displays read them).
        self.running: dict[tuple[int, str], Any] = {}
        #: First batches a group fetched for its tenants' uploads (``_prefetch``), by tenant.
        self._prefetched: dict[int, Any] = {}
        #: The one UPDATE of the group a tenant runs in (``_group``), by tenant.
        self._group_marks: dict[int, GroupMarks] = {}

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def concurrency(self) -> int:
        """How many tenants run at once (1 with a single given connection)."""
        return self._pool.size

    async def open(self) -> None:
        """Open the first connection, reflect ``meter_reading`` and start the cache's LISTEN."""
        if self._opened:
            return
        async with self._pool.lease() as db:
            await db.layout()  # an unsupported column type fails here, before anything moves
        if self._own_cache and self._listen:
            assert self._dsn is not None
            await self.cache.listen(self._dsn)
        self._opened = True

    async def close(self) -> None:
        """Close the clients built here, the cache's listener (if ours) and the pool."""
        for tenant in self._tenants.values():
            if tenant.own_client and tenant.client is not None:
                with contextlib.suppress(Exception):
                    await tenant.client.aclose()
                tenant.client = None
        if self._own_cache:
            with contextlib.suppress(Exception):
                await self.cache.stop_listening()
        await self._pool.close()
        self._opened = False

    async def __aenter__(self) -> Scheduler:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        """Lease a connection of the pool for something else (status queries, tenant checks)."""
        async with self._pool.lease() as db:
            yield db

    # -- tenants ---------------------------------------------------------------------------------

    def add_tenant(self, tenant_id: int, client: Any = None) -> None:
        """Run ``tenant_id`` in :meth:`run_cycle` (``client``: its Client System client, not
        closed here; ``None``: built from the tenant row's key by ``client_factory``)."""
        if tenant_id not in self._tenants:
            self._tenants[tenant_id] = _Tenant(tenant_id, client=client, own_client=False)
        elif client is not None:
            self._tenants[tenant_id].client = client

    @property
    def tenant_ids(self) -> list[int]:
        """The tenants :meth:`run_cycle` runs by default, in the order added."""
        return list(self._tenants)

    def managers(self, tenant_id: int) -> tuple[Any, Any]:
        """The tenant's current upload and download managers (``None`` before its first run)."""
        tenant = self._tenants.get(tenant_id)
        if tenant is None:
            return None, None
        return tenant.uploader, tenant.downloader

    def client_of(self, tenant_id: int) -> Any:
        """The tenant's Client System client (``None`` before its first run)."""
        tenant = self._tenants.get(tenant_id)
        return None if tenant is None else tenant.client

    async def _client(self, tenant: _Tenant, settings: TenantSettings) -> Any:
        """The tenant's client; rebuilt when the tenant row's key changed (a parked tenant)."""
        key = settings.api_key
        if tenant.client is not None and (not tenant.own_client or key == tenant.client_key):
            return tenant.client
        if self._client_factory is None:
            raise ConfigError(f"tenant {tenant.tenant_id}: no Client System client given for it")
        if not key:
            raise ConfigError(
                f"tenant {tenant.tenant_id} has no api_key in table tenant "
                "(re-add it with METERSYNC_API_KEY set)"
            )
        if tenant.client is not None:
            with contextlib.suppress(Exception):
                await tenant.client.aclose()
        observe.register_secret(key)  # masked in every log line, whatever code logs it
        tenant.client = self._client_factory(tenant.tenant_id, key)
        tenant.own_client = True
        tenant.client_key = key
        self._profiles.pop(id(tenant.client), None)
        return tenant.client

    def _bind(self, tenant: _Tenant, db: Any, client: Any) -> None:
        """(Re)build the tenant's managers on the leased connection and the current client."""
        if tenant.uploader is not None and (tenant.bound_db, tenant.bound_client) == (db, client):
            return
        o = self.options
        tenant.uploader = MeterReadingUploadManager(
            db,
            client,
            self.cache,
            tenant_id=tenant.tenant_id,
            max_retries=o.max_retries,
            max_batches=o.max_batches_per_cycle,
            max_seconds=o.max_seconds_per_cycle,
            overlap=o.overlap,
            max_in_flight=o.max_in_flight,
        )
        tenant.downloader = DownloadManager(
            db,
            client,
            self.cache,
            tenant_id=tenant.tenant_id,
            max_pages=o.max_pages_per_cycle,
            unknown_fields=o.drop_unknown_fields,
        )
        tenant.bound_db, tenant.bound_client = db, client

    async def prepare(self, tenant_id: int) -> tuple[Any, Any]:
        """Build the tenant's managers now (SyncManager's ``initialize``); returns them."""
        tenant = self._tenants.setdefault(tenant_id, _Tenant(tenant_id))
        async with self._pool.lease() as db:
            settings = await self.cache.get(tenant_id)
            client = await self._client(tenant, settings)
            self._bind(tenant, db, client)
        return tenant.uploader, tenant.downloader

    # -- stopping --------------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        """True once a stop was requested (until :meth:`reset_stop`)."""
        return self._stop.is_set()

    def request_stop(self) -> None:
        """Start no new tenant or batch; the batches in flight finish (POST and mark).

        Safe to call from a signal handler (it only sets flags); idempotent."""
        if not self._stop.is_set():
            log.info("stop requested: finishing the batches in flight")
        self._stop.set()
        for tenant in self._tenants.values():
            for part in (tenant.uploader, tenant.downloader):
                if part is not None:
                    part.request_stop()

    def reset_stop(self) -> None:
        """Allow cycles again after a stop (SyncManager's ``start`` after ``stop``)."""
        self._stop.clear()

    # -- one operation ---------------------------------------------------------------------------

    async def _offers_download(self, client: Any) -> bool:
        """Whether the Client System's profile offers download (asked once per client)."""
        probe = getattr(client, "profile", None)
        if not callable(probe):
            return True  # a client without profiles speaks the metersync contract
        key = id(client)
        if key not in self._profiles:
            profile = await probe()
            self._profiles[key] = profile
            observe.profile(getattr(profile, "name", "unknown"))
        return bool(getattr(self._profiles[key], "download", True))

    async def run_operation(
        self,
        tenant_id: int,
        operation: str,
        *,
        log_rows: list[dict[str, Any]] | None = None,
    ) -> OperationResult:
        """Run one upload or download of one tenant and record it (sync_log, metrics).

        Never raises for what the error policy covers: the result carries it (``raised`` says
        whether the manager raised it). ``CancelledError`` and ``KeyboardInterrupt`` pass.
        The sync_log row is written at once, or appended to ``log_rows`` for the caller to
        write in one round trip with others (:meth:`run_cycle` does, per worker).
        """
        result = await self._perform(tenant_id, operation)
        await self._record(result, log_rows)
        return result

    async def _perform(self, tenant_id: int, operation: str) -> OperationResult:
        """Run the operation; its result, not recorded yet (:meth:`_record`)."""
        if operation not in OPERATIONS:
            raise ValueError(f"operation must be one of {OPERATIONS}, got {operation!r}")
        tenant = self._tenants.setdefault(tenant_id, _Tenant(tenant_id))
        result = OperationResult(tenant_id, operation)
        try:
            await self._run_with_lease(tenant, result)
        except DatabaseUnavailable as exc:  # no connection could be (re)opened for it
            result.error, result.raised = exc, True
        return result

    async def _record(self, result: OperationResult, log_rows: list[dict[str, Any]] | None) -> None:
        """The ops hooks and the sync_log row of an operation that ended (the row written at
        once, or appended to ``log_rows`` for the caller to write with others)."""
        self._observe(result)
        if result.skipped is not None or not self._write_sync_log:
            return
        row = _log_row(result)
        if log_rows is not None:
            log_rows.append(row)
            return
        try:
            async with self._pool.lease() as db:
                await self._write_logs(db, [row])
        except DatabaseUnavailable as exc:  # reported once for the cycle by whoever handles it
            log.debug("sync_log row not written: %s", exc)

    async def _run_with_lease(self, tenant: _Tenant, result: OperationResult) -> None:
        tenant_id, operation = tenant.tenant_id, result.operation
        async with self._pool.lease() as db:
            try:
                await self._run_leased(tenant, db, result)
            except TenantBusyError as exc:
                log.info("%s", exc)  # normal with several workers: another one has it
                result.skipped = f"busy: {exc}"
                result.report = None
            except Exception as exc:
                result.error, result.raised = exc, True
                part = tenant.uploader if operation == "upload" else tenant.downloader
                if part is not None and part.tenant_id == tenant_id:
                    result.report = part.report

    async def _run_leased(self, tenant: _Tenant, db: Any, result: OperationResult) -> None:
        settings = await self.cache.get(tenant.tenant_id)
        client = await self._client(tenant, settings)
        self._bind(tenant, db, client)
        b = settings.batch
        observe.batch_sizes(tenant.tenant_id, b.upload_batch_size, b.download_batch_size, b.source)
        key = (tenant.tenant_id, result.operation)
        if result.operation == "upload":
            part: Any = tenant.uploader
            # The group's first batch for it, fetched under its lock on this connection, and
            # the group's one UPDATE, which marks it when it is the tenant's whole queue.
            prefetched = self._prefetched.pop(tenant.tenant_id, None)
            group_marks = self._group_marks.pop(tenant.tenant_id, None)
            if self._stop.is_set():  # checked with no await before upload() clears its flag
                result.skipped = "stopped before it started"
                return
            self.running[key] = part
            try:
                result.report = await part.upload(prefetched=prefetched, group_marks=group_marks)
            finally:
                self.running.pop(key, None)
        else:
            if not await self._offers_download(client):
                name = getattr(self._profiles.get(id(client)), "name", "this")
                if not self._said_no_download:
                    self._said_no_download = True
                    log.warning(
                        "the Client System (%s profile) offers no download: uploads only",
                        name,
                    )
                result.skipped = f"no download: the Client System ({name} profile) offers none"
                return
            part = tenant.downloader
            if self._stop.is_set():
                result.skipped = "stopped before it started"
                return
            self.running[key] = part
            try:
                result.report = await part.download()
            finally:
                self.running.pop(key, None)
        _take_error(result, part)

    @staticmethod
    async def _write_logs(db: Any, rows: list[dict[str, Any]]) -> None:
        """Write sync_log rows (one round trip); bookkeeping never hides an operation's outcome."""
        if not rows:
            return
        try:
            if len(rows) == 1 or not hasattr(db, "write_sync_logs"):
                for row in rows:
                    await db.write_sync_log(**row)
            else:
                await db.write_sync_logs(rows)
        except DatabaseUnavailable as exc:
            # The outage is reported once for the cycle by whoever handles it.
            log.debug("%d sync_log row(s) not written: %s", len(rows), exc)
        except Exception as exc:
            log.error("writing %d sync_log row(s) failed: %s", len(rows), exc)

    @staticmethod
    def _observe(result: OperationResult) -> None:
        """The ops hooks at the end of an operation (metrics, liveness for /healthz)."""
        kind = type(result.error).__name__ if result.error is not None else None
        observe.cycle(result.tenant_id, result.operation, result.outcome, kind)
        report = result.report
        if report is None:
            return
        observe.statements(result.tenant_id, report.statements)

    # -- a cycle ---------------------------------------------------------------------------------

    async def run_cycle(
        self,
        tenant_ids: Iterable[int] | None = None,
        operations: Sequence[str] = OPERATIONS,
        *,
        on_result: Callable[[OperationResult], Any] | None = None,
    ) -> list[OperationResult]:
        """Run ``operations`` (in order) for every tenant, ``concurrency`` tenants at a time.

        Returns the results in tenant order (``on_result`` also gets each as it ends). An outage
        (database, Client System) ends the cycle: tenants not started yet are left out. A stop
        request starts no new tenant.
        """
        ids = list(self._tenants if tenant_ids is None else tenant_ids)
        for tenant_id in ids:
            self._tenants.setdefault(tenant_id, _Tenant(tenant_id))
        queue: list[int] = list(reversed(ids))
        results: dict[int, list[OperationResult]] = {}
        outage = asyncio.Event()
        await self._prime(ids)

        async def finish(result: OperationResult, log_rows: list[dict[str, Any]]) -> None:
            await self._record(result, log_rows)
            if on_result is not None:
                on_result(result)
            if _ends_cycle(result.error):
                outage.set()

        async def one_tenant(
            tenant_id: int,
            log_rows: list[dict[str, Any]],
            marks: GroupMarks | None,
            held: list[OperationResult],
        ) -> None:
            tenant = self._tenants[tenant_id]
            if tenant.parked is not None:
                try:
                    if not await self._unpark(tenant):
                        for op in operations:  # alive, idle on purpose (/healthz)
                            observe.cycle(tenant_id, op, "parked", "AuthError")
                        return
                except DatabaseUnavailable:
                    return  # the next operation meets the outage and reports it
            mine = results.setdefault(tenant_id, [])
            holding = False
            for operation in operations:
                if self._stop.is_set() or outage.is_set():
                    break
                observe.bind(tenant=tenant_id, operation=operation)  # this task's logs
                result = await self._perform(tenant_id, operation)
                mine.append(result)
                # An upload whose readings wait for the group's UPDATE is recorded after it
                # (and what the tenant does next, so its results keep their order).
                holding = holding or (marks is not None and marks.holds(tenant_id))
                if holding:
                    held.append(result)
                else:
                    await finish(result, log_rows)
                if _ends_cycle(result.error):
                    outage.set()
                    break

        async def worker() -> None:
            log_rows: list[dict[str, Any]] = []  # this worker's sync_log rows, written in bulk
            try:
                while queue and not self._stop.is_set() and not outage.is_set():
                    group = [queue.pop() for _ in range(_group_size(len(queue), workers))]
                    held: list[OperationResult] = []
                    async with self._group(group, operations) as marks:
                        for tenant_id in group:
                            if self._stop.is_set() or outage.is_set():
                                break
                            await one_tenant(tenant_id, log_rows, marks, held)
                        if marks is not None:  # the group's one UPDATE, before its locks go
                            await marks.commit()
                        # Recorded at once: finish does no I/O with a log list, so the loop
                        # runs nothing between the readings counted and their cycles (the
                        # unlock used to sit there, and a scrape saw readings uploaded by a
                        # cycle not ended yet: tests/observe/test_observe_sync.py, once in CI).
                        for result in held:
                            if result.operation == "upload":
                                self._settled(result)
                            await finish(result, log_rows)
                    if len(log_rows) >= _LOG_FLUSH_ROWS:
                        await self._flush(log_rows)
            finally:
                await self._flush(log_rows)

        workers = min(self._pool.size, max(len(ids), 1))
        await asyncio.gather(*(worker() for _ in range(workers)))
        return [r for tenant_id in ids for r in results.get(tenant_id, [])]

    @contextlib.asynccontextmanager
    async def _group(
        self, group: list[int], operations: Sequence[str]
    ) -> AsyncIterator[GroupMarks | None]:
        """Run a group of tenants on ONE connection holding their upload locks and first
        batches (:meth:`_prefetch`), released when the group is done (ONE statement). One
        tenant, or a cycle without upload, runs as it is.

        Yields the group's :class:`GroupMarks` (``None`` without a group): the tenants whose
        first batch was their whole queue leave its mark to it. The caller runs its ONE
        UPDATE (:meth:`GroupMarks.commit`) after the last tenant; here it runs only for what
        an error left, before the locks go — and a cancelled group marks nothing (those
        readings go again next cycle)."""
        async with contextlib.AsyncExitStack() as stack:
            db: Any = None
            locked: list[int] = []
            marks: GroupMarks | None = None
            if len(group) > 1 and "upload" in operations:
                try:
                    db = await stack.enter_async_context(self._pool.lease())
                except DatabaseUnavailable:  # each operation meets it and reports it
                    db = None
                else:
                    locked = await self._prefetch(db, group)
            if locked and hasattr(db, "mark_synchronized_many"):
                marks = GroupMarks(db.mark_synchronized_many)
                self._group_marks.update((tenant_id, marks) for tenant_id in locked)
            cancelled = False
            try:
                yield marks
            except asyncio.CancelledError:
                cancelled = True
                raise
            finally:
                for tenant_id in locked:  # those not run (a stop): nothing to keep
                    self._prefetched.pop(tenant_id, None)
                    self._group_marks.pop(tenant_id, None)
                try:  # the caller commits; here only what a cancel or an error left
                    if marks is not None and cancelled:
                        _abandon(marks)
                    elif marks is not None:
                        await marks.commit()
                finally:  # the locks go even when the UPDATE is cancelled
                    if locked:
                        await db.unlock_tenants(locked, "upload")

    def _settled(self, result: OperationResult) -> None:
        """An upload held for its group's UPDATE: its report and error as they are now."""
        part = self._tenants[result.tenant_id].uploader  # it ran: its batch is in the group
        result.report = part.report
        if not result.raised:
            _take_error(result, part)

    async def _prefetch(self, db: Any, tenant_ids: list[int]) -> list[int]:
        """A group's upload locks (ONE statement) and first batches (ONE COPY), kept for the
        tenants' upload operations; returns the tenants locked (the caller unlocks them, ONE
        statement, when the group is done).

        Only tenants that can use it take part: not parked, their sizes and client at hand,
        a Client System with the idempotent profile (a fetch there claims nothing). Anything
        else — and any tenant another worker holds — runs as before, on its own statements,
        which then report whatever stopped it here (an outage, a missing row).
        """
        if not hasattr(db, "fetch_unsynchronized_many"):
            return []  # an adapter without the group statements: each tenant on its own
        limits: list[tuple[int, int]] = []
        try:
            for tenant_id in tenant_ids:
                tenant = self._tenants[tenant_id]
                if tenant.parked is not None:
                    continue
                settings = await self.cache.get(tenant_id)
                client = await self._client(tenant, settings)
                probe = getattr(client, "profile", None)
                if callable(probe) and not getattr(await probe(), "idempotent", False):
                    continue
                limits.append((tenant_id, settings.batch.upload_batch_size))
            if len(limits) < 2:
                return []
            locked = await db.try_lock_tenants([t for t, _ in limits], "upload")
            if not locked:
                return []
            try:
                held = set(locked)
                batches = await db.fetch_unsynchronized_many(
                    [(t, n) for t, n in limits if t in held], max_retries=self.options.max_retries
                )
            except BaseException:
                await db.unlock_tenants(locked, "upload")
                raise
        except MeterSyncError as exc:  # said again, per tenant, by the operation itself
            log.debug("group prefetch skipped: %s: %s", type(exc).__name__, exc)
            return []
        self._prefetched.update(batches)
        return locked

    async def _flush(self, log_rows: list[dict[str, Any]]) -> None:
        rows, log_rows[:] = list(log_rows), []
        if not rows:
            return
        try:
            async with self._pool.lease() as db:
                await self._write_logs(db, rows)
        except DatabaseUnavailable as exc:  # reported once for the cycle by the loop
            log.debug("%d sync_log row(s) not written: %s", len(rows), exc)

    async def _prime(self, tenant_ids: list[int]) -> None:
        """Load the sizes and keys of the cycle's tenants not in the cache with ONE query,
        instead of two statements per tenant (many tenants; one tenant loads as before)."""
        missing = {t for t in tenant_ids if not self.cache.cached(t)}
        if len(missing) < 2:
            return

        async def load() -> list[TenantSettings]:
            async with self._pool.lease() as db:
                rows = await db.list_tenants()
            return [
                TenantSettings(
                    tenant_id=row.tenant_id,
                    api_key=row.api_key,
                    batch=sizes_from_row(
                        row.tenant_id,
                        {
                            "download_batch_size": row.download_batch_size,
                            "upload_batch_size": row.upload_batch_size,
                        },
                    ),
                )
                for row in rows
                if row.tenant_id in missing
            ]

        try:
            # Lease first, then the cache's lock: the order every cache load takes (no deadlock).
            async with self._pool.lease():
                await self.cache.prime(load)
        except Exception as exc:  # each tenant then loads its own row (with its own warnings)
            log.debug("tenant cache not primed: %s: %s", type(exc).__name__, exc)

    async def _unpark(self, tenant: _Tenant) -> bool:
        """A parked tenant runs again once its row carries another api_key."""
        async with self._pool.lease():  # cache loads run on a leased connection only
            settings = await self.cache.get(tenant.tenant_id)
        if settings.api_key and settings.api_key != tenant.client_key and tenant.own_client:
            log.info("tenant %s: api_key changed; syncing it again", tenant.tenant_id)
            tenant.parked = None
            return True
        return False

    # -- the loop --------------------------------------------------------------------------------

    async def run_forever(
        self,
        interval: float,
        *,
        tenant_ids: Iterable[int] | None = None,
        operations: Sequence[str] = OPERATIONS,
        on_cycle: Callable[[list[OperationResult], float], Any] | None = None,
    ) -> int:
        """Run cycles every ``interval`` seconds until :meth:`request_stop`; return how many.

        ``on_cycle(results, seconds)`` is called after every cycle (printing, totals).
        """
        ids = list(self._tenants if tenant_ids is None else tenant_ids)
        cycles = 0
        backoff = 0.0
        while not self._stop.is_set():
            started = time.perf_counter()
            cycle_field = observe.loop_cycle(cycles + 1)  # log lines' cycle; /healthz clock
            try:
                results = await self.run_cycle(ids, operations)
            except Exception as exc:  # a bug outside any operation: keep the daemon alive
                log.exception("sync cycle crashed: %s", exc)
                results = []
            seconds = time.perf_counter() - started
            cycles += 1
            self._apply_policy(results)
            if on_cycle is not None:
                outcome = on_cycle(results, seconds)
                if asyncio.iscoroutine(outcome):
                    await outcome
            outage = next((r.error for r in results if _ends_cycle(r.error)), None)
            if outage is not None:
                backoff = min(interval, backoff * 2 if backoff else _BACKOFF_FIRST)
                log.warning(
                    "%s unavailable, cycle ended early (next try in %g s): %s",
                    "sync database" if _is_db_outage(outage) else "Client System",
                    backoff,
                    _one_line(outage),
                )
                wait = backoff
            else:
                backoff = 0.0
                wait = interval
            observe.unbind(cycle_field)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), wait)
        return cycles

    def _apply_policy(self, results: list[OperationResult]) -> None:
        """Log each tenant's failure once per cycle; park tenants whose key was refused."""
        for r in results:
            if r.error is None or _ends_cycle(r.error):
                continue  # outages: one line for the whole cycle (run_forever)
            if isinstance(r.error, AuthError):
                tenant = self._tenants[r.tenant_id]
                if tenant.own_client:  # a key we can see change: wait for it
                    tenant.parked = "refused key"
                log.error(
                    "tenant %s %s: %s%s",
                    r.tenant_id,
                    r.operation,
                    _one_line(r.error),
                    "; not synced again until its api_key changes" if tenant.own_client else "",
                    extra={"tenant": r.tenant_id, "operation": r.operation},
                )
            elif r.raised:
                log.log(
                    logging.ERROR,
                    "tenant %s %s failed: %s",
                    r.tenant_id,
                    r.operation,
                    _one_line(r.error),
                    exc_info=r.error if not isinstance(r.error, MeterSyncError) else None,
                    extra={"tenant": r.tenant_id, "operation": r.operation},
                )


def _log_row(result: OperationResult) -> dict[str, Any]:
    """The sync_log row of one operation (``success`` as :attr:`OperationResult.success`)."""
    report = result.report or _empty_report(result.tenant_id, result.operation)
    if isinstance(report, UploadReport):
        batches, records = report.batches, report.confirmed
    else:
        batches, records = report.pages, report.inserted
    return {
        "tenant_id": result.tenant_id,
        "operation": result.operation,
        "batches": batches,
        "records": records,
        "statements": report.statements,
        "duration_s": report.seconds,
        "success": result.success,
        "error": None if result.success else result.error_text,
    }


def _take_error(result: OperationResult, part: Any) -> None:
    """The cause behind ``report.error`` (the managers keep it), so callers map types, not
    text."""
    if result.report is not None and result.report.error:
        cause = getattr(part, "error_cause", None)
        result.error = cause if cause is not None else OperationFailed(result.report.error)


def _abandon(marks: GroupMarks) -> None:
    """A cancelled group: its tenants' confirmed readings stay unmarked (said once each)."""
    for share in marks.abandon():
        log.warning(
            "tenant %s: the cycle was cancelled before %d confirmed readings were marked; they "
            "go up again next cycle and count as duplicates",
            share.tenant_id,
            sum(b.rows for b in share.batches),
        )


def _is_db_outage(exc: BaseException | None) -> bool:
    if isinstance(exc, DatabaseUnavailable):
        return True
    try:
        import psycopg
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, psycopg.OperationalError)


def _ends_cycle(exc: BaseException | None) -> bool:
    """Outages of what every tenant shares end the cycle: the database, the Client System."""
    return exc is not None and (_is_db_outage(exc) or isinstance(exc, RemoteUnavailableError))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())

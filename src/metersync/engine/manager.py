"""The library's face of the engine: one tenant's sync (spec §8).

:class:`SyncManager` keeps the seed's API — initialize (connect, reflect the table, load and log
the tenant's sizes, listen for changes), ``upload_readings`` / ``download_readings`` /
``run_cycle``, the auto-sync loop, ``status`` — and runs all of it through the one orchestration
path, :class:`~metersync.engine.scheduler.Scheduler` (locks, sync_log rows, the error policy,
the loop), which the command line uses too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import warnings
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any

from metersync.engine.download import DownloadManager, DownloadReport
from metersync.engine.scheduler import EngineOptions, OperationResult, Scheduler, operation_outcome
from metersync.engine.tenant_cache import TenantCache
from metersync.engine.upload import MeterReadingUploadManager, UploadReport
from metersync.errors import ConfigError, TenantBusyError

__all__ = ["CycleReport", "SyncManager", "SyncOptions"]

log = logging.getLogger(__name__)


@dataclass
class SyncOptions:
    """Configuration of a :class:`SyncManager` (the seed's fields, in Python spelling).

    Give the sync database as ``database`` (an open ``SyncDatabase``, not closed by the manager)
    or ``dsn`` (connected and closed by the manager; also used to LISTEN for tenant changes),
    and the Client System as ``api_client`` (not closed by the manager) or ``api_url`` (a client
    is built with the tenant's API key from the tenant row). ``max_retries`` is how many
    individual rejections quarantine a reading. ``batch_size`` is the old global option: it is
    deprecated, warns, and never overrides the tenant's own sizes.
    """

    tenant_id: int | None = None
    dsn: str | None = None
    database: Any = None
    api_client: Any = None
    api_url: str | None = None
    sync_interval_minutes: float = 5.0
    max_retries: int = 5
    enable_auto_sync: bool = False
    connectivity_check_interval_ms: int = 30_000
    batch_size: int | None = None
    cache_ttl_seconds: float = 60.0
    #: A :class:`TenantCache` shared by several managers of one process (the CLI's
    #: ``--all-tenants`` worker): its owner starts and stops its one LISTEN connection, the
    #: manager neither listens nor stops it, and ``cache_ttl_seconds`` is then unused. ``None``
    #: (the default): the manager builds its own cache and listens on ``dsn`` when given.
    cache: TenantCache | None = None
    max_batches_per_cycle: int | None = None
    max_seconds_per_cycle: float | None = None
    max_pages_per_cycle: int | None = None
    overlap: bool = True
    #: POSTs of the tenant in flight at once during an upload (``MeterReadingUploadManager``).
    max_in_flight: int = 2
    #: Download page fields that are not columns and may be dropped (``None``: refuse such a
    #: page; ``"*"``: drop any; or a tuple of names). The setting ``drop_unknown_fields``.
    drop_unknown_fields: tuple[str, ...] | str | None = None

    def __post_init__(self) -> None:
        if self.tenant_id is None or isinstance(self.tenant_id, bool):
            raise ConfigError("SyncOptions: tenant_id is required")
        if self.database is None and not self.dsn:
            raise ConfigError("SyncOptions: give the sync database as `database` or `dsn`")
        if self.api_client is None and not self.api_url:
            raise ConfigError("SyncOptions: give the Client System as `api_client` or `api_url`")
        if self.sync_interval_minutes <= 0:
            raise ConfigError(
                f"SyncOptions: sync_interval_minutes must be > 0, got {self.sync_interval_minutes}"
            )
        if self.max_retries < 1:
            raise ConfigError(f"SyncOptions: max_retries must be >= 1, got {self.max_retries}")
        if self.max_in_flight < 1:
            raise ConfigError(f"SyncOptions: max_in_flight must be >= 1, got {self.max_in_flight}")
        if self.connectivity_check_interval_ms <= 0:
            raise ConfigError(
                "SyncOptions: connectivity_check_interval_ms must be > 0, "
                f"got {self.connectivity_check_interval_ms}"
            )
        if self.batch_size is not None:
            warnings.warn(
                "SyncOptions.batch_size is deprecated and ignored: batch sizes are per tenant "
                "(tenant.upload_batch_size / download_batch_size; `metersync tenant set`)",
                DeprecationWarning,
                stacklevel=3,
            )


@dataclass(frozen=True, slots=True)
class CycleReport:
    """One :meth:`SyncManager.run_cycle`: the upload's and the download's reports.

    ``download`` is ``None`` when it did not run (a stop came first, or the Client System's
    profile offers no download; ``skipped`` then says why).
    """

    upload: UploadReport | None
    download: DownloadReport | None
    seconds: float
    skipped: str | None = None

    @property
    def success(self) -> bool:
        """True when the upload moved something or had nothing to move, nothing failed, and
        the download ran without an error (or was skipped because it is not offered).

        An upload whose every reading was rejected is not a success (nothing moved).
        """
        if self.upload is None or operation_outcome("upload", self.upload, None) not in (
            "ok",
            "partial",
        ):
            return False
        if self.download is None:
            return self.skipped is not None
        return self.download.success


class SyncManager:
    """Syncs one tenant: ``SyncManager(config)`` or ``SyncManager(tenant_id=..., dsn=..., ...)``.

    Use as ``async with SyncManager(...) as sync: await sync.run_cycle()`` (``initialize`` on
    entry, ``close`` on exit), or call :meth:`initialize` and :meth:`close` yourself.

    Every operation runs through a :class:`~metersync.engine.scheduler.Scheduler` (the one the
    command line uses too): the same locks, sync_log rows and error policy. Managers given the
    same ``database`` take turns on that connection (never two statements of theirs at once).
    """

    def __init__(self, config: SyncOptions | None = None, **kwargs: Any) -> None:
        if config is None:
            config = SyncOptions(**kwargs)
        elif kwargs:
            raise TypeError("give either a SyncOptions or keyword arguments, not both")
        self.config = config
        self.tenant_id: int = config.tenant_id  # type: ignore[assignment]  # checked by SyncOptions
        self.db: Any = config.database
        self.client: Any = config.api_client
        self.cache: TenantCache | None = config.cache
        self._own_db = config.database is None
        self._scheduler: Scheduler | None = None
        self._site_id: str | None = None
        self._initialized = False
        self._loop_task: asyncio.Task[int] | None = None
        self._stopping = False
        self._checking = False  # we started the client's connectivity checks
        self.last_cycle: CycleReport | None = None
        self.last_error: str | None = None
        self.totals: dict[str, int] = {
            "cycles": 0,
            "failed_operations": 0,
            "uploaded": 0,
            "confirmed": 0,
            "rejected": 0,
            "quarantined": 0,
            "downloaded": 0,
            "inserted": 0,
            "statements": 0,
        }

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def uploader(self) -> MeterReadingUploadManager | None:
        """The tenant's upload manager (``None`` before :meth:`initialize`)."""
        return None if self._scheduler is None else self._scheduler.managers(self.tenant_id)[0]

    @property
    def downloader(self) -> DownloadManager | None:
        """The tenant's download manager (``None`` before :meth:`initialize`)."""
        return None if self._scheduler is None else self._scheduler.managers(self.tenant_id)[1]

    async def initialize(self) -> None:
        """Connect, reflect ``meter_reading``, load and log the tenant's sizes, start listening.

        Logs at INFO the tenant's sizes and their source (``tenant``, ``default`` or
        ``tenant+default``). Starts the auto-sync loop when ``enable_auto_sync`` is set.
        An unsupported column type fails here, before anything moves.
        """
        if self._initialized:
            return
        cfg = self.config
        if self.db is None:
            from metersync.store.database import (
                SyncDatabase,  # the adapter pulls in psycopg pools; load on demand
            )

            self.db = await SyncDatabase.connect(cfg.dsn)
        try:
            # The site id stored by migrate: sent with uploads so a server with a site filter
            # never sends this site's own readings back on download (None before migrate).
            self._site_id = await self.db.site_id()
            self._scheduler = Scheduler(
                dsn=cfg.dsn,
                database=self.db,
                cache=cfg.cache,
                cache_ttl_seconds=cfg.cache_ttl_seconds,
                client_factory=self._build_client,
                options=EngineOptions(
                    max_retries=cfg.max_retries,
                    max_batches_per_cycle=cfg.max_batches_per_cycle,
                    max_seconds_per_cycle=cfg.max_seconds_per_cycle,
                    max_pages_per_cycle=cfg.max_pages_per_cycle,
                    overlap=cfg.overlap,
                    max_in_flight=cfg.max_in_flight,
                    drop_unknown_fields=cfg.drop_unknown_fields,
                ),
            )
            await self._scheduler.open()
            self.cache = self._scheduler.cache
            self._scheduler.add_tenant(self.tenant_id, self.client)
            async with self._scheduler.connection():
                settings = await self.cache.get(self.tenant_id)
            batch = settings.batch
            log.info(
                "tenant %s batch sizes: download_batch_size=%d upload_batch_size=%d (source: %s)",
                self.tenant_id,
                batch.download_batch_size,
                batch.upload_batch_size,
                batch.source,
            )
            if self.client is None and not settings.api_key:
                raise ConfigError(
                    f"tenant {self.tenant_id} has no api_key in table tenant; set it or "
                    "pass api_client"
                )
            await self._scheduler.prepare(self.tenant_id)
            if self.client is None:
                self.client = self._scheduler.client_of(self.tenant_id)
        except BaseException:
            await self._release()
            raise
        self._initialized = True
        if cfg.enable_auto_sync:
            await self.start()

    def _build_client(self, tenant_id: int, api_key: str) -> Any:
        from metersync.remote.client import ClientSystemApiClient, default_site_id

        site_id = self._site_id or default_site_id()
        return ClientSystemApiClient(self.config.api_url, api_key, site_id=site_id)

    async def close(self) -> None:
        """Stop the loop (finishing the batch in flight), stop listening, close what we opened."""
        await self.stop()
        await self._release()
        self._initialized = False

    async def _release(self) -> None:
        if self._scheduler is not None:
            await self._scheduler.close()  # its own clients, listener and connections
            if self.config.api_client is None:
                self.client = None
        if self._own_db and self.db is not None:
            with contextlib.suppress(Exception):
                await self.db.close()
            self.db = None

    async def __aenter__(self) -> SyncManager:
        await self.initialize()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _require(self) -> Scheduler:
        if not self._initialized or self._scheduler is None:
            raise RuntimeError("SyncManager: call `await initialize()` first")
        return self._scheduler

    # -- operations ------------------------------------------------------------------------------

    async def upload_readings(self) -> UploadReport:
        """Run one upload cycle and write its ``sync_log`` row (see ``MeterReadingUploadManager``).

        Errors that need an operator (refused key, 413, 400) and :class:`TenantBusyError` are
        raised after the ``sync_log`` row is written (no row for a busy tenant: nothing ran).
        """
        report = await self._operation("upload")
        assert isinstance(report, UploadReport)
        return report

    async def download_readings(self) -> DownloadReport:
        """Run one download cycle and write its ``sync_log`` row (see ``DownloadManager``)."""
        report = await self._operation("download")
        assert isinstance(report, DownloadReport)
        return report

    async def _operation(self, operation: str) -> UploadReport | DownloadReport | None:
        result = await self._require().run_operation(self.tenant_id, operation)
        self._account(result)
        if result.outcome == "busy":
            raise TenantBusyError(
                f"tenant {self.tenant_id}: another worker holds the {operation} lock; cycle skipped"
            )
        if result.raised and result.error is not None:
            raise result.error
        return result.report

    async def run_cycle(self) -> CycleReport:
        """Upload, then download. Raises what the operations raise (after logging them)."""
        scheduler = self._require()
        started = time.perf_counter()
        upload = await self.upload_readings()
        download = None
        skipped = None
        if not self._stopping:
            result = await scheduler.run_operation(self.tenant_id, "download")
            self._account(result)
            if result.outcome == "busy":
                raise TenantBusyError(
                    f"tenant {self.tenant_id}: another worker holds the download lock; "
                    "cycle skipped"
                )
            if result.raised and result.error is not None:
                raise result.error
            download = result.report  # type: ignore[assignment]
            skipped = result.skipped
        report = CycleReport(upload, download, time.perf_counter() - started, skipped)
        self.last_cycle = report
        self.totals["cycles"] += 1
        return report

    def _account(self, result: OperationResult) -> None:
        """Totals and the last error from one operation's result."""
        report = result.report
        if result.skipped is not None:
            return
        if not result.success:
            self.totals["failed_operations"] += 1
            self.last_error = result.error_text
        if report is None:
            return
        self.totals["statements"] += report.statements
        if isinstance(report, UploadReport):
            self.totals["uploaded"] += report.readings_sent
            self.totals["confirmed"] += report.confirmed
            self.totals["rejected"] += report.rejected
            self.totals["quarantined"] += report.quarantined
        else:
            self.totals["downloaded"] += report.readings
            self.totals["inserted"] += report.inserted

    # -- auto sync -------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while the auto-sync loop runs."""
        return self._loop_task is not None and not self._loop_task.done()

    async def start(self) -> None:
        """Start the auto-sync loop: a cycle now, then every ``sync_interval_minutes``.

        The loop is the scheduler's (the CLI ``sync`` loop's): one error policy — a busy tenant
        is skipped, an outage ends the cycle and is retried with backoff, a refused key stops
        the tenant, nothing but :meth:`stop` ends the loop.
        """
        scheduler = self._require()
        if self.running:
            return
        self._stopping = False
        scheduler.reset_stop()
        checks = getattr(self.client, "start_connectivity_checks", None)
        if callable(checks):
            try:
                checks(self.config.connectivity_check_interval_ms)
                self._checking = True
            except RuntimeError:  # the client's owner already runs them
                self._checking = False
        self._loop_task = asyncio.create_task(
            scheduler.run_forever(
                self.config.sync_interval_minutes * 60.0,
                tenant_ids=[self.tenant_id],
                on_cycle=self._on_loop_cycle,
            ),
            name=f"sync-{self.tenant_id}",
        )

    def _on_loop_cycle(self, results: list[OperationResult], seconds: float) -> None:
        by_op = {r.operation: r for r in results}
        for result in results:
            self._account(result)
        upload = by_op.get("upload")
        download = by_op.get("download")
        if upload is not None and upload.report is not None:
            self.last_cycle = CycleReport(
                upload.report,  # type: ignore[arg-type]
                None if download is None else download.report,  # type: ignore[arg-type]
                seconds,
                None if download is None else download.skipped,
            )
            self.totals["cycles"] += 1

    async def stop(self, timeout: float | None = 60.0) -> None:
        """Stop the loop; the batch or page in flight finishes (POST and mark) first.

        After ``timeout`` seconds the cycle is cancelled: a batch whose POST was cut off stays
        pending (nothing is marked without a confirmation) and goes up again next time.
        """
        task = self._loop_task
        self._stopping = True
        if self._checking:
            self._checking = False
            await self.client.stop_connectivity_checks()
        scheduler = self._scheduler
        if scheduler is not None:
            scheduler.request_stop()
        self._loop_task = None
        try:
            if task is not None:
                await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        finally:
            if scheduler is not None:
                scheduler.reset_stop()  # direct calls (upload_readings, ...) work again

    # -- status ----------------------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        """Queue size, last cycle, connectivity, totals and the current sizes, as plain data."""
        scheduler = self._require()
        assert self.cache is not None
        async with scheduler.connection() as db:  # its turn on the connection
            settings = await self.cache.get(self.tenant_id)
            queue = await db.queue_status(self.tenant_id, max_retries=self.config.max_retries)
        if isinstance(queue, list):  # one tenant asked: one row (none if the tenant row is gone)
            queue = queue[0] if queue else None
        last = None
        if self.last_cycle is not None:
            last = {
                "seconds": self.last_cycle.seconds,
                "success": self.last_cycle.success,
                "upload": _plain(self.last_cycle.upload),
                "download": _plain(self.last_cycle.download),
            }
        connectivity = None
        probe = getattr(self.client, "connectivity", None)
        if callable(probe):
            connectivity = probe()
        return {
            "tenant_id": self.tenant_id,
            "batch": {
                "download_batch_size": settings.batch.download_batch_size,
                "upload_batch_size": settings.batch.upload_batch_size,
                "source": settings.batch.source,
            },
            "queue": _plain(queue),
            "last_cycle": last,
            "last_error": self.last_error,
            "connectivity": _plain(connectivity),
            "auto_sync": self.running,
            "listening": self.cache.listening,
            "totals": dict(self.totals),
        }


def _plain(value: Any) -> Any:
    """Dataclasses (also slotted, also nested in lists/dicts) to plain dicts for status()."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if hasattr(value, "__dataclass_fields__"):
        return {k: _plain(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "_asdict"):
        return _plain(value._asdict())
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


#: The previous name of :class:`SyncOptions` (the seed calls it ``SyncManagerConfig``); kept so
#: existing imports work.
SyncConfig = SyncOptions

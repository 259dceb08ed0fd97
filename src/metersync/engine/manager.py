"""The orchestrator: one tenant's sync, in the right order, with its bookkeeping (spec §8).

:class:`SyncManager` knows the order of things — initialize (connect, reflect the table, load
and log the tenant's sizes, listen for changes), upload then download, one ``sync_log`` row per
operation, the auto-sync loop — and nothing of their insides, which live in
:mod:`metersync.engine.upload`, :mod:`metersync.engine.download`,
:mod:`metersync.engine.tenant_cache`, :mod:`metersync.store.database` and
:mod:`metersync.remote.client`.
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
from metersync.engine.tenant_cache import TenantCache
from metersync.engine.upload import MeterReadingUploadManager, UploadReport
from metersync.errors import ConfigError, DatabaseUnavailable, MeterSyncError, TenantBusyError

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
    """One :meth:`SyncManager.run_cycle`: the upload's and the download's reports."""

    upload: UploadReport | None
    download: DownloadReport | None
    seconds: float

    @property
    def success(self) -> bool:
        """True when both operations ran and ended without an error."""
        return (
            self.upload is not None
            and self.download is not None
            and self.upload.success
            and self.download.success
        )


class SyncManager:
    """Syncs one tenant: ``SyncManager(config)`` or ``SyncManager(tenant_id=..., dsn=..., ...)``.

    Use as ``async with SyncManager(...) as sync: await sync.run_cycle()`` (``initialize`` on
    entry, ``close`` on exit), or call :meth:`initialize` and :meth:`close` yourself.
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
        self._own_cache = config.cache is None
        self.uploader: MeterReadingUploadManager | None = None
        self.downloader: DownloadManager | None = None
        self._own_db = config.database is None
        self._own_client = config.api_client is None
        self._initialized = False
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._checking = False  # we started the client's connectivity checks
        self._op_lock = asyncio.Lock()  # one operation at a time on the one database connection
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
            await self.db.layout()
            if self._own_cache:
                self.cache = TenantCache(self.db, ttl_seconds=cfg.cache_ttl_seconds)
                if cfg.dsn:
                    await self.cache.listen(cfg.dsn)
            assert self.cache is not None
            settings = await self.cache.get(self.tenant_id)
            batch = settings.batch
            log.info(
                "tenant %s batch sizes: download_batch_size=%d upload_batch_size=%d (source: %s)",
                self.tenant_id,
                batch.download_batch_size,
                batch.upload_batch_size,
                batch.source,
            )
            if self.client is None:
                if not settings.api_key:
                    raise ConfigError(
                        f"tenant {self.tenant_id} has no api_key in table tenant; set it or "
                        "pass api_client"
                    )
                from metersync.remote.client import ClientSystemApiClient

                self.client = ClientSystemApiClient(cfg.api_url, settings.api_key)
            self.uploader = MeterReadingUploadManager(
                self.db,
                self.client,
                self.cache,
                tenant_id=self.tenant_id,
                max_retries=cfg.max_retries,
                max_batches=cfg.max_batches_per_cycle,
                max_seconds=cfg.max_seconds_per_cycle,
                overlap=cfg.overlap,
                max_in_flight=cfg.max_in_flight,
            )
            self.downloader = DownloadManager(
                self.db,
                self.client,
                self.cache,
                tenant_id=self.tenant_id,
                max_pages=cfg.max_pages_per_cycle,
            )
        except BaseException:
            await self._release()
            raise
        self._initialized = True
        if cfg.enable_auto_sync:
            await self.start()

    async def close(self) -> None:
        """Stop the loop (finishing the batch in flight), stop listening, close what we opened."""
        await self.stop()
        await self._release()
        self._initialized = False

    async def _release(self) -> None:
        if self.cache is not None and self._own_cache:
            await self.cache.stop_listening()
        if self._own_client and self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.aclose()
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

    def _require(self) -> tuple[MeterReadingUploadManager, DownloadManager]:
        if not self._initialized or self.uploader is None or self.downloader is None:
            raise RuntimeError("SyncManager: call `await initialize()` first")
        return self.uploader, self.downloader

    # -- operations ------------------------------------------------------------------------------

    async def upload_readings(self) -> UploadReport:
        """Run one upload cycle and write its ``sync_log`` row (see ``MeterReadingUploadManager``).

        Errors that need an operator (refused key, 413, 400) and :class:`TenantBusyError` are
        raised after the ``sync_log`` row is written (no row for a busy tenant: nothing ran).
        """
        uploader, _ = self._require()
        async with self._op_lock:
            try:
                report = await uploader.upload()
            except TenantBusyError:
                raise
            except BaseException as exc:
                await self._log_operation("upload", uploader.report, exc)
                raise
            await self._log_operation("upload", report, None)
        self.totals["uploaded"] += report.readings_sent
        self.totals["confirmed"] += report.confirmed
        self.totals["rejected"] += report.rejected
        self.totals["quarantined"] += report.quarantined
        return report

    async def download_readings(self) -> DownloadReport:
        """Run one download cycle and write its ``sync_log`` row (see ``DownloadManager``)."""
        _, downloader = self._require()
        async with self._op_lock:
            try:
                report = await downloader.download()
            except TenantBusyError:
                raise
            except BaseException as exc:
                await self._log_operation("download", downloader.report, exc)
                raise
            await self._log_operation("download", report, None)
        self.totals["downloaded"] += report.readings
        self.totals["inserted"] += report.inserted
        return report

    async def run_cycle(self) -> CycleReport:
        """Upload, then download. Raises what the operations raise (after logging them)."""
        started = time.perf_counter()
        upload = await self.upload_readings()
        download = None
        if not self._stopping.is_set():
            download = await self.download_readings()
        report = CycleReport(upload, download, time.perf_counter() - started)
        self.last_cycle = report
        self.totals["cycles"] += 1
        return report

    async def _log_operation(
        self,
        operation: str,
        report: UploadReport | DownloadReport,
        exc: BaseException | None,
    ) -> None:
        error = report.error
        if exc is not None:
            error = f"{type(exc).__name__}: {exc}"
        if error:
            self.totals["failed_operations"] += 1
            self.last_error = error
        self.totals["statements"] += report.statements
        if isinstance(report, UploadReport):
            batches, records = report.batches, report.confirmed
        else:
            batches, records = report.pages, report.inserted
        try:
            await self.db.write_sync_log(
                tenant_id=self.tenant_id,
                operation=operation,
                batches=batches,
                records=records,
                statements=report.statements,
                duration_s=report.seconds,
                success=error is None,
                error=error,
            )
        except DatabaseUnavailable as log_exc:
            # The operation failed already; whoever handles that failure reports the outage
            # (once per cycle), so this is not a second line for the same cause.
            log.log(
                logging.DEBUG if error is not None else logging.ERROR,
                "tenant %s: writing the sync_log row of the %s failed: %s",
                self.tenant_id,
                operation,
                log_exc,
            )
        except Exception as log_exc:  # bookkeeping must not hide the operation's own outcome
            log.error(
                "tenant %s: writing the sync_log row of the %s failed: %s",
                self.tenant_id,
                operation,
                log_exc,
            )

    # -- auto sync -------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while the auto-sync loop runs."""
        return self._loop_task is not None and not self._loop_task.done()

    async def start(self) -> None:
        """Start the auto-sync loop: a cycle now, then every ``sync_interval_minutes``."""
        self._require()
        if self.running:
            return
        self._stopping.clear()
        checks = getattr(self.client, "start_connectivity_checks", None)
        if callable(checks):
            try:
                checks(self.config.connectivity_check_interval_ms)
                self._checking = True
            except RuntimeError:  # the client's owner already runs them
                self._checking = False
        self._loop_task = asyncio.create_task(self._auto_loop(), name=f"sync-{self.tenant_id}")

    async def stop(self, timeout: float | None = 60.0) -> None:
        """Stop the loop; the batch or page in flight finishes (POST and mark) first.

        After ``timeout`` seconds the cycle is cancelled: a batch whose POST was cut off stays
        pending (nothing is marked without a confirmation) and goes up again next time.
        """
        task = self._loop_task
        self._stopping.set()
        if self._checking:
            self._checking = False
            await self.client.stop_connectivity_checks()
        if self.uploader is not None:
            self.uploader.request_stop()
        if self.downloader is not None:
            self.downloader.request_stop()
        if task is None:
            return
        self._loop_task = None
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _auto_loop(self) -> None:
        interval = self.config.sync_interval_minutes * 60.0
        while not self._stopping.is_set():
            try:
                await self.run_cycle()
            except TenantBusyError as exc:
                log.info("%s", exc)
            except DatabaseUnavailable as exc:
                # One line per cycle while the database is away; the next cycle reconnects.
                log.warning(
                    "tenant %s: sync database unavailable, cycle skipped (next in %g s): %s",
                    self.tenant_id,
                    interval,
                    exc,
                    exc_info=log.isEnabledFor(logging.DEBUG),
                )
                self.last_error = f"{type(exc).__name__}: {exc}"
            except MeterSyncError as exc:
                log.error("tenant %s: sync cycle failed: %s", self.tenant_id, exc)
            except Exception as exc:  # keep the daemon alive; the next cycle tries again
                log.exception("tenant %s: sync cycle crashed: %s", self.tenant_id, exc)
                self.last_error = f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), interval)

    # -- status ----------------------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        """Queue size, last cycle, connectivity, totals and the current sizes, as plain data."""
        self._require()
        assert self.cache is not None
        settings = await self.cache.get(self.tenant_id)
        async with self._op_lock:
            queue = await self.db.queue_status(self.tenant_id, max_retries=self.config.max_retries)
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

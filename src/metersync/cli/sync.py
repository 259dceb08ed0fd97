"""``metersync upload``, ``download`` and ``sync`` (one cycle, or the long-running loop).

Each tenant gets a :class:`~metersync.engine.manager.SyncManager` sharing one database connection
(cycles of one process run one after the other, so one connection is enough and per-tenant
advisory locks stay cheap) and one tenant cache whose single LISTEN connection hears batch-size
changes (NOTIFY) for all of them: sessions do not grow with the tenant count.
SIGINT/SIGTERM set a stop event and ask the running manager to finish the batch in flight (POST
and mark), then the command exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import click
import psycopg

from metersync.cli._app import AppState, json_option, open_db, pass_state, run
from metersync.cli.output import ExitCode, Output, exit_code_for
from metersync.errors import (
    AuthError,
    ConfigError,
    DatabaseUnavailable,
    TenantBusyError,
    UnknownTenantError,
)

log = logging.getLogger("metersync.cli")

#: How often the progress bars read the live reports of the running cycle (seconds).
_PROGRESS_PERIOD = 0.2


@dataclasses.dataclass
class OperationResult:
    """One operation (upload or download) of one tenant, for tables, JSON and the exit code."""

    tenant_id: int
    operation: str
    report: Any = None
    error: BaseException | None = None
    skipped: str | None = None

    @property
    def readings(self) -> int:
        if self.report is None:
            return 0
        if self.operation == "upload":
            return int(self.report.confirmed)
        return int(self.report.inserted)

    def document(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        doc: dict[str, Any] = {"tenant_id": self.tenant_id, "operation": self.operation}
        if self.report is not None:
            doc.update(dataclasses.asdict(self.report))
            seconds = self.report.seconds or 0.0
            doc["readings_per_s"] = round(self.readings / seconds, 1) if seconds > 0 else None
        if self.error is not None:
            doc["error"] = str(self.error)
        if self.skipped:
            doc["skipped"] = self.skipped
        doc["ok"] = self.ok
        return doc

    @property
    def ok(self) -> bool:
        if self.error is not None:
            return False
        if self.report is not None and self.report.error:
            return False
        return not (
            self.operation == "upload"
            and self.report is not None
            and (self.report.rejected or self.report.quarantined)
        )


def exit_code_of(results: Sequence[OperationResult]) -> ExitCode:
    """The exit code of a one-shot run: the most serious problem of any operation.

    3 a key was refused; 6 the database failed (also a cycle that ended early on it); 2 bad
    input; 4 the Client System was unavailable (retries spent); 5 partial (readings rejected or
    quarantined, other errors).
    """
    codes = set()
    for r in results:
        if r.skipped or r.ok:
            continue
        if r.error is not None:
            codes.add(exit_code_for(r.error))
        elif r.report is not None and r.report.error:
            if _DATABASE_MARKER in r.report.error:
                codes.add(ExitCode.DATABASE)
            elif any(word in r.report.error for word in _REMOTE_MARKERS):
                codes.add(ExitCode.REMOTE)
            else:
                codes.add(ExitCode.PARTIAL)
        else:
            codes.add(ExitCode.PARTIAL)
    for code in _PRIORITY:
        if code in codes:
            return code
    return ExitCode.OK


# The upload/download reports carry the cause as text ("... failed as a whole
# (RemoteUnavailableError: ...)"): these names mean the Client System could not be reached.
_REMOTE_MARKERS = ("RemoteUnavailableError", "ConnectError", "TimeoutException", "ReadTimeout")
# ... and this one that the sync database went away mid-cycle (a failed mark or fetch).
_DATABASE_MARKER = DatabaseUnavailable.__name__
_PRIORITY = (
    ExitCode.AUTH,
    ExitCode.DATABASE,
    ExitCode.USAGE,
    ExitCode.UNEXPECTED,
    ExitCode.REMOTE,
    ExitCode.PARTIAL,
)


class Worker:
    """The tenants this process syncs: one database connection, one SyncManager per tenant."""

    def __init__(self, state: AppState, tenant_ids: Sequence[int] | None) -> None:
        self.state = state
        self.settings = state.settings
        self.requested = list(tenant_ids) if tenant_ids is not None else None
        self.db: Any = None
        self.cache: Any = None  # one TenantCache (one LISTEN connection) for every manager
        self.managers: dict[int, Any] = {}
        self.stop_event = asyncio.Event()

    async def open(self) -> None:
        """Connect, check the tenants exist and have keys, initialize their managers."""
        from metersync.engine.manager import SyncManager, SyncOptions
        from metersync.engine.tenant_cache import TenantCache
        from metersync.remote.client import ClientSystemApiClient

        dsn = self.state.require_dsn()
        self._db_cm = open_db(dsn)
        self.db = await self._db_cm.__aenter__()
        await self.db.layout()  # an unsupported column type fails here, before anything moves
        if self.requested is None:
            rows = [t for t in await self.db.list_tenants() if t.active]
            if not rows:
                raise ConfigError("no active tenants in table tenant (metersync tenant add ...)")
        else:
            rows = []
            for tid in self.requested:
                row = await self.db.get_tenant(tid)
                if row is None:
                    raise UnknownTenantError(tid)
                rows.append(row)
        self.cache = TenantCache(self.db)
        await self.cache.listen(dsn)
        s = self.settings
        for row in rows:
            if not row.api_key:
                raise ConfigError(
                    f"tenant {row.tenant_id} has no api_key in table tenant "
                    "(re-add it with METERSYNC_API_KEY set)"
                )
            client = ClientSystemApiClient(
                s.api_url,
                row.api_key,
                connect_timeout=s.connect_timeout,
                read_timeout=s.read_timeout,
                verify=s.ca_bundle or True,
            )
            manager = SyncManager(
                SyncOptions(
                    tenant_id=row.tenant_id,
                    database=self.db,
                    cache=self.cache,  # shared: the managers open no LISTEN of their own
                    api_client=client,
                    max_retries=max(s.max_retries, 1),
                )
            )
            try:
                await manager.initialize()
            except BaseException:
                await client.aclose()
                raise
            self.managers[row.tenant_id] = manager

    async def close(self) -> None:
        """Close the managers (their listeners), the clients, then the database connection."""
        for manager in self.managers.values():
            with contextlib.suppress(Exception):
                await manager.close()
            with contextlib.suppress(Exception):
                await manager.client.aclose()
        self.managers.clear()
        if self.cache is not None:
            with contextlib.suppress(Exception):
                await self.cache.stop_listening()
            self.cache = None
        if self.db is not None:
            with contextlib.suppress(Exception):
                await self._db_cm.__aexit__(None, None, None)
            self.db = None

    def request_stop(self) -> None:
        """Signal handler: finish the batch in flight everywhere, then stop."""
        if not self.stop_event.is_set():
            log.warning("stop requested: finishing the batch in flight")
        self.stop_event.set()
        for manager in self.managers.values():
            for part in (manager.uploader, manager.downloader):
                if part is not None:
                    part.request_stop()

    async def run_operation(self, tenant_id: int, operation: str) -> OperationResult:
        """One upload or download cycle of a tenant; errors become part of the result."""
        manager = self.managers[tenant_id]
        result = OperationResult(tenant_id, operation)
        try:
            if operation == "upload":
                result.report = await manager.upload_readings()
            else:
                result.report = await manager.download_readings()
        except TenantBusyError as exc:
            log.info("%s", exc)  # another worker has it: normal with several workers
            result.skipped = str(exc)
        except (AuthError, ConfigError) as exc:
            result.error = exc
            part = manager.uploader if operation == "upload" else manager.downloader
            result.report = part.report if part is not None else None
        except (psycopg.OperationalError, DatabaseUnavailable):
            raise
        except Exception as exc:
            result.error = exc
            part = manager.uploader if operation == "upload" else manager.downloader
            result.report = part.report if part is not None else None
        return result

    async def cycle(
        self, operations: Sequence[str], out: Output, *, progress: bool
    ) -> list[OperationResult]:
        """Run ``operations`` for every tenant once (stopping early on a signal)."""
        results: list[OperationResult] = []
        async with _progress(self, out, enabled=progress) as track:
            for tenant_id in list(self.managers):
                for operation in operations:
                    if self.stop_event.is_set():
                        return results
                    track(tenant_id, operation)
                    results.append(await self.run_operation(tenant_id, operation))
        return results


@contextlib.asynccontextmanager
async def _progress(worker: Worker, out: Output, *, enabled: bool) -> AsyncIterator[Any]:
    """A rich progress bar per (tenant, operation), fed from the live reports of the managers."""
    if not enabled or out.json_mode or out.quiet or not out.err.is_terminal:
        yield lambda tenant_id, operation: None
        return
    progress = out.progress()
    tasks: dict[tuple[int, str], Any] = {}
    totals: dict[int, int | None] = {}
    for tenant_id in worker.managers:
        with contextlib.suppress(Exception):
            rows = await worker.db.queue_status(tenant_id, worker.settings.max_retries)
            totals[tenant_id] = sum(_pending(r) for r in rows)

    def track(tenant_id: int, operation: str) -> None:
        total = totals.get(tenant_id) if operation == "upload" else None
        tasks[(tenant_id, operation)] = progress.add_task(
            f"tenant {tenant_id} {operation}", total=total or None
        )

    async def refresh() -> None:
        while True:
            for (tenant_id, operation), task in tasks.items():
                manager = worker.managers.get(tenant_id)
                part = None
                if manager is not None:
                    part = manager.uploader if operation == "upload" else manager.downloader
                if part is not None and part.report.tenant_id == tenant_id:
                    done = part.report.confirmed if operation == "upload" else part.report.inserted
                    progress.update(task, completed=done)
            await asyncio.sleep(_PROGRESS_PERIOD)

    with progress:
        refresher = asyncio.create_task(refresh())
        try:
            yield track
        finally:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
            for (tenant_id, operation), task in tasks.items():
                manager = worker.managers[tenant_id]
                part = manager.uploader if operation == "upload" else manager.downloader
                done = part.report.confirmed if operation == "upload" else part.report.inserted
                progress.update(task, completed=done, total=max(done, 1) if done else 1)


def _pending(row: Any) -> int:
    """Readings the next upload will try: pending plus failed-but-not-quarantined."""
    total = 0
    for name in ("pending", "failed"):
        value = row.get(name) if isinstance(row, dict) else getattr(row, name, 0)
        total += int(value or 0)
    return total


def summary(out: Output, results: Sequence[OperationResult], seconds: float) -> None:
    """The summary table at the end of upload/download/sync --once."""
    rows = []
    for r in results:
        rep = r.report
        result_text = "ok"
        if r.skipped:
            result_text = "skipped: tenant busy (another worker)"
        elif r.error is not None:
            result_text = f"error: {r.error}"
        elif rep is not None and rep.error:
            result_text = f"error: {rep.error}"
        elif rep is not None and r.operation == "upload" and (rep.rejected or rep.quarantined):
            result_text = f"partial: {rep.rejected} rejected, {rep.quarantined} quarantined"
        batches = None if rep is None else (rep.batches if r.operation == "upload" else rep.pages)
        per_s = None
        if rep is not None and rep.seconds > 0 and r.readings:
            per_s = r.readings / rep.seconds
        rows.append(
            [
                r.tenant_id,
                r.operation,
                batches,
                r.readings,
                None if rep is None else rep.statements,
                None if rep is None else round(rep.seconds, 2),
                per_s,
                result_text,
            ]
        )
    out.table(
        f"summary ({seconds:.1f} s)",
        ["tenant", "operation", "batches", "readings", "statements", "s", "readings/s", "result"],
        rows,
        right=["batches", "readings", "statements", "s", "readings/s"],
    )


def _tenant_selection(
    state: AppState, tenant_id: int | None, all_tenants: bool
) -> list[int] | None:
    if tenant_id is not None and all_tenants:
        raise ConfigError("give either --tenant ID or --all-tenants, not both")
    if all_tenants:
        return None
    if tenant_id is not None:
        state.override(tenant_id=tenant_id)
    chosen = state.settings.tenant_id
    if chosen is None:
        raise ConfigError(
            "no tenant given: pass --tenant ID or --all-tenants (or METERSYNC_TENANT)"
        )
    return [chosen]


async def _install_signals(worker: Worker) -> list[signal.Signals]:
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, worker.request_stop)
        installed.append(sig)
    return installed


def _remove_signals(installed: list[signal.Signals]) -> None:
    loop = asyncio.get_running_loop()
    for sig in installed:
        loop.remove_signal_handler(sig)


def _one_shot(state: AppState, tenants: list[int] | None, operations: Sequence[str]) -> int:
    out = state.output

    async def go() -> tuple[list[OperationResult], float, bool]:
        worker = Worker(state, tenants)
        started = time.perf_counter()
        installed = await _install_signals(worker)
        try:
            await worker.open()
            results = await worker.cycle(operations, out, progress=True)
        finally:
            await worker.close()
            _remove_signals(installed)
        return results, time.perf_counter() - started, worker.stop_event.is_set()

    results, seconds, stopped = run(go)
    code = exit_code_of(results)
    if out.json_mode:
        out.emit_json(
            {
                "operations": [r.document() for r in results],
                "seconds": round(seconds, 3),
                "stopped_by_signal": stopped,
                "exit_code": int(code),
            }
        )
    else:
        summary(out, results, seconds)
    for r in results:
        if r.error is not None and not out.json_mode:
            out.error(f"tenant {r.tenant_id} {r.operation}: {r.error}")
    return int(code)


_tenant_options = [
    click.option("--tenant", "tenant_id", type=int, help="Tenant id (env METERSYNC_TENANT)."),
    click.option("--all-tenants", is_flag=True, help="Every active tenant."),
]


def tenant_options(func: Any) -> Any:
    """``--tenant ID`` / ``--all-tenants`` on a command."""
    for option in reversed(_tenant_options):
        func = option(func)
    return func


@click.command()
@tenant_options
@json_option
@pass_state
def upload(state: AppState, tenant_id: int | None, all_tenants: bool) -> int:
    """One upload cycle: send pending readings until the queue is empty (then exit)."""
    return _one_shot(state, _tenant_selection(state, tenant_id, all_tenants), ["upload"])


@click.command()
@tenant_options
@json_option
@pass_state
def download(state: AppState, tenant_id: int | None, all_tenants: bool) -> int:
    """One download cycle: fetch the tenant's readings from the Client System after the cursor."""
    return _one_shot(state, _tenant_selection(state, tenant_id, all_tenants), ["download"])


@click.command()
@tenant_options
@click.option("--once", is_flag=True, help="One cycle (upload then download), then exit.")
@click.option(
    "--interval",
    type=float,
    help="Seconds between cycles of the loop (env METERSYNC_INTERVAL; default 60).",
)
@json_option
@pass_state
def sync(
    state: AppState,
    tenant_id: int | None,
    all_tenants: bool,
    once: bool,
    interval: float | None,
) -> int:
    """Upload then download; with --once a single cycle, else a loop until SIGINT/SIGTERM.

    On a signal the batch in flight is finished (POST and mark) and the command exits 0.
    Errors of one tenant are logged and recorded in sync_log; the loop goes on.
    """
    tenants = _tenant_selection(state, tenant_id, all_tenants)
    if interval is not None:
        state.override(interval=interval)
    if once:
        return _one_shot(state, tenants, ["upload", "download"])
    return _loop(state, tenants)


def _loop(state: AppState, tenants: list[int] | None) -> int:
    out = state.output
    interval = state.settings.interval

    async def go() -> int:
        worker = Worker(state, tenants)
        installed = await _install_signals(worker)
        cycles = 0
        try:
            await worker.open()
            out.info(
                f"syncing {len(worker.managers)} tenant(s) every {interval:g} s; "
                "Ctrl-C or SIGTERM stops after the batch in flight"
            )
            while not worker.stop_event.is_set():
                started = time.perf_counter()
                try:
                    results = await worker.cycle(["upload", "download"], out, progress=False)
                except (psycopg.OperationalError, DatabaseUnavailable) as exc:
                    # One line per cycle while the database is away; the connection is
                    # reopened by the next cycle's first statement (SyncDatabase reconnects).
                    log.warning(
                        "sync database unavailable, cycle skipped (next in %g s): %s",
                        interval,
                        exc,
                        exc_info=state.verbose >= 1,
                    )
                    await _wait(worker, interval)
                    continue
                cycles += 1
                _report_cycle(out, cycles, results, time.perf_counter() - started)
                await _wait(worker, interval)
        finally:
            await worker.close()
            _remove_signals(installed)
        out.info(f"stopped cleanly after {cycles} cycle(s)")
        return ExitCode.OK

    return run(go)


async def _wait(worker: Worker, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(worker.stop_event.wait(), seconds)


def _report_cycle(
    out: Output, number: int, results: Sequence[OperationResult], seconds: float
) -> None:
    for r in results:
        if r.error is not None:
            log.error("tenant %s %s failed: %s", r.tenant_id, r.operation, r.error)
    if out.json_mode:
        # One JSON document per cycle, one per line (NDJSON) for log shippers.
        import orjson

        line = {"cycle": number, "seconds": round(seconds, 3)}
        line["operations"] = [r.document() for r in results]  # type: ignore[assignment]
        click.echo(orjson.dumps(line, default=str).decode())
        return
    up = sum(r.readings for r in results if r.operation == "upload")
    down = sum(r.readings for r in results if r.operation == "download")
    bad = [r for r in results if not r.ok and not r.skipped]
    text = f"cycle {number}: {up:,} uploaded, {down:,} downloaded in {seconds:.2f} s"
    if bad:
        text += f"; {len(bad)} operation(s) with errors (see metersync status)"
    out.info(text)

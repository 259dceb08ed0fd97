"""``metersync upload``, ``download`` and ``sync`` (one cycle, or the long-running loop).

The work is done by the engine's :class:`~metersync.engine.scheduler.Scheduler` (the same one
``SyncManager`` uses): bounded concurrency over a small pool of connections, per-tenant locks,
one shared tenant cache, one error policy. This module only parses options, prints (tables,
progress, ``--json``) and maps the outcome to an exit code by error TYPE.

Signals: the first SIGINT/SIGTERM starts no new tenant or batch and lets the batches in flight
finish (POST and mark), then the command exits 0 (the loop) or with its results (one shot). A
second one abandons the POSTs in flight unmarked (they go again next run) and exits 130.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
import traceback
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import click
import httpx

from metersync import observe
from metersync.cli._app import AppState, check_dsn_syntax, json_option, pass_state
from metersync.cli._loop import run as run_on_loop
from metersync.cli.output import (
    EXIT_PRIORITY,
    ExitCode,
    Output,
    error_document,
    exit_code_for,
    one_line,
)
from metersync.engine.scheduler import OperationFailed, OperationResult
from metersync.errors import ConfigError, UnknownTenantError

log = logging.getLogger("metersync.cli")

#: How often the progress bars read the live reports of the running operations (seconds).
_PROGRESS_PERIOD = 0.2
#: Tenants synced at once by default (each on its own connection to the sync database).
DEFAULT_CONCURRENCY = 4


def exit_code_of(results: Sequence[OperationResult]) -> ExitCode:
    """The exit code of a run: the most serious problem of any operation, by error type.

    Skipped operations (tenant busy elsewhere, no download offered) are not problems; rejected
    or quarantined readings are partial (5).
    """
    return _worst(results)[0]


def _worst(results: Sequence[OperationResult]) -> tuple[ExitCode, OperationResult | None]:
    found: dict[ExitCode, OperationResult] = {}
    for r in results:
        if r.ok:
            continue
        if r.error is None or isinstance(r.error, OperationFailed):
            code = ExitCode.PARTIAL
        else:
            code = exit_code_for(r.error)
        found.setdefault(code, r)
    for code in EXIT_PRIORITY:
        if code in found:
            return code, found[code]
    return ExitCode.OK, None


class _Run:
    """One invocation's scheduler: the tenants resolved, clients built from the settings."""

    def __init__(self, state: AppState, tenant_ids: Sequence[int] | None, concurrency: int):
        self.state = state
        self.requested = list(tenant_ids) if tenant_ids is not None else None
        self.concurrency = concurrency
        self.scheduler: Any = None
        self.main_task: asyncio.Task[Any] | None = None
        self.signals = 0
        self.transport: Any = None  # one connection pool to the Client System for all tenants
        self._http: Any = None
        self._probe: Any = None  # the run's first client: the tenants' clients share its HTTP
        self.site_id: str | None = None

    def _client(self, tenant_id: int, api_key: str) -> Any:
        """A tenant's client: the run's settings, ONE shared connection pool to the Client
        System (no TCP connect per tenant) and the profile negotiated once for the run —
        made from the run's probe client (:meth:`ClientSystemApiClient.with_key`: no HTTP
        client built per tenant)."""
        if self._probe is None:
            raise RuntimeError("the run's HTTP client is not open")
        return self._probe.with_key(api_key)

    async def _shared_http(self) -> None:
        """The run's HTTP connection pool and the Client System's profile (asked once).

        A Client System that cannot be reached now decides nothing: each client then asks
        on its first request, as it would alone.
        """
        from metersync.remote.client import (
            KEEPALIVE_EXPIRY,
            ClientSystemApiClient,
            client_from_settings,
            ssl_context_from_bundle,
        )
        from metersync.remote.transport import Http1Transport

        s = self.state.settings
        # The verification the clients would do on their own connections (CA bundle or the
        # system's store); plain http to loopback needs no context at all.
        verify: Any = ssl_context_from_bundle(s.ca_bundle) if s.ca_bundle else True
        # One connection per POST in flight (2 per tenant) for every tenant running at once.
        width = self.concurrency * 2 + 1
        self._http = Http1Transport(
            verify=verify, max_connections=width, keepalive_expiry=KEEPALIVE_EXPIRY
        )
        self.transport = _SharedTransport(self._http)
        probe: ClientSystemApiClient = client_from_settings(
            s, None, site_id=self.site_id, transport=self.transport
        )
        # Kept open: every tenant's client is made from it (with_key) and shares its HTTP
        # client and the profile negotiated here; closed with the run.
        self._probe = probe
        try:
            await probe.profile()
        except Exception as exc:  # unreachable now: every client asks for itself later
            log.debug("Client System profile not negotiated up front: %s", exc)

    async def open(self) -> None:
        """Connect, check the tenants exist and have keys, register them with the scheduler."""
        from metersync.engine.scheduler import EngineOptions, Scheduler

        dsn = self.state.require_dsn()
        check_dsn_syntax(dsn)
        s = self.state.settings
        self.scheduler = Scheduler(
            dsn=dsn,
            concurrency=self.concurrency,
            client_factory=self._client,
            options=EngineOptions(max_retries=max(s.max_retries, 1)),
        )
        await self.scheduler.open()
        async with self.scheduler.connection() as db:
            self.site_id = await db.site_id()
            if self.requested is None:
                rows = [t for t in await db.list_tenants() if t.active]
                if not rows:
                    raise ConfigError(
                        "no active tenants in table tenant (metersync tenant add ...)"
                    )
            else:
                rows = []
                for tid in self.requested:
                    row = await db.get_tenant(tid)
                    if row is None:
                        raise UnknownTenantError(tid)
                    rows.append(row)
        for row in rows:
            if not row.api_key:
                raise ConfigError(
                    f"tenant {row.tenant_id} has no api_key in table tenant "
                    "(re-add it with METERSYNC_API_KEY set)"
                )
            self.scheduler.add_tenant(row.tenant_id)
        await self._shared_http()

    async def close(self) -> None:
        """Close the clients, the listener, the connections and the HTTP pool (never raises)."""
        if self.scheduler is not None:
            with contextlib.suppress(Exception):
                await self.scheduler.close()
        if self._probe is not None:
            with contextlib.suppress(Exception):
                await self._probe.aclose()
        if self._http is not None:
            with contextlib.suppress(Exception):
                await self._http.aclose()

    def on_signal(self) -> None:
        """First signal: finish the batches in flight, then stop. Second: abandon them."""
        self.signals += 1
        if self.signals == 1:
            self.state.output.info(
                "stopping: finishing the batches in flight (again to abandon them unmarked)"
            )
            if self.scheduler is not None:
                self.scheduler.request_stop()
            else:  # still opening: nothing in flight yet
                self._cancel()
        else:
            self._cancel()

    def _cancel(self) -> None:
        if self.main_task is not None and not self.main_task.done():
            self.main_task.cancel()


class _SharedTransport(httpx.AsyncBaseTransport):
    """The run's one HTTP connection pool, lent to every tenant's client.

    A client's ``aclose()`` (one tenant done, or rebuilt after a key change) must not close the
    pool under the others: closing is the run's job (:meth:`_Run.close`).
    """

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send through the shared pool."""
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        """Nothing: the run closes the pool once, after every client."""


class _Interrupted(Exception):
    """The run was cancelled by a second signal (exit 130)."""


def _install_signals(run: _Run) -> list[signal.Signals]:
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, run.on_signal)
        installed.append(sig)
    return installed


def _remove_signals(installed: list[signal.Signals]) -> None:
    loop = asyncio.get_running_loop()
    for sig in installed:
        loop.remove_signal_handler(sig)


def _execute(run: _Run, body: Callable[[_Run], Any]) -> tuple[Any, BaseException | None]:
    """Run ``body(run)`` between ``open`` and ``close`` with the signal handlers installed.

    Returns ``(value, None)`` or ``(None, error)``; a second signal gives ``_Interrupted``.
    """

    async def go() -> Any:
        run.main_task = asyncio.current_task()
        installed = _install_signals(run)
        try:
            await run.open()
            return await body(run)
        finally:
            await run.close()
            _remove_signals(installed)

    try:
        return run_on_loop(go()), None
    except asyncio.CancelledError:
        return None, _Interrupted(
            "interrupted: the batches in flight were abandoned unmarked; they go again next run"
        )
    except KeyboardInterrupt:
        return None, _Interrupted("interrupted")
    except Exception as exc:
        return None, exc


def _fail(state: AppState, exc: BaseException, document: dict[str, Any] | None = None) -> int:
    """Report a command that failed as a whole: one line on stderr, or one JSON document."""
    out = state.output
    code = ExitCode.INTERRUPTED if isinstance(exc, _Interrupted) else exit_code_for(exc)
    if state.verbose and not isinstance(exc, _Interrupted):
        traceback.print_exception(exc, file=sys.stderr)
    if out.json_mode:
        doc = dict(document or {})
        doc["error"] = error_document(exc, code)
        doc["exit_code"] = int(code)
        out.emit_json(doc)
    if code == ExitCode.UNEXPECTED:
        out.error(f"unexpected {type(exc).__name__}: {one_line(exc)} (run with -v for details)")
    else:
        out.error(one_line(exc))
    return int(code)


# -- one shot -----------------------------------------------------------------------------------


def _one_shot(
    state: AppState,
    tenants: list[int] | None,
    operations: Sequence[str],
    concurrency: int,
) -> int:
    out = state.output
    run = _Run(state, tenants, concurrency)
    done: list[OperationResult] = []  # as they end: a second signal still shows what finished
    started = time.perf_counter()

    async def body(run: _Run) -> list[OperationResult]:
        async with _progress(run, out, operations) as track:

            def on_result(result: OperationResult) -> None:
                done.append(result)
                track(result)

            return list(await run.scheduler.run_cycle(operations=operations, on_result=on_result))

    # A one-shot run never exposes its metrics (no endpoint): recording them is pure cost.
    with observe.recording(False):
        results, error = _execute(run, body)
    seconds = time.perf_counter() - started

    def partial() -> dict[str, Any]:  # for a failure only: 300 documents cost ~50 ms
        return {
            "operations": [r.document() for r in done],
            "seconds": round(seconds, 3),
            "stopped_by_signal": run.signals > 0,
        }

    if error is not None:
        return _fail(state, error, partial())
    assert results is not None
    code, worst = _worst(results)
    if list(operations) == ["download"]:
        unsupported = [
            r for r in results if r.outcome == "skipped" and "no download" in (r.skipped or "")
        ]
        if results and len(unsupported) == len(results):
            return _fail(
                state, ConfigError(unsupported[0].skipped or "no download offered"), partial()
            )
    left_out = _left_out(run, results)
    if out.json_mode:
        doc = {
            "operations": [r.document() for r in results],
            "seconds": round(seconds, 3),
            "stopped_by_signal": run.signals > 0,
            "tenants_not_run": left_out,
            "exit_code": int(code),
            "error": None,
        }
        if worst is not None and worst.error is not None:
            doc["error"] = error_document(worst.error, code)
            doc["error"]["tenant_id"] = worst.tenant_id
            doc["error"]["operation"] = worst.operation
        out.emit_json(doc)
    else:
        summary(out, results, seconds)
        for r in results:
            if r.error is not None:
                out.error(f"tenant {r.tenant_id} {r.operation}: {one_line(r.error)}")
        if left_out:
            out.info(
                f"{len(left_out)} tenant(s) not run: "
                + ("stopped by a signal" if run.signals else "the cycle ended on an outage")
            )
    return int(code)


def _left_out(run: _Run, results: Sequence[OperationResult]) -> list[int]:
    ran = {r.tenant_id for r in results}
    return [t for t in run.scheduler.tenant_ids if t not in ran]


@contextlib.asynccontextmanager
async def _progress(
    run: _Run, out: Output, operations: Sequence[str]
) -> AsyncIterator[Callable[[OperationResult], None]]:
    """One rich progress bar per operation over all tenants, fed from the live reports."""
    if out.json_mode or out.quiet or not out.err.is_terminal:
        yield lambda result: None
        return
    scheduler = run.scheduler
    tenants = set(scheduler.tenant_ids)
    total: int | None = None
    with contextlib.suppress(Exception):
        async with scheduler.connection() as db:
            rows = await db.queue_status(None, run.state.settings.max_retries)
        total = sum(_pending(r) for r in rows if _field(r, "tenant_id") in tenants)
    progress = out.progress()
    finished = dict.fromkeys(operations, 0)
    tasks = {
        op: progress.add_task(
            f"{op} ({len(tenants)} tenant{'s' if len(tenants) != 1 else ''})",
            total=(total or None) if op == "upload" else None,
        )
        for op in operations
    }

    def track(result: OperationResult) -> None:
        finished[result.operation] = finished.get(result.operation, 0) + result.readings

    def refresh_once() -> None:
        live = dict.fromkeys(operations, 0)
        for (_tenant, op), part in list(scheduler.running.items()):
            report = part.report
            live[op] = live.get(op, 0) + int(
                report.confirmed if op == "upload" else report.inserted
            )
        for op, task in tasks.items():
            progress.update(task, completed=finished[op] + live.get(op, 0))

    async def refresh() -> None:
        while True:
            refresh_once()
            await asyncio.sleep(_PROGRESS_PERIOD)

    with progress:
        refresher = asyncio.create_task(refresh())
        try:
            yield track
        finally:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
            refresh_once()
            for op, task in tasks.items():
                progress.update(task, total=max(finished[op], 1))


def _field(row: Any, name: str) -> Any:
    return row.get(name) if isinstance(row, dict) else getattr(row, name, None)


def _pending(row: Any) -> int:
    """Readings the next upload will try: pending plus failed-but-not-quarantined."""
    return sum(int(_field(row, name) or 0) for name in ("pending", "failed"))


def _result_text(r: OperationResult) -> str:
    outcome = r.outcome
    rep = r.report
    if outcome == "busy":
        return "skipped: tenant busy (another worker)"
    if outcome == "skipped":
        return f"skipped: {r.skipped}"
    if outcome == "error":
        return f"error: {r.error_text}"
    if outcome in ("partial", "rejected") and rep is not None:
        return f"{outcome}: {rep.rejected} rejected, {rep.quarantined} quarantined"  # type: ignore[union-attr]
    return "ok"


def summary(out: Output, results: Sequence[OperationResult], seconds: float) -> None:
    """The summary table at the end of upload/download/sync --once."""
    rows = []
    for r in results:
        rep = r.report
        batches = None
        if rep is not None:
            batches = rep.batches if r.operation == "upload" else rep.pages  # type: ignore[union-attr]
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
                _result_text(r),
            ]
        )
    out.table(
        f"summary ({seconds:.1f} s)",
        ["tenant", "operation", "batches", "readings", "statements", "s", "readings/s", "result"],
        rows,
        right=["batches", "readings", "statements", "s", "readings/s"],
    )


# -- options ------------------------------------------------------------------------------------


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


_tenant_options = [
    click.option("--tenant", "tenant_id", type=int, help="Tenant id (env METERSYNC_TENANT)."),
    click.option("--all-tenants", is_flag=True, help="Every active tenant."),
    click.option(
        "--concurrency",
        type=click.IntRange(1, 64),
        default=DEFAULT_CONCURRENCY,
        show_default=True,
        envvar="METERSYNC_CONCURRENCY",
        help="Tenants synced at once, each on its own connection to the sync database "
        "(env METERSYNC_CONCURRENCY).",
    ),
]


def tenant_options(func: Any) -> Any:
    """``--tenant ID`` / ``--all-tenants`` / ``--concurrency N`` on a command."""
    for option in reversed(_tenant_options):
        func = option(func)
    return func


def _guarded(state: AppState, command: Callable[[], int]) -> int:
    """Bad options become the same one line / JSON error document as a failed run."""
    try:
        return command()
    except ConfigError as exc:
        return _fail(state, exc)


@click.command()
@tenant_options
@json_option
@pass_state
def upload(state: AppState, tenant_id: int | None, all_tenants: bool, concurrency: int) -> int:
    """One upload cycle: send pending readings until the queue is empty (then exit)."""
    return _guarded(
        state,
        lambda: _one_shot(
            state, _tenant_selection(state, tenant_id, all_tenants), ["upload"], concurrency
        ),
    )


@click.command()
@tenant_options
@json_option
@pass_state
def download(state: AppState, tenant_id: int | None, all_tenants: bool, concurrency: int) -> int:
    """One download cycle: fetch the tenant's readings from the Client System after the cursor.

    Exits 2 when the Client System's profile offers no download (MeterTrack)."""
    return _guarded(
        state,
        lambda: _one_shot(
            state, _tenant_selection(state, tenant_id, all_tenants), ["download"], concurrency
        ),
    )


@click.command()
@tenant_options
@click.option("--once", is_flag=True, help="One cycle (upload then download), then exit.")
@click.option(
    "--interval",
    type=float,
    help="Seconds between cycles of the loop (env METERSYNC_INTERVAL; default 60).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    help="Serve Prometheus /metrics and /healthz on this port while the loop runs.",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="Address the metrics endpoint binds to (other hosts: 0.0.0.0).",
)
@json_option
@pass_state
def sync(
    state: AppState,
    tenant_id: int | None,
    all_tenants: bool,
    concurrency: int,
    once: bool,
    interval: float | None,
    metrics_port: int | None,
    metrics_host: str,
) -> int:
    """Upload then download; with --once a single cycle, else a loop until SIGINT/SIGTERM.

    On a signal the batches in flight are finished (POST and mark) and the command exits 0; a
    second signal abandons them unmarked and exits 130. A Client System that offers no download
    (MeterTrack) gets uploads only. Errors of one tenant are logged and recorded in sync_log;
    the loop goes on (an outage of the database or the Client System is retried with backoff).
    """

    def command() -> int:
        tenants = _tenant_selection(state, tenant_id, all_tenants)
        if interval is not None:
            state.override(interval=interval)
        if once:
            if metrics_port is not None:
                raise ConfigError("--metrics-port serves the loop; drop it or --once")
            return _one_shot(state, tenants, ["upload", "download"], concurrency)
        return _loop(state, tenants, concurrency, (metrics_port, metrics_host))

    return _guarded(state, command)


# -- the loop -----------------------------------------------------------------------------------


def _loop(
    state: AppState,
    tenants: list[int] | None,
    concurrency: int,
    metrics: tuple[int | None, str] = (None, "127.0.0.1"),
) -> int:
    out = state.output
    interval = state.settings.interval
    run = _Run(state, tenants, concurrency)
    cycles = {"n": 0}

    async def body(run: _Run) -> int:
        out.info(
            f"syncing {len(run.scheduler.tenant_ids)} tenant(s), {run.scheduler.concurrency} "
            f"at a time, every {interval:g} s; Ctrl-C or SIGTERM stops after the batches in "
            "flight"
        )

        def on_cycle(results: list[OperationResult], seconds: float) -> None:
            cycles["n"] += 1
            _report_cycle(out, cycles["n"], results, seconds)

        return int(await run.scheduler.run_forever(interval, on_cycle=on_cycle))

    settings = state.settings  # --metrics-port: the endpoint opens its own connection
    dsn = settings.dsn if metrics[0] is not None else None
    with observe.endpoint(*metrics, dsn=dsn, interval=interval, max_retries=settings.max_retries):
        value, error = _execute(run, body)
    if error is not None:
        return _fail(state, error, {"cycles": cycles["n"]})
    out.info(f"stopped cleanly after {value} cycle(s)")
    return int(ExitCode.OK)


def _report_cycle(
    out: Output, number: int, results: Sequence[OperationResult], seconds: float
) -> None:
    if out.json_mode:
        # One JSON document per cycle, one per line (NDJSON) for log shippers.
        import orjson

        line = {
            "cycle": number,
            "seconds": round(seconds, 3),
            "operations": [r.document() for r in results],
            "exit_code": int(exit_code_of(results)),
        }
        click.echo(orjson.dumps(line, default=str).decode())
        return
    up = sum(r.readings for r in results if r.operation == "upload")
    down = sum(r.readings for r in results if r.operation == "download")
    bad = [r for r in results if not r.ok]
    text = f"cycle {number}: {up:,} uploaded, {down:,} downloaded in {seconds:.2f} s"
    if bad:
        text += f"; {len(bad)} operation(s) with errors (see metersync status)"
    out.info(text)

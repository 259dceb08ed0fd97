"""``metersync serve``: run the reference Client System (for tests, demos, staging)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import Any

import click

from metersync.cli._app import AppState, check_dsn_syntax, open_db, pass_state, run
from metersync.errors import ConfigError
from metersync.tools.embedded import EmbeddedPostgres


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=3001, show_default=True, type=int, help="Port (0: any free one).")
@click.option(
    "--dsn",
    "server_dsn",
    metavar="DSN",
    envvar="METERSYNC_SERVE_DSN",
    help="The Client System's OWN database (env METERSYNC_SERVE_DSN). "
    "Default: an embedded PostgreSQL in a temporary directory (or --data-dir).",
)
@click.option(
    "--data-dir", type=click.Path(file_okay=False), help="Embedded server data directory."
)
@click.option(
    "--faults",
    "fault_spec",
    metavar="SPEC",
    help="Fault plan, e.g. 'random=0.05:503,drop_after_commit=2' (every kind: see the list above).",
)
@click.option("--max-batch", default=10_000, show_default=True, type=int, help="413 above this.")
@click.option(
    "--profile",
    type=click.Choice(["metersync", "metertrack"]),
    default="metersync",
    show_default=True,
    help="metersync: the reference server of our contract. metertrack: an emulation of the "
    "original MeterTrack Client System (not idempotent, no download, 10 MB bodies, its replies).",
)
@click.option(
    "--reading-delay-ms",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="metertrack profile: extra delay per stored reading (its one-reading-at-a-time pace).",
)
@click.option(
    "--sink",
    is_flag=True,
    help="Run a zero-cost Client System instead (benchmarks): answers each upload from a byte "
    "count of its body, stores nothing, serves pre-built download pages; no database.",
)
@click.option(
    "--sink-download",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    metavar="N",
    help="--sink: synthetic wide readings per tenant to serve for download (built when the "
    "tenant is registered: --import-tenants or POST /admin/tenants).",
)
@click.option(
    "--import-tenants",
    is_flag=True,
    help="Register the tenants and API keys of the sync database (global --dsn) on start.",
)
@pass_state
def serve(
    state: AppState,
    host: str,
    port: int,
    server_dsn: str | None,
    data_dir: str | None,
    fault_spec: str | None,
    max_batch: int,
    profile: str,
    reading_delay_ms: float,
    sink: bool,
    sink_download: int,
    import_tenants: bool,
) -> int:
    """Run the reference Client System until SIGINT/SIGTERM.

    The admin API (/admin/tenants, /admin/faults, /admin/stats, /admin/readings, /admin/reset)
    always requires the header X-Admin-Token: the token in METERSYNC_ADMIN_TOKEN, else a random
    one printed on stderr at start.

    \b
    --faults SPEC: comma-separated KEY=VALUE entries (reject may repeat):
      fail=N:STATUS        fail the next N matching requests with STATUS
      random=F:STATUS      fail a fraction F (0..1) of matching requests with STATUS
      throttle=N:SECONDS   answer the next N matching requests 429, Retry-After SECONDS
      rate429=F:SECONDS    answer a fraction F of matching requests 429, Retry-After
      delay=SECONDS[:N]    delay matching requests by SECONDS (only the next N if given)
      drop_after_commit=N  the next N uploads are stored, then the connection is closed
                           without an answer (the lost-response case)
      miscount=N           the next N upload answers claim one reading too many
      legacy=N             the next N upload answers use the old recordsProcessed shape
      reject=FIELD:VALUE   reject each uploaded reading whose FIELD equals VALUE
                           (numbers compare as numbers; VALUE null matches a JSON null)
      malformed_page=N     the next N download pages carry a reading with a bad UUID
      oversize_page=N      the next N download pages hold one reading more than asked
      garbage_page=N       the next N download pages are not {"readings": [...]}
      path=PREFIX          request path prefix that fail/random/throttle/rate429/delay
                           match (default /api/sync/readings/batch)
      seed=N               seed of the random choices (default 0: reproducible runs)

    \b
    With --profile metertrack: fail/random with STATUS 500 answer "Batch upload error"
    (nothing stored), with 401 "Invalid API key"; delay stores the batch FIRST, then waits
    before replying (a client read timeout after commit); drop_after_commit and reject (the
    reading's INSERT fails: skipped, reported by meter) as above; seed. Other kinds are refused.
    --sink takes no faults.

    \b
    Examples:
      metersync serve --faults 'random=0.05:503,rate429=0.05:1'
      metersync serve --faults 'fail=3:502,delay=1.5:3,drop_after_commit=4,seed=7'
      metersync serve --faults 'reject=meter_id:13,reject=power:null'
      metersync serve --faults 'fail=2:503,path=/api/health'
      metersync serve --faults 'malformed_page=1,oversize_page=1'
      metersync serve --profile metertrack --faults 'delay=2:1,drop_after_commit=1,fail=1:500'
    """
    from metersync.server import FaultPlan

    if not 0 <= port <= 65535:
        raise ConfigError(f"invalid --port {port}: the valid range is 0..65535")
    if max_batch < 1:
        raise ConfigError(f"invalid --max-batch {max_batch}: must be >= 1")
    faults = FaultPlan.from_spec(fault_spec) if fault_spec else None
    if sink:
        if profile != "metersync":
            raise ConfigError("--sink cannot go with --profile metertrack")
        source = click.get_current_context().get_parameter_source("server_dsn")
        from_env = source is click.core.ParameterSource.ENVIRONMENT
        if faults is not None or (server_dsn and not from_env) or data_dir:
            raise ConfigError("--sink takes no --faults, --dsn or --data-dir (it stores nothing)")
        server_dsn = None  # METERSYNC_SERVE_DSN in the environment: not needed, not used
        profile = "sink"
    elif sink_download:
        raise ConfigError("--sink-download applies to --sink only")
    if reading_delay_ms and profile != "metertrack":
        raise ConfigError("--reading-delay-ms applies to --profile metertrack only")
    if faults is not None and profile == "metertrack":
        from metersync.server.metertrack import check_plan

        check_plan(faults)
    if server_dsn:
        check_dsn_syntax(server_dsn)
    sync_dsn = state.require_dsn() if import_tenants else None
    admin_token = os.environ.get("METERSYNC_ADMIN_TOKEN") or None

    embedded: EmbeddedPostgres | None = None
    if not server_dsn and not sink:
        embedded = EmbeddedPostgres(data_dir)
        state.output.info(f"starting embedded PostgreSQL in {embedded.data_dir} ...")
        server_dsn = embedded.start()
    try:
        options: dict[str, Any] = {"profile": profile, "reading_delay_ms": reading_delay_ms}
        if profile == "metersync":
            options["max_batch"] = max_batch
        if sink:
            options["sink_download"] = sink_download
        dsn = server_dsn or ""
        run(lambda: _serve(state, dsn, host, port, options, faults, admin_token, sync_dsn))
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


async def _serve(
    state: AppState,
    dsn: str,
    host: str,
    port: int,
    options: dict[str, Any],
    faults: Any,
    admin_token: str | None,
    sync_dsn: str | None,
) -> None:
    import httpx

    from metersync.server import ReferenceServer

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = ReferenceServer(dsn, host, port, admin_token=admin_token, faults=faults, **options)
    await server.start()
    try:
        if sync_dsn is not None:
            count = 0
            async with open_db(sync_dsn) as db:
                tenants = list(await db.list_tenants())
            headers = {"X-Admin-Token": server.admin_token}
            async with httpx.AsyncClient(base_url=server.admin_url, headers=headers) as http:
                for row in tenants:
                    if not row.api_key:
                        continue
                    body = {"tenant_id": row.tenant_id, "api_key": row.api_key, "name": row.name}
                    response = await http.post("/tenants", json=body)
                    if response.status_code != 200:
                        raise ConfigError(
                            f"cannot register tenant {row.tenant_id}: HTTP {response.status_code}"
                        )
                    count += 1
            state.output.info(f"registered {count} tenant(s) from the sync database")
        what = {
            "metersync": "reference Client System",
            "metertrack": "MeterTrack Client System emulation",
            "sink": "zero-cost sink Client System",
        }[server.profile]
        state.output.info(
            f"{what} listening on {server.base_url} (admin: {server.admin_url}); Ctrl-C to stop"
        )
        if server.admin_token_generated:
            # Never an open admin API: the operator needs this token for /admin (always said,
            # even with --quiet; it is this run's own random token, not a configured secret).
            click.echo(
                f"admin token (X-Admin-Token): {server.admin_token}  "
                "(set METERSYNC_ADMIN_TOKEN to choose it)",
                err=True,
            )
        # A line on stdout for scripts that start `serve --port 0` and need the real URL.
        click.echo(server.base_url, nl=True)
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await server.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)

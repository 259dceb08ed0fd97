"""``metersync bench``: capacity planning (the work is in :mod:`metersync.tools.bench`)."""

from __future__ import annotations

import os

import click

from metersync.cli._app import AppState, json_option, pass_state
from metersync.tools import bench as bench_lib

#: The scratch tenant's Client System API key for a configured target (never METERSYNC_API_KEY).
BENCH_KEY_ENV = "METERSYNC_BENCH_API_KEY"

_HELP = """Sweep upload and download batch sizes and recommend the tenant's sizes.

Measures, per batch size: readings/s, p50/p95 batch latency (fetch to commit), SQL statements
per 100,000 readings and the peak RSS of this process, through the real upload and download
paths.

\b
Where it runs:
  by default          an embedded PostgreSQL and the reference Client System on loopback,
                      all thrown away afterwards (needs the 'bench' extra);
  --dsn D --api-url U  that sync database and Client System, only when BOTH are given on
                      this command line: METERSYNC_DSN, METERSYNC_API_URL, metersync.toml and
                      the global --dsn are ignored, so a shell set up for the daemon never
                      points the bench at production. The scratch tenant's Client System key
                      comes from METERSYNC_BENCH_API_KEY (never METERSYNC_API_KEY, the
                      daemon's key); --scratch-tenant is then required (the Client System
                      derives the tenant from the key).

\b
SAFETY RULE: the scratch tenant (a fresh random id above 9,000,000,000 by default, or the
one named with --scratch-tenant ID) must NOT EXIST before the bench starts: no tenant row,
no readings, no download cursor, no sync_log rows. The bench refuses to run otherwise,
creates it, and afterwards deletes every row keyed by its id, which are exactly the rows it
created. A configured Client System keeps the scratch readings it received.

Recommendation: the smallest size within 5% of the best throughput whose p95 latency fits
--latency-budget; --apply TENANT stores both sizes in that tenant's row (running daemons are
notified and pick them up on their next cycle).
"""


@click.command("bench", help=_HELP)
@click.option(
    "--dsn",
    metavar="DSN",
    help="Sync database to bench on (with --api-url; default: embedded; never METERSYNC_DSN).",
)
@click.option(
    "--api-url",
    metavar="URL",
    help="Client System base URL (with --dsn; default: embedded; never METERSYNC_API_URL).",
)
@click.option("--quick", is_flag=True, help="A short sweep (2 sizes per direction, few readings).")
@click.option(
    "--upload-sizes",
    metavar="N,N,...",
    help="Upload batch sizes to try [default: 50,100,200,500,1000,2000,5000,10000].",
)
@click.option(
    "--download-sizes",
    metavar="N,N,...",
    help="Download page sizes to try [default: 100,500,1000,2000,5000,10000].",
)
@click.option(
    "--readings",
    type=click.IntRange(min=1),
    metavar="N",
    help="Readings per batch size [default: max(20 x size, 20000), at most 200000].",
)
@click.option(
    "--latency-budget",
    type=click.FloatRange(min=0, min_open=True),
    metavar="MS",
    help="Largest acceptable p95 batch latency in milliseconds for the recommendation.",
)
@click.option(
    "--scratch-tenant",
    type=click.IntRange(min=1),
    metavar="ID",
    help="Scratch tenant id to create and remove; must not exist (default: a fresh random id).",
)
@click.option(
    "--apply",
    "apply_tenant",
    type=click.IntRange(min=1),
    metavar="TENANT",
    help="Store the recommended sizes in this tenant's row (needs --dsn and --api-url).",
)
@click.option(
    "--plot",
    "plot_file",
    type=click.Path(dir_okay=False, writable=True),
    metavar="FILE",
    help="Write a PNG chart of throughput and p95 latency by batch size (needs matplotlib).",
)
@json_option
@pass_state
def bench(
    state: AppState,
    dsn: str | None,
    api_url: str | None,
    quick: bool,
    upload_sizes: str | None,
    download_sizes: str | None,
    readings: int | None,
    latency_budget: float | None,
    scratch_tenant: int | None,
    apply_tenant: int | None,
    plot_file: str | None,
) -> None:
    changes = {
        "upload_sizes": bench_lib.parse_sizes(upload_sizes) if upload_sizes else None,
        "download_sizes": bench_lib.parse_sizes(download_sizes) if download_sizes else None,
        "readings": readings,
        "latency_budget_ms": latency_budget,
        "scratch_tenant": scratch_tenant,
    }
    if quick:
        options = bench_lib.BenchOptions.quick(**changes)
    else:
        options = bench_lib.BenchOptions(**{k: v for k, v in changes.items() if v is not None})
    if plot_file:  # fail before the sweep, not after it
        bench_lib.require_matplotlib()
    # Only this command's own --dsn/--api-url choose the target (never the environment, the
    # TOML file or the global flags: those point at production), and only the bench key.
    result = bench_lib.run_bench(
        options,
        dsn=dsn,
        api_url=api_url,
        api_key=os.environ.get(BENCH_KEY_ENV) if dsn else None,
        apply_tenant=apply_tenant,
        progress=state.output.info,
    )
    if plot_file:
        bench_lib.plot(result, plot_file)
    out = state.output
    if out.json_mode:
        out.emit_json(result.to_dict())
        return
    columns = [
        "batch size",
        "readings",
        "readings/s",
        "p50 ms",
        "p95 ms",
        "stmts/100k",
        "peak RSS MB",
    ]
    for title, rows in (("upload", result.upload), ("download", result.download)):
        out.table(
            f"{title} (scratch tenant {result.tenant_id}, {result.target})",
            columns,
            [
                (
                    r.batch_size,
                    r.readings,
                    r.readings_per_s,
                    r.p50_ms,
                    r.p95_ms,
                    r.statements_per_100k,
                    r.peak_rss_mb,
                )
                for r in rows
            ],
            right=columns,
        )
    out.line(
        f"recommended upload_batch_size: {result.recommended_upload}, "
        f"download_batch_size: {result.recommended_download}"
    )
    for note in result.notes:
        out.line(f"  {note}")
    if result.applied_to is not None:
        out.line(f"stored in tenant {result.applied_to} (running daemons were notified)")
    if plot_file:
        out.line(f"chart written to {plot_file}")
    out.line("scratch data removed" if result.cleaned_up else "WARNING: scratch data remains")

"""``metersync bench``: capacity planning (the work is in :mod:`metersync.tools.bench`)."""

from __future__ import annotations

import click

from metersync.cli._app import AppState, json_option, pass_state
from metersync.tools import bench as bench_lib

_HELP = """Sweep upload and download batch sizes and recommend the tenant's sizes.

Measures, per batch size: readings/s, p50/p95 batch latency (fetch to commit), SQL statements
per 100,000 readings and the peak RSS of this process, through the real upload and download
paths.

\b
Where it runs:
  no DSN configured   an embedded PostgreSQL and the reference Client System on loopback,
                      all thrown away afterwards;
  --dsn / METERSYNC_DSN  the configured sync database and Client System (--api-url /
                      METERSYNC_API_URL); the API key comes from METERSYNC_API_KEY or the
                      scratch tenant's row; --scratch-tenant is then required (the Client
                      System derives the tenant from the key).

\b
SAFETY RULE: the bench only ever writes readings to a scratch tenant that had NO readings
before it started. It refuses to run when the scratch tenant (a fresh random id above
9,000,000,000 by default, or the one named with --scratch-tenant ID) has any reading. It
deletes every reading it wrote and the scratch tenant's cursor, and the tenant row if it
created it. A configured Client System keeps the scratch readings it received.

Recommendation: the smallest size within 5% of the best throughput whose p95 latency fits
--latency-budget; --apply TENANT stores both sizes in that tenant's row (running daemons are
notified and pick them up on their next cycle).
"""


@click.command("bench", help=_HELP)
@click.option(
    "--dsn", metavar="DSN", help="Sync database (default: METERSYNC_DSN; none: embedded)."
)
@click.option("--api-url", metavar="URL", help="Client System base URL (with --dsn).")
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
    help="Scratch tenant id to write to; must have no readings (default: a fresh random id).",
)
@click.option(
    "--apply",
    "apply_tenant",
    type=click.IntRange(min=1),
    metavar="TENANT",
    help="Store the recommended sizes in this tenant's row (needs --dsn).",
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
    settings = state.settings
    dsn = dsn or settings.dsn
    result = bench_lib.run_bench(
        options,
        dsn=dsn,
        api_url=api_url or settings.api_url,
        api_key=settings.api_key,
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

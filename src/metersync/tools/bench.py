"""Capacity planning: sweep upload and download batch sizes on a scratch tenant, recommend sizes.

``metersync bench`` runs the real paths (``MeterReadingUploadManager``, ``DownloadManager``,
``SyncDatabase``, ``ClientSystemApiClient``) against the configured sync database and Client
System, or, with no DSN, against an embedded PostgreSQL and the reference Client System on
loopback. Per batch size it reports readings/s, p50/p95 batch latency, SQL statements per
100,000 readings and the peak RSS of this process.

Safety rules (it must never write into production by accident):

- it runs on the embedded default unless BOTH ``dsn`` and ``api_url`` are given (the CLI passes
  only its own ``--dsn``/``--api-url``, never ``METERSYNC_DSN``, the TOML file or the configured
  Client System); the configured target's key is ``METERSYNC_BENCH_API_KEY``, never the daemon's;
- it writes only to a scratch tenant id that **does not exist** before it starts (no tenant row,
  readings, cursor or sync_log rows); it refuses to start otherwise;
- cleanup deletes the rows keyed by that id, which are exactly the rows it created.

With the embedded default everything, Client System side included, is thrown away. A configured
Client System keeps the scratch readings it received: use a key of a scratch tenant there.

Recommendation: per direction, the smallest batch size whose throughput is within 5% of the best
and whose p95 batch latency fits the latency budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from metersync.batch_sizes import MAX_BATCH_SIZE, MIN_BATCH_SIZE
from metersync.errors import ConfigError
from metersync.tools.measure import PeakRss, ServerProcess

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_DOWNLOAD_SIZES",
    "DEFAULT_UPLOAD_SIZES",
    "BenchOptions",
    "BenchResult",
    "SizeResult",
    "plot",
    "recommend",
    "require_matplotlib",
    "run_bench",
]

DEFAULT_UPLOAD_SIZES: tuple[int, ...] = (50, 100, 200, 500, 1000, 2000, 5000, 10_000)
DEFAULT_DOWNLOAD_SIZES: tuple[int, ...] = (100, 500, 1000, 2000, 5000, 10_000)
QUICK_UPLOAD_SIZES: tuple[int, ...] = (100, 1000)
QUICK_DOWNLOAD_SIZES: tuple[int, ...] = (500, 1000)
QUICK_READINGS = 3000
#: Scratch tenant ids are drawn above this, far from real tenant ids.
SCRATCH_BASE = 9_000_000_000
#: Throughput within this fraction of the best counts as "as good as the best".
WITHIN_BEST = 0.05


def default_readings(size: int) -> int:
    """Readings uploaded per batch size: at least 20 batches, at least 20,000, at most 200,000."""
    return min(max(20 * size, 20_000), 200_000)


@dataclass(frozen=True, slots=True)
class BenchOptions:
    """What to sweep. ``readings`` per size (``None``: :func:`default_readings`)."""

    upload_sizes: tuple[int, ...] = DEFAULT_UPLOAD_SIZES
    download_sizes: tuple[int, ...] = DEFAULT_DOWNLOAD_SIZES
    readings: int | None = None
    latency_budget_ms: float | None = None
    scratch_tenant: int | None = None

    @classmethod
    def quick(cls, **changes: Any) -> BenchOptions:
        """A short sweep (two sizes per direction, few readings): well under 30 s."""
        base = {
            "upload_sizes": QUICK_UPLOAD_SIZES,
            "download_sizes": QUICK_DOWNLOAD_SIZES,
            "readings": QUICK_READINGS,
        }
        base.update({k: v for k, v in changes.items() if v is not None})
        return cls(**base)

    def __post_init__(self) -> None:
        for name in ("upload_sizes", "download_sizes"):
            sizes = getattr(self, name)
            bad = [s for s in sizes if not MIN_BATCH_SIZE <= s <= MAX_BATCH_SIZE]
            if bad:
                raise ConfigError(
                    f"{name.replace('_', ' ')}: {bad} out of range "
                    f"{MIN_BATCH_SIZE}..{MAX_BATCH_SIZE}"
                )
        if self.readings is not None and self.readings < 1:
            raise ConfigError(f"readings per size must be >= 1, got {self.readings}")
        if self.latency_budget_ms is not None and self.latency_budget_ms <= 0:
            raise ConfigError(f"latency budget must be > 0 ms, got {self.latency_budget_ms}")

    def readings_for(self, size: int) -> int:
        """Readings to move at batch size ``size``."""
        return self.readings if self.readings is not None else default_readings(size)


@dataclass(frozen=True, slots=True)
class SizeResult:
    """One batch size of one direction."""

    direction: str
    batch_size: int
    readings: int
    batches: int
    seconds: float
    readings_per_s: float
    p50_ms: float
    p95_ms: float
    statements: int
    statements_per_100k: float
    peak_rss_mb: float


@dataclass(slots=True)
class BenchResult:
    """The sweep, the recommendation and what was cleaned up."""

    tenant_id: int
    target: str
    upload: list[SizeResult] = field(default_factory=list)
    download: list[SizeResult] = field(default_factory=list)
    latency_budget_ms: float | None = None
    recommended_upload: int | None = None
    recommended_download: int | None = None
    notes: list[str] = field(default_factory=list)
    applied_to: int | None = None
    cleaned_up: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return asdict(self)


# -- measurement helpers -------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) by linear interpolation; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


class _BatchClock:
    """Batch latencies: from the start of a batch's fetch to the end of its commit.

    Upload: keyed by the batch's first reading id (fetch → mark). Download: by page order (GET →
    stored). With the upload overlap a batch's latency includes waiting for the one before it,
    which is what an operator's latency budget is about.
    """

    def __init__(self) -> None:
        self.started: dict[Any, float] = {}
        self.latencies: list[float] = []
        self._pages: list[float] = []

    def begin(self, key: Any) -> None:
        self.started[key] = time.perf_counter()

    def end(self, key: Any) -> None:
        begun = self.started.pop(key, None)
        if begun is not None:
            self.latencies.append(time.perf_counter() - begun)

    def begin_page(self) -> None:
        self._pages.append(time.perf_counter())

    def end_page(self) -> None:
        if self._pages:
            self.latencies.append(time.perf_counter() - self._pages.pop(0))


class _TimedDb:
    """Delegates to a ``SyncDatabase``, noting when each batch is fetched and committed."""

    def __init__(self, db: Any, clock: _BatchClock) -> None:
        self._db = db
        self._clock = clock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)

    async def fetch_unsynchronized(self, tenant_id: int, limit: int, **kwargs: Any) -> Any:
        begun = time.perf_counter()
        batch = await self._db.fetch_unsynchronized(tenant_id, limit, **kwargs)
        if batch.num_rows:
            self._clock.started[batch.column("meter_reading_id")[0].as_py()] = begun
        return batch

    async def mark_synchronized(self, tenant_id: int, ids: Any) -> Any:
        result = await self._db.mark_synchronized(tenant_id, ids)
        if len(ids):
            self._clock.end(ids[0].as_py())
        return result

    async def store_download_pages(
        self, tenant_id: int, pages: Any, next_cursor: Any, **kwargs: Any
    ) -> Any:
        result = await self._db.store_download_pages(tenant_id, pages, next_cursor, **kwargs)
        for _ in pages:  # pages stored together end together
            self._clock.end_page()
        return result


class _TimedClient:
    """Delegates to a ``ClientSystemApiClient``, noting when each download page is asked for."""

    def __init__(self, client: Any, clock: _BatchClock) -> None:
        self._client = client
        self._clock = clock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def get_readings(self, limit: int, after: str | None = None, **kwargs: Any) -> Any:
        self._clock.begin_page()
        return await self._client.get_readings(limit, after, **kwargs)


def _size_result(
    direction: str,
    size: int,
    readings: int,
    batches: int,
    seconds: float,
    statements: int,
    clock: _BatchClock,
    rss_mb: float,
) -> SizeResult:
    lat = clock.latencies
    return SizeResult(
        direction=direction,
        batch_size=size,
        readings=readings,
        batches=batches,
        seconds=round(seconds, 4),
        readings_per_s=round(readings / seconds, 1) if seconds > 0 else 0.0,
        p50_ms=round(percentile(lat, 0.50) * 1000, 2),
        p95_ms=round(percentile(lat, 0.95) * 1000, 2),
        statements=statements,
        statements_per_100k=round(statements * 100_000 / readings, 1) if readings else 0.0,
        peak_rss_mb=round(rss_mb, 1),
    )


def recommend(
    results: Sequence[SizeResult], latency_budget_ms: float | None
) -> tuple[int | None, str]:
    """The smallest size within 5% of the best throughput whose p95 fits the budget.

    Returns ``(size, why)``. When no size fits the budget, the size with the lowest p95 is
    returned and ``why`` says so.
    """
    if not results:
        return None, "nothing measured"
    fitting = [r for r in results if latency_budget_ms is None or r.p95_ms <= latency_budget_ms]
    if not fitting:
        best = min(results, key=lambda r: r.p95_ms)
        return best.batch_size, (
            f"no size has p95 within {latency_budget_ms:g} ms; {best.batch_size} has the "
            f"lowest p95 ({best.p95_ms:g} ms)"
        )
    top = max(r.readings_per_s for r in fitting)
    good = sorted(
        (r for r in fitting if r.readings_per_s >= (1 - WITHIN_BEST) * top),
        key=lambda r: r.batch_size,
    )
    choice = good[0]
    budget = (
        f", p95 {choice.p95_ms:g} ms within {latency_budget_ms:g} ms" if latency_budget_ms else ""
    )
    return choice.batch_size, (
        f"smallest size within 5% of the best throughput ({choice.readings_per_s:,.0f} of "
        f"{top:,.0f} readings/s){budget}"
    )


# -- scratch tenant ------------------------------------------------------------------------------

#: Every table that holds rows keyed by tenant_id. A scratch tenant has no row in any of them
#: before the bench starts, so afterwards every such row is one the bench created.
_TENANT_TABLES = ("meter_reading", "sync_state", "sync_log", "tenant")
_COUNT_ROWS = " UNION ALL ".join(
    f"SELECT '{table}', count(*) FROM {table} WHERE tenant_id = %(t)s" for table in _TENANT_TABLES
)
_DELETE_READINGS = "DELETE FROM meter_reading WHERE tenant_id = %s"
_DELETE_CURSOR = "DELETE FROM sync_state WHERE tenant_id = %s"


def _tenant_rows(dsn: str, tenant_id: int) -> dict[str, int]:
    """Rows keyed by ``tenant_id`` per table (only the tables that have any)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(_COUNT_ROWS, {"t": tenant_id}).fetchall()
    return {str(table): int(n) for table, n in rows if n}


def _delete_readings(dsn: str, tenant_id: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(_DELETE_READINGS, (tenant_id,))
        conn.execute(_DELETE_CURSOR, (tenant_id,))


def _drop_scratch(dsn: str, tenant_id: int) -> None:
    """Delete the scratch tenant: every row keyed by its id, all created by the bench (the
    tenant had none anywhere before it started: :func:`check_scratch_tenant`)."""
    with psycopg.connect(dsn) as conn:
        for table in _TENANT_TABLES:  # the tenant row last (other tables may reference it)
            conn.execute(
                psycopg.sql.SQL("DELETE FROM {} WHERE tenant_id = %s").format(
                    psycopg.sql.Identifier(table)
                ),
                (tenant_id,),
            )
        conn.commit()


def check_scratch_tenant(dsn: str, tenant_id: int) -> None:
    """Refuse a tenant id that exists: the bench writes only to a tenant it creates itself.

    "Exists" means any row keyed by the id: the tenant row, readings, a download cursor or
    sync_log entries (cleanup deletes all of those, so none may be someone else's).
    """
    found = _tenant_rows(dsn, tenant_id)
    if found:
        what = ", ".join(f"{n:,} in {table}" for table, n in sorted(found.items()))
        raise ConfigError(
            f"scratch tenant {tenant_id} already exists in the sync database ({what}): "
            "metersync bench only writes to a tenant id that does not exist yet and removes it "
            "afterwards; name an unused id with --scratch-tenant ID"
        )


# -- the environment: embedded default or the configured systems --------------------------------


@dataclass
class Target:
    """Where the bench runs: the sync database DSN, the Client System URL and key."""

    dsn: str
    api_url: str
    api_key: str | None
    embedded: bool
    register: Callable[[int, str], None] | None = None


async def _migrate(dsn: str) -> None:
    from metersync.store.database import SyncDatabase

    async with _connected(SyncDatabase, dsn) as db:
        await db.migrate()


@contextlib.contextmanager
def embedded_target() -> Iterator[Target]:
    """An embedded PostgreSQL (sync database) and the reference Client System in a subprocess.

    Everything lives in a temporary data directory removed at the end.
    """
    from metersync.tools.embedded import EmbeddedPostgres, create_database

    server = EmbeddedPostgres()
    admin = server.start()
    try:
        sync_dsn = create_database(admin, "metersync_bench")
        cs_dsn = create_database(admin, "metersync_bench_cs")
        asyncio.run(_migrate(sync_dsn))
        # Its own process: the Client System must not share this process's GIL and skew timings.
        with ServerProcess(cs_dsn) as cs:

            def register(tenant_id: int, api_key: str) -> None:
                cs.register(tenant_id, api_key, name="metersync bench")

            yield Target(sync_dsn, cs.base_url, None, embedded=True, register=register)
    finally:
        server.stop()


# -- the sweep -----------------------------------------------------------------------------------


async def _insert_scratch(db: Any, tenant_id: int, n: int, seed: int) -> None:
    from metersync.tools.synthetic import reading_batch

    batch = reading_batch(n, seed=seed, tenant_id=tenant_id)
    await db.insert_readings(batch, chunk_rows=MAX_BATCH_SIZE)


async def _upload_sweep(
    db: Any,
    client: Any,
    cache: Any,
    tenant_id: int,
    options: BenchOptions,
    progress: Callable[[str], None],
) -> list[SizeResult]:
    from metersync.engine.upload import MeterReadingUploadManager

    results = []
    for size in options.upload_sizes:
        n = options.readings_for(size)
        progress(f"upload: {n:,} readings in batches of {size}")
        await db.set_tenant_batch_sizes(tenant_id, upload=size)
        cache.invalidate(tenant_id)
        await _insert_scratch(db, tenant_id, n, seed=random.randrange(2**32))
        clock = _BatchClock()
        manager = MeterReadingUploadManager(_TimedDb(db, clock), client, cache, tenant_id=tenant_id)
        rss = PeakRss(interval=0.02)
        try:
            report = await manager.upload()
        finally:
            peak = rss.stop().peak_mb
        if report.error:
            raise RuntimeError(f"upload at batch size {size} ended early: {report.error}")
        results.append(
            _size_result(
                "upload",
                size,
                report.readings_sent,
                report.batches,
                report.seconds,
                report.statements,
                clock,
                peak,
            )
        )
    return results


async def _download_sweep(
    dsn: str,
    db: Any,
    client: Any,
    cache: Any,
    tenant_id: int,
    options: BenchOptions,
    available: int,
    chunk_rows: int,
    progress: Callable[[str], None],
) -> list[SizeResult]:
    """Download what the upload sweep left on the Client System, one slice per size.

    The local copies are deleted first, so every page is really stored; the download cursor
    moves on from size to size, so each size reads readings the others did not.
    """
    from metersync.engine.download import DownloadManager

    _delete_readings(dsn, tenant_id)
    sizes = list(options.download_sizes)
    share = available // max(len(sizes), 1)
    results = []
    for size in sizes:
        n = min(options.readings_for(size), share)
        if n < 1:
            break
        progress(f"download: {n:,} readings in pages of {size}")
        await db.set_tenant_batch_sizes(tenant_id, download=size, upload=chunk_rows)
        cache.invalidate(tenant_id)
        clock = _BatchClock()
        manager = DownloadManager(
            _TimedDb(db, clock),
            _TimedClient(client, clock),
            cache,
            tenant_id=tenant_id,
            max_pages=math.ceil(n / size),
        )
        rss = PeakRss(interval=0.02)
        try:
            report = await manager.download()
        finally:
            peak = rss.stop().peak_mb
        if report.error:
            raise RuntimeError(f"download at page size {size} ended early: {report.error}")
        results.append(
            _size_result(
                "download",
                size,
                report.readings,
                report.pages,
                report.seconds,
                report.statements,
                clock,
                peak,
            )
        )
    return results


async def _sweep(
    target: Target,
    tenant_id: int,
    api_key: str,
    options: BenchOptions,
    result: BenchResult,
    progress: Callable[[str], None],
) -> None:
    from metersync.engine.tenant_cache import TenantCache
    from metersync.remote.client import ClientSystemApiClient
    from metersync.store.database import SyncDatabase

    async with _connected(SyncDatabase, target.dsn) as db:
        client = ClientSystemApiClient(target.api_url, api_key)
        try:
            cache = TenantCache(db)
            result.upload = await _upload_sweep(db, client, cache, tenant_id, options, progress)
            up, why = recommend(result.upload, options.latency_budget_ms)
            result.recommended_upload = up
            result.notes.append(f"upload: {why}")
            uploaded = sum(r.readings for r in result.upload)
            result.download = await _download_sweep(
                target.dsn, db, client, cache, tenant_id, options, uploaded, up or 1000, progress
            )
            down, why = recommend(result.download, options.latency_budget_ms)
            result.recommended_download = down
            result.notes.append(f"download: {why}")
        finally:
            await client.aclose()


@contextlib.asynccontextmanager
async def _connected(cls: Any, dsn: str) -> AsyncIterator[Any]:
    db = await cls.connect(dsn)
    try:
        yield db
    finally:
        await db.close()


async def _create_scratch(target: Target, tenant_id: int, api_key: str | None) -> str:
    """Create the scratch tenant row; return its API key (a random one when none is given)."""
    from metersync.store.database import SyncDatabase

    key = api_key or f"bench-{uuid.uuid4().hex}"
    async with _connected(SyncDatabase, target.dsn) as db:
        await db.add_tenant(tenant_id, "metersync bench (scratch)", key)
    return key


async def _apply(dsn: str, tenant_id: int, upload: int | None, download: int | None) -> None:
    from metersync.store.database import SyncDatabase

    async with _connected(SyncDatabase, dsn) as db:
        await db.set_tenant_batch_sizes(tenant_id, upload=upload, download=download)


def run_bench(
    options: BenchOptions,
    *,
    dsn: str | None = None,
    api_url: str | None = None,
    api_key: str | None = None,
    apply_tenant: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> BenchResult:
    """Run the sweep (embedded default when ``dsn`` is None) and return its result.

    ``apply_tenant`` stores the recommended sizes in that tenant's row (daemons are notified);
    with the embedded default there is no real tenant to apply to.
    """
    say = progress or (lambda _msg: None)
    if (dsn is None) != (api_url is None):
        raise ConfigError(
            "metersync bench runs on an embedded PostgreSQL and Client System unless BOTH "
            "--dsn and --api-url are given on its command line (METERSYNC_DSN, "
            "METERSYNC_API_URL and metersync.toml are ignored on purpose)"
        )
    if dsn is None:
        if apply_tenant is not None:
            raise ConfigError("--apply needs the sync database given with --dsn and --api-url")
        with embedded_target() as target:
            return _run_on(target, options, None, say)
    assert api_url is not None
    if not api_key:
        raise ConfigError(
            "with --dsn and --api-url, set METERSYNC_BENCH_API_KEY to the Client System API key "
            "of the scratch tenant (METERSYNC_API_KEY is not used: it is a real tenant's key)"
        )
    target = Target(dsn, api_url, api_key, embedded=False)
    return _run_on(target, options, apply_tenant, say)


def _run_on(
    target: Target, options: BenchOptions, apply_tenant: int | None, say: Callable[[str], None]
) -> BenchResult:
    explicit = options.scratch_tenant is not None
    if not target.embedded and not explicit:
        raise ConfigError(
            "with a configured Client System, name the scratch tenant whose API key you give: "
            "--scratch-tenant ID (the Client System derives the tenant from the key)"
        )
    tenant_id = (
        options.scratch_tenant if explicit else SCRATCH_BASE + random.randrange(1, 999_999_999)
    )
    assert tenant_id is not None
    if apply_tenant is not None and apply_tenant == tenant_id:
        raise ConfigError("--apply names the scratch tenant; name the tenant to configure")
    check_scratch_tenant(target.dsn, tenant_id)
    result = BenchResult(
        tenant_id=tenant_id,
        target="embedded PostgreSQL + reference Client System (loopback)"
        if target.embedded
        else "configured sync database and Client System",
        latency_budget_ms=options.latency_budget_ms,
    )
    # From here on the tenant id is ours: it had no row anywhere (checked just above; a
    # concurrent creation makes add_tenant fail on the primary key before anything is written).
    key = asyncio.run(_create_scratch(target, tenant_id, target.api_key))
    try:
        if target.register is not None:
            target.register(tenant_id, key)
        asyncio.run(_sweep(target, tenant_id, key, options, result, say))
    finally:
        _drop_scratch(target.dsn, tenant_id)
        result.cleaned_up = not _tenant_rows(target.dsn, tenant_id)
    if not target.embedded:
        result.notes.append(
            f"the Client System keeps the scratch readings it received for tenant {tenant_id}"
        )
    if apply_tenant is not None:
        asyncio.run(
            _apply(target.dsn, apply_tenant, result.recommended_upload, result.recommended_download)
        )
        result.applied_to = apply_tenant
    return result


# -- chart ---------------------------------------------------------------------------------------


def require_matplotlib() -> Any:
    """Return ``matplotlib.pyplot`` (Agg backend), or a ConfigError saying how to install it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError(
            "--plot needs matplotlib, an optional extra: pip install 'metersync[bench]'"
        ) from None
    return plt


def plot(result: BenchResult, path: str | os.PathLike[str]) -> Path:
    """Write a PNG of throughput and p95 latency against batch size (needs matplotlib)."""
    plt = require_matplotlib()
    out = Path(path)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=90)
    from matplotlib.ticker import FuncFormatter, NullFormatter

    for direction, rows, color, chosen in (
        ("upload", result.upload, "tab:blue", result.recommended_upload),
        ("download", result.download, "tab:orange", result.recommended_download),
    ):
        if not rows:
            continue
        sizes = [r.batch_size for r in rows]
        axes[0].plot(sizes, [r.readings_per_s for r in rows], "o-", color=color, label=direction)
        axes[1].plot(sizes, [r.p95_ms for r in rows], "o-", color=color, label=direction)
        for r in rows:  # a star on the recommended size
            if r.batch_size == chosen:
                axes[0].plot([chosen], [r.readings_per_s], "*", color=color, markersize=14)
    plain = FuncFormatter(lambda value, _pos: f"{value:,.0f}" if value >= 1 else f"{value:g}")
    for ax, label in ((axes[0], "readings / s"), (axes[1], "p95 batch latency (ms)")):
        ax.set_xscale("log")
        if ax is axes[1]:
            ax.set_yscale("log")  # latencies span orders of magnitude
        ax.xaxis.set_major_formatter(plain)
        ax.yaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("batch size")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    if result.latency_budget_ms:
        axes[1].axhline(result.latency_budget_ms, color="grey", linestyle="--", linewidth=1)
    fig.suptitle("metersync bench: throughput and latency by batch size", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, format="png")
    plt.close(fig)
    return out


def parse_sizes(text: str) -> tuple[int, ...]:
    """``"50,100,1000"`` → ``(50, 100, 1000)`` (sorted, unique), or a ConfigError."""
    try:
        sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ConfigError(f"batch sizes must be comma-separated integers, got {text!r}") from None
    if not sizes:
        raise ConfigError("no batch size given")
    return tuple(sizes)

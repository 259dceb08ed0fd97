"""Peak RSS of the real upload path while draining a backlog of N readings.

Usage::

    python benchmarks/rss.py --readings 100000 --readings 1000000 [--batch-size 1000]
                             [--json bench-results/rss.json]

The parent process starts PostgreSQL (``METERSYNC_BENCH_DSN`` or the embedded one) and the reference
Client System (its own process), loads each backlog under its own tenant with binary COPY, then
starts a **fresh child process** per backlog that drains it through ``MeterReadingUploadManager``
(fetch → JSON → POST → mark, the daemon's path) and reports its peak resident memory
(``VmHWM``, imports included; see :func:`_maxrss_mb` for why not ``ru_maxrss``). The API key
reaches the child through its environment, never its argv (so does the DSN).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

LOAD_CHUNK = 100_000
KEY_ENV = "METERSYNC_RSS_API_KEY"
DSN_ENV = "METERSYNC_RSS_DSN"  # a DSN may hold a password: environment, not argv


def _maxrss_mb() -> float:
    """Peak RSS of this process image in MiB.

    ``VmHWM`` from /proc (Linux): the high-water mark of this process's own memory map. Not
    ``ru_maxrss``: that one survives ``execve`` and so starts at the *parent's* RSS at fork time
    (the parent holds the loaded backlog), which would overstate the child by 150 MB.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


async def _drain(dsn: str, api_url: str, api_key: str, tenant_id: int) -> dict[str, float]:
    from metersync.engine.tenant_cache import TenantCache
    from metersync.engine.upload import MeterReadingUploadManager
    from metersync.remote.client import ClientSystemApiClient
    from metersync.store.database import SyncDatabase

    before = _maxrss_mb()
    db = await SyncDatabase.connect(dsn)
    client = ClientSystemApiClient(api_url, api_key)
    try:
        manager = MeterReadingUploadManager(db, client, TenantCache(db), tenant_id=tenant_id)
        started = time.perf_counter()
        report = await manager.upload()
        seconds = time.perf_counter() - started
    finally:
        await client.aclose()
        await db.close()
    if report.error:
        raise SystemExit(f"upload ended early: {report.error}")
    return {
        "readings": report.readings_sent,
        "batches": report.batches,
        "statements": report.statements,
        "seconds": round(seconds, 2),
        "readings_per_s": round(report.readings_sent / seconds, 1),
        "rss_after_imports_mb": round(before, 1),
        "peak_rss_mb": round(_maxrss_mb(), 1),
    }


def child(args: argparse.Namespace) -> int:
    """Drain the tenant's backlog and print the measurement as one JSON line."""
    api_key, dsn = os.environ.pop(KEY_ENV), os.environ.pop(DSN_ENV)
    result = asyncio.run(_drain(dsn, args.api_url, api_key, args.tenant))
    print(json.dumps(result), flush=True)
    return 0


def _load(dsn: str, tenant_id: int, readings: int) -> None:
    from _support import copy_in_sql, pieces
    from metersync.codec import copy_binary
    from metersync.tools.synthetic import reading_batch

    start = datetime(2026, 1, 1, tzinfo=UTC)
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        for i, first in enumerate(range(0, readings, LOAD_CHUNK)):
            n = min(LOAD_CHUNK, readings - first)
            # 15 s interval over 50 meters: 0.3 s between readings; chunks follow each other.
            batch = reading_batch(
                n,
                seed=1000 * tenant_id + i,
                start=start + timedelta(seconds=0.3 * first),
                tenant_id=tenant_id,
            )
            with cur.copy(copy_in_sql(batch.schema.names)) as copy:
                for piece in pieces(copy_binary(batch)):
                    copy.write(piece)
            conn.commit()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE meter_reading")


def _prepare_database(admin_dsn: str, tenants: list[tuple[int, int]]) -> tuple[str, str]:
    from metersync.store.database import SyncDatabase
    from metersync.tools.embedded import create_database

    names = [f"ms_rss_{uuid.uuid4().hex[:8]}", f"ms_rss_cs_{uuid.uuid4().hex[:8]}"]
    sync_dsn, cs_dsn = (create_database(admin_dsn, n) for n in names)

    async def migrate() -> None:
        async with await SyncDatabase.connect(sync_dsn) as db:
            await db.migrate()
            for tenant_id, size in tenants:
                await db.add_tenant(
                    tenant_id, f"rss-{tenant_id}", f"rss-key-{tenant_id}", upload_batch_size=size
                )

    asyncio.run(migrate())
    return sync_dsn, cs_dsn


def parent(args: argparse.Namespace) -> int:
    """Set up, load each backlog, measure each in a fresh child, print and store the results."""
    from _support import ServerProcess
    from metersync.tools.embedded import EmbeddedPostgres

    server = None
    admin_dsn = os.environ.get("METERSYNC_BENCH_DSN")
    if not admin_dsn:
        server = EmbeddedPostgres()
        admin_dsn = server.start()
    cs = None
    runs = []
    try:
        tenants = [(100 + i, args.batch_size) for i in range(len(args.readings))]
        sync_dsn, cs_dsn = _prepare_database(admin_dsn, tenants)
        cs = ServerProcess(cs_dsn)
        for (tenant_id, _), readings in zip(tenants, args.readings, strict=True):
            key = f"rss-key-{tenant_id}"
            cs.register(tenant_id, key)
            t0 = time.perf_counter()
            _load(sync_dsn, tenant_id, readings)
            print(
                f"loaded {readings:,} readings in {time.perf_counter() - t0:.1f} s", file=sys.stderr
            )
            env = dict(os.environ, **{KEY_ENV: key, DSN_ENV: sync_dsn})
            out = subprocess.run(
                [
                    sys.executable,
                    "-W",
                    "ignore",
                    __file__,
                    "--child",
                    "--api-url",
                    cs.base_url,
                    "--tenant",
                    str(tenant_id),
                ],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            if out.returncode != 0:
                print(out.stderr, file=sys.stderr)
                return out.returncode
            result = json.loads(out.stdout.strip().splitlines()[-1])
            result["batch_size"] = args.batch_size
            assert result["readings"] == readings, result
            runs.append(result)
            print(json.dumps(result), file=sys.stderr)
    finally:
        if cs is not None:
            cs.stop()
        if server is not None:
            server.stop()
    for r in runs:
        print(
            f"backlog {r['readings']:>9,}  B={r['batch_size']}  {r['readings_per_s']:>9,.0f} "
            f"readings/s  peak RSS {r['peak_rss_mb']:.0f} MB "
            f"(after imports {r['rss_after_imports_mb']:.0f} MB)"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"runs": runs}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="peak RSS while draining a backlog")
    parser.add_argument(
        "--readings", type=int, action="append", help="backlog size (repeatable; default 100000)"
    )
    parser.add_argument("--batch-size", type=int, default=1000, help="upload batch size")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--api-url", help=argparse.SUPPRESS)
    parser.add_argument("--tenant", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    args.readings = args.readings or [100_000]
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())

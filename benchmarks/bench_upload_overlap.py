"""Upload against a zero-cost Client System: where the time goes, 1 vs 2 POSTs in flight.

A/B helper for issue 12's upload target (≤ 1.5× the floor). One embedded PostgreSQL, one
``metersync serve --sink`` in its own process, ``--rows`` wide readings of one tenant. Each round
runs, in this order and on the same data (reset + ``VACUUM ANALYZE`` untimed before each run):
the floor (one binary COPY out of the pending readings + one set-based UPDATE, as in
``bench_engine.py``) and the engine with each ``--in-flight`` width. Rounds interleave the
variants so that the shared machine's load hits them alike; the table gives best and median.

``--phases`` wraps the engine's steps with timers (fetch = COPY out + decode, encode, POST,
mark) and reports the sum of each per run: phases overlap, so the sum exceeds the wall clock.

Run::

    .venv/bin/python benchmarks/bench_upload_overlap.py --rows 100000 --rounds 5 [--phases]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import bench_engine as be  # noqa: E402
from _support import ServerProcess  # noqa: E402
from metersync.engine import upload as up  # noqa: E402
from metersync.engine.tenant_cache import TenantCache  # noqa: E402
from metersync.remote.client import ClientSystemApiClient  # noqa: E402
from metersync.store.database import SyncDatabase  # noqa: E402
from metersync.tools.embedded import EmbeddedPostgres, create_database, drop_database  # noqa: E402
from metersync.tools.synthetic import reading_batch  # noqa: E402

PHASES: collections.Counter[str] = collections.Counter()
_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def _cpu(pid: int, children: bool = False) -> float:
    """CPU seconds of a process (fields utime, stime; with ``children`` also cutime, cstime:
    the backends that already exited)."""
    f = _stat(pid)
    ticks = int(f[11]) + int(f[12]) + ((int(f[13]) + int(f[14])) if children else 0)
    return ticks / _TICK


def _pg_cpu(postmaster: int) -> float:
    """CPU seconds of one PostgreSQL cluster: the postmaster, its live children, and the
    children it reaped."""
    total = _cpu(postmaster, children=True)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                f = _stat(int(entry))
            except OSError:
                continue
            if int(f[1]) == postmaster:
                total += (int(f[11]) + int(f[12])) / _TICK
    return total


def _timed(obj: Any, name: str, key: str) -> None:
    """Wrap the coroutine method ``obj.name`` so its time adds to ``PHASES[key]``."""
    inner = getattr(obj, name)

    async def run(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await inner(*args, **kwargs)
        finally:
            PHASES[key] += time.perf_counter() - t0

    setattr(obj, name, run)


def _time_encode() -> None:
    inner = up._encode

    def run(batch: Any, profile: Any) -> bytes:
        t0 = time.perf_counter()
        try:
            return inner(batch, profile)
        finally:
            PHASES["encode"] += time.perf_counter() - t0

    up._encode = run  # type: ignore[assignment]


async def engine(dsn: str, url: str, in_flight: int, phases: bool, companion: bool = True) -> Any:
    """One upload cycle of the whole backlog; the report."""
    async with (
        await SyncDatabase.connect(dsn) as db,
        ClientSystemApiClient(url, be.KEY_UP, verify=False) as client,
    ):
        await client.profile()
        if phases:
            _timed(db, "fetch_unsynchronized", "fetch")
            _timed(db, "mark_synchronized", "mark")
            _timed(client, "post_batch", "post")
        manager = up.MeterReadingUploadManager(
            db, client, TenantCache(db), tenant_id=be.UP, max_in_flight=in_flight
        )
        manager.use_companion = companion
        return await manager.upload()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--in-flight",
        nargs="+",
        default=["1", "2"],
        help="widths to run; suffix 's' (e.g. 1s): prefetch on the lock's own connection",
    )
    p.add_argument("--phases", action="store_true", help="time fetch/encode/POST/mark")
    args = p.parse_args(argv)
    if args.phases:
        _time_encode()
    external = os.environ.get("METERSYNC_BENCH_DSN")
    server = None if external else EmbeddedPostgres()
    admin = external or server.start()  # type: ignore[union-attr]
    dsn = create_database(admin, f"ms_bench_overlap_{uuid.uuid4().hex[:8]}")
    sink = None
    try:
        asyncio.run(be._migrate(dsn, {be.UP: be.KEY_UP}, upload=args.batch, download=args.batch))
        backlog = reading_batch(args.rows, seed=11, tenant_id=be.UP)
        be._copy_load(dsn, backlog)
        columns = [c for c in backlog.schema.names if c != "tenant_id"]
        sink = ServerProcess("", profile="sink")
        sink.register(be.UP, be.KEY_UP)
        with be.psycopg.connect(dsn) as conn:
            row = conn.execute("SELECT pg_backend_pid()").fetchone()
            assert row is not None
            postmaster = int(_stat(int(row[0]))[1])
        cpu: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        times: dict[str, list[float]] = collections.defaultdict(list)
        phase_sums: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )
        statements: dict[str, int] = {}
        for _ in range(args.rounds):
            be._reset_pending(dsn, be.UP)
            c0 = (time.process_time(), _pg_cpu(postmaster))
            times["floor"].append(be.upload_floor(dsn, columns, args.rows))
            time.sleep(0.05)
            c1 = (time.process_time(), _pg_cpu(postmaster))
            cpu["floor"]["client"] += c1[0] - c0[0]
            cpu["floor"]["postgres"] += c1[1] - c0[1]
            for w in args.in_flight:
                be._reset_pending(dsn, be.UP)
                PHASES.clear()
                width, single = int(w.rstrip("s")), w.endswith("s")
                c0 = (time.process_time(), _pg_cpu(postmaster), _cpu(sink._proc.pid))
                report = asyncio.run(engine(dsn, sink.base_url, width, args.phases, not single))
                time.sleep(0.05)  # let the postmaster reap the engine's backends
                c1 = (time.process_time(), _pg_cpu(postmaster), _cpu(sink._proc.pid))
                for name, a, b in zip(("client", "postgres", "sink"), c0, c1, strict=True):
                    cpu[f"W={w}"][name] += b - a
                assert report.confirmed == args.rows, report
                times[f"W={w}"].append(report.seconds)
                statements[f"W={w}"] = report.statements
                phase_sums[f"W={w}"] += PHASES
            print(
                "  round: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()), flush=True
            )
        floor = min(times["floor"])
        print(f"\n{args.rows:,} wide readings, B={args.batch}, {args.rounds} rounds (interleaved)")
        print("| run | best s | median s | best × floor | median × floor(median) | statements |")
        print("|---|---|---|---|---|---|")
        floor_med = statistics.median(times["floor"])
        for k, v in times.items():
            print(
                f"| {k} | {min(v):.2f} | {statistics.median(v):.2f} | {min(v) / floor:.2f}× "
                f"| {statistics.median(v) / floor_med:.2f}× | {statements.get(k, '—')} |"
            )
        for k, c in cpu.items():
            per = {name: round(sec / args.rounds, 2) for name, sec in c.items()}
            print(f"CPU {k} (s per run): {per}; sum {sum(per.values()):.2f}")
        if args.phases:
            for k, c in phase_sums.items():
                per = {ph: round(s / args.rounds, 3) for ph, s in sorted(c.items())}
                print(f"phases {k} (s per run, summed over batches): {per}")
    finally:
        if sink is not None:
            sink.stop()
        drop_database(admin, dsn)
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

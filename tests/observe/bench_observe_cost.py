"""What the metrics hooks cost on the upload benchmark: hooks on vs no-op, several rounds.

Not collected by pytest (no ``test_`` prefix). Run::

    .venv/bin/python tests/observe/bench_observe_cost.py --rows 50000 --rounds 5

The reference Client System runs in its own process (as in benchmarks/bench_end_to_end.py);
the backlog is ``--rows`` wide synthetic readings of one tenant at upload batch size
``--batch``. Each round drains the whole backlog once with the hooks on and once with every
``metersync.observe`` hook replaced by a no-op (order alternating between rounds); before each
drain (untimed) the backlog is reset to pending and the server's table emptied.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
from collections.abc import Iterator

import psycopg

from metersync import observe
from metersync.engine.tenant_cache import TenantCache
from metersync.engine.upload import MeterReadingUploadManager
from metersync.remote.client import ClientSystemApiClient
from metersync.store.database import SyncDatabase
from metersync.tools.embedded import EmbeddedPostgres, create_database, drop_database
from metersync.tools.measure import ServerProcess
from metersync.tools.synthetic import reading_batch

TENANT = 1
KEY = "bench-observe-key"
HOOKS = ("phase", "timed", "readings", "cycle", "statements", "batch_sizes", "profile", "queue")


@contextlib.contextmanager
def hooks_off() -> Iterator[None]:
    """Every hook of metersync.observe replaced by a function that does nothing."""
    saved = {name: getattr(observe, name) for name in (*HOOKS, "report_fields")}
    try:
        for name in HOOKS:
            setattr(observe, name, lambda *args, **kwargs: None)
        observe.timed = lambda task, *args: task  # type: ignore[assignment]
        observe.report_fields = lambda report: {}  # type: ignore[assignment]
        yield
    finally:
        for name, hook in saved.items():
            setattr(observe, name, hook)


def reset(sync_dsn: str, server_dsn: str) -> None:
    with psycopg.connect(sync_dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE meter_reading SET is_synchronized = false, sync_status = 'pending' "
            "WHERE tenant_id = %s AND is_synchronized",
            (TENANT,),
        )
        conn.execute("VACUUM ANALYZE meter_reading")
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE cs_meter_reading")
        conn.execute("VACUUM ANALYZE cs_meter_reading")


async def prepare(sync_dsn: str, rows: int, batch: int) -> None:
    async with await SyncDatabase.connect(sync_dsn) as db:
        await db.migrate()
        await db.add_tenant(TENANT, "bench", KEY, upload_batch_size=batch)
        await db.insert_readings(reading_batch(rows, seed=11, tenant_id=TENANT), 10_000)


async def drain(sync_dsn: str, base_url: str) -> tuple[float, int]:
    async with await SyncDatabase.connect(sync_dsn) as db:
        client = ClientSystemApiClient(base_url, KEY, verify=False)
        try:
            manager = MeterReadingUploadManager(db, client, TenantCache(db), tenant_id=TENANT)
            report = await manager.upload()
        finally:
            await client.aclose()
    if report.error:
        raise RuntimeError(report.error)
    return report.seconds, report.confirmed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)

    embedded = None
    admin = os.environ.get("METERSYNC_BENCH_DSN")
    if not admin:
        embedded = EmbeddedPostgres()
        admin = embedded.start()
    sync_dsn = create_database(admin, "ms_obs_sync")
    server_dsn = create_database(admin, "ms_obs_cs")
    server = None
    try:
        asyncio.run(prepare(sync_dsn, args.rows, args.batch))
        server = ServerProcess(server_dsn)
        server.register(TENANT, KEY)
        reset(sync_dsn, server_dsn)  # one untimed drain: imports, caches, server warm
        asyncio.run(drain(sync_dsn, server.base_url))
        times: dict[str, list[float]] = {"on": [], "off": []}
        for r in range(args.rounds):
            order = ("on", "off") if r % 2 == 0 else ("off", "on")
            for mode in order:
                reset(sync_dsn, server_dsn)
                with hooks_off() if mode == "off" else contextlib.nullcontext():
                    seconds, confirmed = asyncio.run(drain(sync_dsn, server.base_url))
                assert confirmed == args.rows, confirmed
                times[mode].append(seconds)
                print(
                    f"round {r + 1} hooks {mode:3}: {seconds:.3f} s "
                    f"{args.rows / seconds:,.0f} readings/s",
                    flush=True,
                )
        med = {m: statistics.median(t) for m, t in times.items()}
        spread = {m: (min(t), max(t)) for m, t in times.items()}
        for mode in ("on", "off"):
            lo, hi = spread[mode]
            print(
                f"hooks {mode:3}: median {med[mode]:.3f} s ({args.rows / med[mode]:,.0f} "
                f"readings/s), min {lo:.3f} max {hi:.3f}"
            )
        print(f"difference of medians (on - off): {(med['on'] / med['off'] - 1) * 100:+.1f} %")
    finally:
        if server is not None:
            server.stop()
        drop_database(admin, sync_dsn)
        drop_database(admin, server_dsn)
        if embedded is not None:
            embedded.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

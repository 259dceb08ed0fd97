"""Many tenants against one: ``metersync upload --all-tenants`` vs ``upload --tenant`` (issue 12).

The same number of readings moves in both runs: ``--tenants`` tenants with ``--per-tenant``
readings each, against one tenant holding all of them, both with the same upload batch size.
Each run is the real command line (``python -m metersync upload ... --json``) in its own
process against the Client System in its own process (the reference server, or its zero-cost
``--sink`` mode with ``--sink`` when ``metersync serve --sink`` exists), on a fresh sync database
each time. Reported: readings/s by the command's own clock (its JSON ``seconds``) and by the wall
clock (with the CLI start), and the ratio many/one.

Run (a standalone script; ``make bench`` does not collect it: it has no ``bench_*`` function)::

    .venv/bin/python benchmarks/bench_tenants.py [--tenants 300 --per-tenant 100 --batch 100]
        [--rounds 2] [--sink] [--concurrency N]

Uses ``METERSYNC_BENCH_DSN`` (a server where it may create databases) or the embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

import orjson

from metersync.store.database import SyncDatabase
from metersync.tools.embedded import EmbeddedPostgres, create_database, drop_database
from metersync.tools.synthetic import reading_batch


class Server:
    """The Client System in its own process: the reference server, or its ``--sink`` mode."""

    def __init__(self, dsn: str, *, sink: bool) -> None:
        from metersync.tools.measure import ServerProcess

        self._proc = ServerProcess("", profile="sink") if sink else ServerProcess(dsn)
        self.base_url = self._proc.base_url

    def register(self, tenants: dict[int, str]) -> None:
        """Register every tenant with its key (admin API, one connection)."""
        import httpx

        headers = {"X-Admin-Token": self._proc.admin_token}
        with httpx.Client(headers=headers) as http:
            for tenant_id, key in tenants.items():
                response = http.post(
                    f"{self._proc.admin_url}/tenants",
                    json={"tenant_id": tenant_id, "api_key": key, "name": "bench"},
                )
                response.raise_for_status()

    def stop(self) -> None:
        """Terminate the process and wait for it."""
        self._proc.stop()


async def _prepare(dsn: str, tenants: int, per_tenant: int, batch: int) -> dict[int, str]:
    keys: dict[int, str] = {}
    async with await SyncDatabase.connect(dsn) as db:
        await db.migrate()
        for n in range(tenants):
            tenant_id = 10_000 + n
            key = f"bench-key-{tenant_id}-{uuid.uuid4().hex[:8]}"
            await db.add_tenant(tenant_id, f"bench {tenant_id}", key, upload_batch_size=batch)
            rows = reading_batch(per_tenant, seed=n + 1, tenant_id=tenant_id)
            await db.insert_readings(rows, 10_000)
            keys[tenant_id] = key
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:  # untimed, like the other groups
        conn.execute("VACUUM ANALYZE meter_reading")
    return keys


def _run_upload(dsn: str, api_url: str, selection: list[str], extra: list[str]) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERSYNC_")}
    env["METERSYNC_DSN"] = dsn
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "metersync", "--api-url", api_url, "upload", *selection,
         "--json", *extra],
        capture_output=True, text=True, env=env, timeout=1800,
    )  # fmt: skip
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"upload exited {proc.returncode}: {proc.stderr[-2000:]}")
    doc = orjson.loads(proc.stdout)
    moved = sum(op.get("confirmed", 0) for op in doc["operations"])
    return {"wall": wall, "own": float(doc["seconds"]), "readings": moved}


def _one_round(
    admin_dsn: str, *, tenants: int, per_tenant: int, batch: int, sink: bool, extra: list[str]
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    total = tenants * per_tenant
    for label, n_tenants, n_each, selection in (
        ("one", 1, total, ["--tenant", "10000"]),
        ("many", tenants, per_tenant, ["--all-tenants"]),
    ):
        sync_dsn = create_database(admin_dsn, f"ms_bench_tenants_{uuid.uuid4().hex[:8]}")
        cs_dsn = create_database(admin_dsn, f"ms_bench_cs_{uuid.uuid4().hex[:8]}")
        server = None
        try:
            keys = asyncio.run(_prepare(sync_dsn, n_tenants, n_each, batch))
            server = Server(cs_dsn, sink=sink)
            server.register(keys)
            result = _run_upload(sync_dsn, server.base_url, selection, extra)
            if result["readings"] != total:
                raise RuntimeError(f"{label}: {result['readings']} readings moved, not {total}")
            out[label] = result
        finally:
            if server is not None:
                server.stop()
            drop_database(admin_dsn, sync_dsn)
            drop_database(admin_dsn, cs_dsn)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print a table (and ``--json FILE`` if asked)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tenants", type=int, default=300)
    parser.add_argument("--per-tenant", type=int, default=100)
    parser.add_argument("--batch", type=int, default=100, help="upload_batch_size of every tenant")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--sink", action="store_true", help="against `metersync serve --sink`")
    parser.add_argument("--json", dest="json_file", help="also write the figures here")
    parser.add_argument("upload_args", nargs="*", help="extra arguments for `metersync upload`")
    args = parser.parse_args(argv)
    external = os.environ.get("METERSYNC_BENCH_DSN")
    embedded = None if external else EmbeddedPostgres()
    admin_dsn = external or embedded.start()  # type: ignore[union-attr]
    rounds = []
    try:
        for _ in range(args.rounds):
            rounds.append(
                _one_round(
                    admin_dsn,
                    tenants=args.tenants,
                    per_tenant=args.per_tenant,
                    batch=args.batch,
                    sink=args.sink,
                    extra=args.upload_args,
                )
            )
    finally:
        if embedded is not None:
            embedded.stop()
    total = args.tenants * args.per_tenant
    figures: dict[str, Any] = {"readings": total, "batch": args.batch, "sink": args.sink}
    for label in ("one", "many"):
        for clock in ("own", "wall"):
            seconds = statistics.median(r[label][clock] for r in rounds)
            figures[f"{label}_{clock}_per_s"] = round(total / seconds, 1)
    for clock in ("own", "wall"):
        figures[f"ratio_{clock}"] = round(
            figures[f"many_{clock}_per_s"] / figures[f"one_{clock}_per_s"], 3
        )
    server = "sink" if args.sink else "reference server"
    print(f"{total:,} readings, upload_batch_size {args.batch}, {server}, "
          f"median of {args.rounds} round(s)")  # fmt: skip
    print(f"{'':28} {'own clock':>12} {'wall clock':>12}")
    for label, key in (
        ("1 tenant", "one"),
        (f"{args.tenants} tenants x {args.per_tenant}", "many"),
    ):
        own, wall = figures[f"{key}_own_per_s"], figures[f"{key}_wall_per_s"]
        print(f"{label:28} {own:>10,.0f}/s {wall:>10,.0f}/s")
    print(f"{'ratio many/one':28} {figures['ratio_own']:>12.0%} {figures['ratio_wall']:>12.0%}")
    if args.json_file:
        with open(args.json_file, "wb") as fh:
            fh.write(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

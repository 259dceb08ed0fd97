"""End-to-end group: drain a backlog to the reference Client System on loopback.

metersync (``MeterReadingUploadManager`` over ``SyncDatabase`` and ``ClientSystemApiClient``)
uploads the whole E2E_ROWS backlog; the naive baseline (``naive_baseline.py``, the old flow)
uploads a timed subset of it (NAIVE_ROWS: at B=100 the full backlog would take minutes), and
readings/s are compared. The reference server runs in its own process with its own database;
before each run (untimed) the backlog is reset to pending and the server's table emptied, so
every run inserts fresh readings on the server.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

import naive_baseline
from _support import E2E_ROWS, TENANT, PeakRss, ServerProcess, run
from conftest import copy_load, wide
from metersync.engine.tenant_cache import TenantCache
from metersync.engine.upload import MeterReadingUploadManager
from metersync.remote.client import ClientSystemApiClient
from metersync.store.database import SyncDatabase

API_KEY = "bench-e2e-key"  # a throwaway key of a throwaway server
BATCH_SIZES = (100, 1000)
#: Readings the naive baseline uploads per run (a timed subset of the backlog).
NAIVE_ROWS = {
    100: int(os.environ.get("METERSYNC_BENCH_NAIVE_ROWS_100", "20000")),
    1000: int(os.environ.get("METERSYNC_BENCH_NAIVE_ROWS_1000", "20000")),
}


@pytest.fixture(scope="module")
def sync_dsn(database: Callable[[str], str]) -> str:
    dsn = database("e2e")
    copy_load(dsn, wide(E2E_ROWS, seed=11))
    return dsn


@pytest.fixture(scope="module")
def server(database: Callable[[str], str]) -> Iterator[tuple[ServerProcess, str]]:
    dsn = database("e2e_cs")
    proc = ServerProcess(dsn)
    try:
        proc.register(TENANT, API_KEY)
        yield proc, dsn
    finally:
        proc.stop()


@pytest.fixture
def reset(sync_dsn: str, server: tuple[ServerProcess, str]) -> Callable[[], None]:
    """Backlog all pending again, server table empty (untimed)."""

    def setup() -> None:
        with psycopg.connect(sync_dsn, autocommit=True) as conn:
            conn.execute(
                "UPDATE meter_reading SET is_synchronized = false, sync_status = 'pending' "
                "WHERE tenant_id = %s AND is_synchronized",
                (TENANT,),
            )
            conn.execute("VACUUM ANALYZE meter_reading")
        with psycopg.connect(server[1], autocommit=True) as conn:
            conn.execute("TRUNCATE cs_meter_reading")
            conn.execute("VACUUM ANALYZE cs_meter_reading")

    return setup


def _counts(sync_dsn: str, server_dsn: str) -> tuple[int, int]:
    """(pending in the sync database, readings stored by the Client System)."""
    with psycopg.connect(sync_dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM meter_reading WHERE tenant_id = %s AND NOT is_synchronized",
            (TENANT,),
        ).fetchone()
    with psycopg.connect(server_dsn) as conn:
        stored = conn.execute("SELECT count(*) FROM cs_meter_reading").fetchone()
    assert row is not None and stored is not None
    return int(row[0]), int(stored[0])


def _info(
    benchmark: Any,
    impl: str,
    size: int,
    readings: int,
    statements: int,
    seconds: float,
    rss: PeakRss,
) -> None:
    benchmark.extra_info.update(
        {
            "group": f"e2e-{size}",
            "impl": impl,
            "batch_size": size,
            "rows": readings,
            "readings": readings,
            "statements": statements,
            "statements_per_100k": round(statements * 100_000 / readings, 1),
            "statement_target_per_100k": 2 * -(-100_000 // size) + 10,
            "readings_per_s": round(readings / seconds, 1),
            "rss_growth_mb": round(rss.growth_mb, 1),
        }
    )


@pytest.mark.parametrize("in_flight", [1, 2])
@pytest.mark.parametrize("size", BATCH_SIZES)
def bench_e2e_metersync(
    benchmark, sync_dsn, server, reset, loop: asyncio.AbstractEventLoop, size, in_flight
):
    """metersync's upload cycle over the whole backlog at upload batch size ``size``, with
    ``in_flight`` POSTs on the wire at once (``max_in_flight``)."""
    benchmark.group = f"e2e-{size}"
    proc, server_dsn = server
    db = run(loop, SyncDatabase.connect(sync_dsn))
    client = ClientSystemApiClient(proc.base_url, API_KEY)
    reports: list[Any] = []
    rss: list[PeakRss] = []
    try:
        run(loop, db.set_tenant_batch_sizes(TENANT, upload=size))
        manager = MeterReadingUploadManager(
            db, client, TenantCache(db), tenant_id=TENANT, max_in_flight=in_flight
        )

        def drain() -> None:
            sampler = PeakRss()
            try:
                reports.append(run(loop, manager.upload()))
            finally:
                rss.append(sampler.stop())

        benchmark.pedantic(drain, setup=reset, rounds=1, iterations=1)
    finally:
        run(loop, client.aclose())
        run(loop, db.close())
    report = reports[-1]
    assert report.error is None, report.error
    assert report.readings_sent == E2E_ROWS and report.confirmed == E2E_ROWS
    assert _counts(sync_dsn, server_dsn) == (0, E2E_ROWS)
    # The default (2) is the "metersync" row of the summary; 1 is today's one-POST-at-a-time.
    impl = "metersync" if in_flight == 2 else f"metersync-in-flight-{in_flight}"
    _info(benchmark, impl, size, E2E_ROWS, report.statements, report.seconds, rss[-1])
    benchmark.extra_info["max_in_flight"] = in_flight


@pytest.mark.parametrize("size", BATCH_SIZES)
def bench_e2e_naive_baseline(benchmark, sync_dsn, server, reset, size):
    """The old flow (naive_baseline.py) over a timed subset of the backlog."""
    benchmark.group = f"e2e-{size}"
    proc, server_dsn = server
    rows = min(NAIVE_ROWS[size], E2E_ROWS)
    reports: list[naive_baseline.NaiveReport] = []
    rss: list[PeakRss] = []

    def drain() -> None:
        sampler = PeakRss()
        try:
            reports.append(
                naive_baseline.upload(
                    sync_dsn, proc.base_url, API_KEY, TENANT, size, max_readings=rows
                )
            )
        finally:
            rss.append(sampler.stop())

    benchmark.pedantic(drain, setup=reset, rounds=1, iterations=1)
    report = reports[-1]
    assert report.readings == rows
    assert _counts(sync_dsn, server_dsn) == (E2E_ROWS - rows, rows)
    _info(benchmark, "naive", size, rows, report.statements, report.seconds, rss[-1])
    benchmark.extra_info["subset_of"] = E2E_ROWS


@pytest.mark.parametrize("size", BATCH_SIZES)
def bench_e2e_limit_server_only(benchmark, server, reset, size):
    """The ceiling at ONE POST in flight: POST pre-encoded bodies of the same readings one after
    the other, no sync database at all (compare it with metersync's one-in-flight row only).

    Shows how much of the end-to-end time is the reference Client System's own work (parsing,
    validating and storing each reading), which no client can go below.
    """
    import httpx

    from metersync.codec import json_rows, slices

    benchmark.group = f"e2e-{size}"
    proc, server_dsn = server
    rows = min(NAIVE_ROWS[1000], E2E_ROWS)
    data = wide(E2E_ROWS, seed=11).slice(0, rows).drop_columns(["tenant_id"])
    bodies = [b'{"readings":' + json_rows(chunk) + b"}" for chunk in slices(data, size)]
    headers = {"X-API-Key": API_KEY, "Content-Type": "application/json"}
    rss: list[PeakRss] = []

    def post_all() -> None:
        sampler = PeakRss()
        with httpx.Client(base_url=proc.base_url, headers=headers, timeout=60.0) as http:
            for body in bodies:
                http.post("/sync/readings/batch", content=body).raise_for_status()
        rss.append(sampler.stop())

    benchmark.pedantic(post_all, setup=reset, rounds=1, iterations=1)
    with psycopg.connect(server_dsn) as conn:
        stored = conn.execute("SELECT count(*) FROM cs_meter_reading").fetchone()
    assert stored is not None and stored[0] == rows
    seconds = benchmark.stats.stats.median
    _info(benchmark, "server_only", size, rows, 0, seconds, rss[-1])
    benchmark.extra_info["subset_of"] = E2E_ROWS

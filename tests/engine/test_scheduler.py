"""The one orchestration path: bounded concurrency, per-tenant locks across schedulers, live
sizes, the error policy (outage recovery, refused keys), clean stops, and what "success" means."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from fix_engine import Engine, eventually
from metersync.engine.manager import SyncManager
from metersync.engine.scheduler import EngineOptions, OperationResult, Scheduler
from metersync.remote.client import ClientSystemApiClient
from metersync.store.database import SyncDatabase


def _factory(engine: Engine) -> Any:
    """Clients built from the tenant row's key, like the CLI's (closed by the scheduler)."""

    def build(tenant_id: int, api_key: str) -> ClientSystemApiClient:
        return ClientSystemApiClient(
            engine.server.base_url,
            api_key,
            verify=False,
            max_retries=1,
            backoff_base=0.01,
            backoff_max=0.02,
        )

    return build


@contextlib.asynccontextmanager
async def scheduler_for(
    engine: Engine, tenants: list[int], **kwargs: Any
) -> AsyncIterator[Scheduler]:
    kwargs.setdefault("client_factory", _factory(engine))
    kwargs.setdefault("dsn", engine.dsn)
    scheduler = Scheduler(**kwargs)
    async with scheduler:
        for tenant in tenants:
            scheduler.add_tenant(tenant)
        yield scheduler


async def test_concurrency_is_bounded_and_used(engine: Engine) -> None:
    tenants = [await engine.tenant(upload=10) for _ in range(6)]
    for tenant in tenants:
        await engine.seed(tenant, 30)
    engine.server.set_faults("delay=0.05")  # each batch takes a while: tenants overlap
    peak = 0
    async with scheduler_for(engine, tenants, concurrency=2) as scheduler:

        async def sample() -> None:
            nonlocal peak
            while True:
                peak = max(peak, len(scheduler.running))
                await asyncio.sleep(0.005)

        sampler = asyncio.create_task(sample())
        try:
            results = await scheduler.run_cycle(operations=["upload"])
        finally:
            sampler.cancel()
        # The pool never grew past the bound (its own connections, seen by the server).
        backends = await engine.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        )
    assert peak == 2  # bounded, and actually concurrent
    assert [r.tenant_id for r in results] == tenants  # reported in tenant order
    assert all(r.outcome == "ok" and r.readings == 30 for r in results)
    # engine.db + the scheduler's <= 2 + its one LISTEN connection (+ the test's own)
    assert backends <= 1 + 2 + 1 + 1


async def test_two_schedulers_respect_the_tenant_lock(engine: Engine) -> None:
    tenants = [await engine.tenant(upload=5) for _ in range(4)]
    for tenant in tenants:
        await engine.seed(tenant, 40)
    engine.server.set_faults("delay=0.02")
    async with (
        scheduler_for(engine, tenants, concurrency=2) as first,
        scheduler_for(engine, tenants, concurrency=2) as second,
    ):
        a, b = await asyncio.gather(
            first.run_cycle(operations=["upload"]), second.run_cycle(operations=["upload"])
        )
    results = a + b
    busy = [r for r in results if r.outcome == "busy"]
    assert busy, "the two schedulers never met on a tenant"
    assert all(r.error is None for r in results)
    assert sum(r.readings for r in results) == 4 * 40
    assert engine.server.stats()["duplicates_seen"] == 0  # no reading went up twice
    for tenant in tenants:
        assert engine.server.rows(tenant) == 40


async def test_a_size_change_applies_from_the_next_cycle(engine: Engine) -> None:
    tenant = await engine.tenant(upload=5)
    await engine.seed(tenant, 20)
    async with (
        await SyncDatabase.connect(engine.dsn) as other,
        scheduler_for(engine, [tenant]) as scheduler,
    ):
        (first,) = await scheduler.run_cycle(operations=["upload"])
        await other.set_tenant_batch_sizes(tenant, upload=10)  # NOTIFY from another session

        async def heard() -> bool:
            return not scheduler.cache.cached(tenant)

        assert await eventually(heard, step=0.05)
        await engine.seed(tenant, 20)
        (second,) = await scheduler.run_cycle(operations=["upload"])
    assert (first.report.upload_batch_size, first.report.batches) == (5, 4)  # type: ignore[union-attr]
    assert (second.report.upload_batch_size, second.report.batches) == (10, 2)  # type: ignore[union-attr]


async def test_database_outage_mid_loop_recovers(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    tenant = await engine.tenant(upload=10)
    await engine.seed(tenant, 200)
    engine.server.set_faults("delay=0.03")  # a cycle of 20 batches: the outage lands inside it
    caplog.set_level(logging.WARNING, logger="metersync.engine.scheduler")
    cycles: list[list[OperationResult]] = []
    async with scheduler_for(engine, [tenant], concurrency=2) as scheduler:
        loop = asyncio.create_task(
            scheduler.run_forever(60, on_cycle=lambda results, _s: cycles.append(results))
        )
        try:

            async def some_marked() -> bool:
                return bool(await engine.local_ids(tenant, "is_synchronized"))

            assert await eventually(some_marked, step=0.05)
            # Every session of the sync database dies (the scheduler's, its listener's) while
            # batches are in flight: the cycle ends on the outage, marks nothing unconfirmed.
            await engine.scalar(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )

            async def recovered() -> bool:
                return len(await engine.local_ids(tenant, "is_synchronized")) == 200

            # The retry comes after the backoff (1 s), not after the 60 s interval.
            assert await eventually(recovered, step=0.05)
        finally:
            scheduler.request_stop()
            await asyncio.wait_for(loop, 30)
    engine.server.clear_faults()
    outages = [r for r in caplog.records if "sync database unavailable" in r.getMessage()]
    assert outages, "the outage was not reported"
    ended = [c for c in cycles if any(r.outcome == "error" for r in c)]
    assert len(outages) == len(ended) >= 1  # one line per cycle that met it
    assert engine.server.rows(tenant) == 200
    assert await engine.server_ids(tenant) == await engine.local_ids(tenant, "is_synchronized")


async def test_refused_key_stops_that_tenant_only(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    good = await engine.tenant(upload=10)
    bad = await engine.tenant(upload=10, server=False)  # the server does not know its key
    await engine.seed(good, 10)
    await engine.seed(bad, 10)
    caplog.set_level(logging.ERROR, logger="metersync.engine.scheduler")
    cycles: list[list[OperationResult]] = []
    async with scheduler_for(engine, [bad, good]) as scheduler:
        loop = asyncio.create_task(
            scheduler.run_forever(
                0.05,
                operations=["upload"],
                on_cycle=lambda results, _s: cycles.append(results),
            )
        )

        async def several() -> bool:
            return len(cycles) >= 4

        try:
            assert await eventually(several, step=0.05)
        finally:
            scheduler.request_stop()
            await asyncio.wait_for(loop, 30)
    bad_runs = [r for c in cycles for r in c if r.tenant_id == bad]
    good_runs = [r for c in cycles for r in c if r.tenant_id == good]
    assert len(bad_runs) == 1 and bad_runs[0].outcome == "error"
    assert len(good_runs) == len(cycles)
    refused = [r for r in caplog.records if f"tenant {bad}" in r.getMessage()]
    assert len(refused) == 1 and "api_key changes" in refused[0].getMessage()
    assert await engine.local_ids(bad, "is_synchronized") == set()
    assert len(await engine.local_ids(good, "is_synchronized")) == 10


async def test_sigterm_mid_batch_leaves_no_half_marked_batch(engine: Engine) -> None:
    tenants = [await engine.tenant(upload=5) for _ in range(3)]
    for tenant in tenants:
        await engine.seed(tenant, 100)
    engine.server.set_faults("delay=0.05")
    loop = asyncio.get_running_loop()
    async with scheduler_for(engine, tenants, concurrency=3) as scheduler:
        loop.add_signal_handler(signal.SIGTERM, scheduler.request_stop)
        try:
            task = asyncio.create_task(scheduler.run_forever(60))

            async def some_marked() -> bool:
                return bool(await engine.local_ids(tenants[0], "is_synchronized"))

            assert await eventually(some_marked, step=0.05)
            os.kill(os.getpid(), signal.SIGTERM)
            assert await asyncio.wait_for(task, 30) == 1
        finally:
            loop.remove_signal_handler(signal.SIGTERM)
    engine.server.clear_faults()
    for tenant in tenants:
        marked = await engine.local_ids(tenant, "is_synchronized")
        # What the server holds is exactly what is marked, in whole batches of 5.
        assert await engine.server_ids(tenant) == marked
        assert len(marked) % 5 == 0
        assert len(marked) < 100  # the stop came before the queue was drained


async def test_every_reading_rejected_is_not_success(engine: Engine) -> None:
    tenant = await engine.tenant(upload=10)
    await engine.seed(tenant, 10, meters=1)  # all meter_id 1
    engine.server.set_faults("reject=meter_id:1")
    async with scheduler_for(engine, [tenant]) as scheduler:
        (result,) = await scheduler.run_cycle(operations=["upload"])
    assert result.outcome == "rejected" and not result.success and not result.ok
    row = await engine.rows(
        "SELECT success, error FROM sync_log WHERE tenant_id = %s AND operation = 'upload'",
        tenant,
    )
    assert row[0][0] is False and "every reading sent was rejected" in row[0][1]


async def test_partial_and_empty_uploads_are_success(engine: Engine) -> None:
    tenant = await engine.tenant(upload=10)
    batch = await engine.seed(tenant, 40, meters=2)
    assert 0 < sum(1 for m in batch.column("meter_id").to_pylist() if m == 1) < 40
    engine.server.set_faults("reject=meter_id:1")
    async with scheduler_for(engine, [tenant], options=EngineOptions(max_retries=1)) as scheduler:
        (partial,) = await scheduler.run_cycle(operations=["upload"])
        (empty,) = await scheduler.run_cycle(operations=["upload"])  # nothing left to send
    assert partial.outcome == "partial" and partial.success
    assert empty.outcome == "ok" and empty.success and empty.report.readings_sent == 0  # type: ignore[union-attr]
    rows = await engine.rows(
        "SELECT success FROM sync_log WHERE tenant_id = %s ORDER BY id", tenant
    )
    assert [r[0] for r in rows] == [True, True]


async def test_managers_sharing_a_connection_take_turns(engine: Engine) -> None:
    tenants = [await engine.tenant(upload=5) for _ in range(3)]
    for tenant in tenants:
        await engine.seed(tenant, 25)
    managers = [
        SyncManager(tenant_id=t, database=engine.db, api_client=engine.client(t)) for t in tenants
    ]
    for manager in managers:
        await manager.initialize()
    try:
        reports = await asyncio.gather(*(m.run_cycle() for m in managers))
    finally:
        for manager in managers:
            await manager.close()
    assert all(r.success for r in reports)
    for tenant, report in zip(tenants, reports, strict=True):
        assert report.upload is not None and report.upload.confirmed == 25
        assert engine.server.rows(tenant) == 25
        # Each report counted its own statements only (no interleaving on the connection).
        assert report.upload.statements <= 2 * 5 + 10


async def test_many_tenants_share_the_bookkeeping(engine: Engine) -> None:
    """The cache is primed with one query per cycle and the sync_log rows go in bulk."""
    tenants = [await engine.tenant(upload=100) for _ in range(12)]
    for tenant in tenants:
        await engine.seed(tenant, 20)
    async with scheduler_for(engine, tenants, concurrency=3) as scheduler:
        results = await scheduler.run_cycle(operations=["upload"])
        loads = scheduler.cache.loads
    assert loads == 1  # one prime for 12 tenants, not 2 statements each
    assert all(r.outcome == "ok" and r.readings == 20 for r in results)
    # Per tenant only the upload's own statements remain (no cache loads, no sync_log row).
    per_tenant = [r.report.statements for r in results]  # type: ignore[union-attr]
    assert max(per_tenant) <= 6, per_tenant
    logged = await engine.rows(
        "SELECT tenant_id, success, records FROM sync_log WHERE tenant_id = ANY(%s)", tenants
    )
    assert sorted(logged) == sorted((t, True, 20) for t in tenants)


async def test_prime_raced_by_a_change_is_not_kept(engine: Engine) -> None:
    """A NOTIFY that lands while the priming query runs drops what it read."""
    tenants = [await engine.tenant(upload=7) for _ in range(3)]
    async with scheduler_for(engine, tenants) as scheduler:
        cache = scheduler.cache

        async def load_then_change() -> list[Any]:
            cache.invalidate(tenants[0])  # what a NOTIFY does, mid-load
            return []

        assert await cache.prime(load_then_change) == 0
        await scheduler._prime(tenants)
        assert all(cache.cached(t) for t in tenants)
        assert (await cache.get(tenants[1])).batch.upload_batch_size == 7


async def test_small_tenants_share_one_lock_fetch_and_unlock_per_group(engine: Engine) -> None:
    """A cycle of many small tenants takes each group's locks, first batches and unlocks with
    one statement each: a tenant whose queue fits its batch then costs only its mark. A tenant
    with more than a batch goes on fetching on its own; one held elsewhere is busy; every
    reading goes up exactly once and no lock outlives the cycle."""
    tenants = [await engine.tenant(upload=20) for _ in range(10)]
    for tenant in tenants:
        await engine.seed(tenant, 15)
    big, held = tenants[3], tenants[7]
    await engine.seed(big, 35)  # 50 pending: three batches of 20
    async with (
        await SyncDatabase.connect(engine.dsn) as other,
        scheduler_for(engine, tenants, concurrency=2) as scheduler,
    ):
        assert await other.try_lock_tenant(held, "upload")
        results = await scheduler.run_cycle(operations=["upload"])
        advisory = await engine.scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid <> %s "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            other._conn.info.backend_pid,
        )
        await other.unlock_tenant(held, "upload")
    assert advisory == 0  # the groups' unlocks ran (the scheduler's connections are still open)
    by_tenant = {r.tenant_id: r for r in results}
    assert by_tenant[held].outcome == "busy"
    assert by_tenant[big].outcome == "ok" and by_tenant[big].readings == 50
    small = [by_tenant[t] for t in tenants if t not in (big, held)]
    assert all(r.outcome == "ok" and r.readings == 15 for r in small)
    # Grouped: no statement of their own but the group's one UPDATE, counted on one of them
    # (a tenant left alone at the end of the queue runs on its own statements).
    statements = [r.report.statements for r in small]  # type: ignore[union-attr]
    grouped = [n for n in statements if n <= 1]
    assert len(grouped) >= 6 and 1 <= sum(grouped) <= 3, statements
    assert engine.server.stats()["duplicates_seen"] == 0
    for tenant in tenants:
        assert engine.server.rows(tenant) == (0 if tenant == held else 50 if tenant == big else 15)


async def test_a_group_of_small_tenants_is_marked_by_one_update(engine: Engine) -> None:
    """Tenants whose first batch is their whole queue leave the mark to their group: ONE
    UPDATE for all of them after the last one, before the locks go. Each result comes out
    (on_result, sync_log) with its readings counted, after that UPDATE."""
    tenants = [await engine.tenant(upload=20) for _ in range(6)]
    for tenant in tenants:
        await engine.seed(tenant, 15)
    seen: list[tuple[int, int, bool]] = []
    async with scheduler_for(engine, tenants, concurrency=1) as scheduler:

        def on_result(result: OperationResult) -> None:
            # Delivered once the UPDATE ran: every reading counted and marked already.
            pending = scheduler.managers(result.tenant_id)[0].marks_pending
            seen.append((result.tenant_id, result.readings, pending))

        results = await scheduler.run_cycle(operations=["upload"], on_result=on_result)
    assert sorted(seen) == sorted((t, 15, False) for t in tenants)
    assert [r.outcome for r in results] == ["ok"] * 6
    statements = [r.report.statements for r in results]  # type: ignore[union-attr]
    assert sorted(statements) == [0, 0, 0, 0, 0, 1], statements  # one UPDATE in all
    for tenant in tenants:
        assert await engine.status_counts(tenant) == {"synchronized:true": 15}
        assert engine.server.rows(tenant) == 15
    logged = await engine.rows(
        "SELECT tenant_id, success, records FROM sync_log WHERE tenant_id = ANY(%s)", tenants
    )
    assert sorted(logged) == sorted((t, True, 15) for t in tenants)


async def test_a_failed_group_update_fails_its_tenants_and_the_next_cycle_sends_again(
    engine: Engine,
) -> None:
    """The group's UPDATE cannot take a row lock in time: nothing of the group is marked, each
    tenant's result says its mark failed (not a success in sync_log), and the next cycle sends
    those readings again, which the Client System counts as duplicates."""
    tenants = [await engine.tenant(upload=20) for _ in range(4)]
    seeded = [await engine.seed(tenant, 10) for tenant in tenants]
    blocker = await psycopg.AsyncConnection.connect(engine.dsn)
    await blocker.execute(
        "SELECT 1 FROM meter_reading WHERE tenant_id = %s AND meter_reading_id = %s FOR UPDATE",
        (tenants[2], uuid.UUID(bytes=seeded[2].column("meter_reading_id")[4].as_py())),
    )
    slow_locks = f"{engine.dsn} options='-c lock_timeout=300'"
    try:
        async with scheduler_for(engine, tenants, dsn=slow_locks, concurrency=1) as scheduler:
            results = await scheduler.run_cycle(operations=["upload"])
    finally:
        await blocker.rollback()
        await blocker.close()
    assert [r.outcome for r in results] == ["error"] * 4
    for r in results:
        assert r.readings == 0 and r.error_text is not None
        assert "marking batch 1 failed" in r.error_text and "lock" in r.error_text
        assert r.report is not None and r.report.readings_sent == 10
    for tenant in tenants:
        assert await engine.status_counts(tenant) == {"pending:false": 10}
        assert engine.server.rows(tenant) == 10  # sent and stored there
    logged = await engine.rows(
        "SELECT tenant_id, success FROM sync_log WHERE tenant_id = ANY(%s)", tenants
    )
    assert sorted(logged) == sorted((t, False) for t in tenants)
    async with scheduler_for(engine, tenants, concurrency=1) as again:
        second = await again.run_cycle(operations=["upload"])
    assert [r.outcome for r in second] == ["ok"] * 4
    assert [r.report.duplicates for r in second] == [10] * 4  # type: ignore[union-attr]
    for tenant in tenants:
        assert await engine.status_counts(tenant) == {"synchronized:true": 10}


async def test_a_non_idempotent_client_system_gets_no_group_prefetch(engine: Engine) -> None:
    """Under the claiming (MeterTrack) profile a fetch must claim, so no group fetches for it:
    the prefetch takes no lock and leaves every tenant to its own claiming cycle."""
    tenants = [await engine.tenant(upload=20) for _ in range(3)]
    for tenant in tenants:
        await engine.seed(tenant, 5)

    def metertrack(tenant_id: int, api_key: str) -> ClientSystemApiClient:
        return ClientSystemApiClient(
            engine.server.base_url, api_key, verify=False, client_profile="metertrack"
        )

    async with (
        scheduler_for(engine, tenants, client_factory=metertrack) as scheduler,
        scheduler.connection() as db,
    ):
        assert await scheduler._prefetch(db, tenants) == []
        assert not any(db.holds_lock(t, "upload") for t in tenants)
        assert scheduler._prefetched == {}

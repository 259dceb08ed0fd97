"""Group-committed marks (engine/marks.py) against the real sync database, and a mark that fails
inside an upload cycle."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import psycopg
import pyarrow as pa
import pytest

from fix_engine import Engine, eventually
from metersync.engine.marks import Confirmed, GroupMarks, MarkFailedError, MarkQueue
from metersync.store.database import SyncDatabase


def _batches(ids: pa.Array, size: int) -> list[Confirmed]:
    return [
        Confirmed(no, len(chunk), chunk, len(chunk), 0)
        for no, chunk in enumerate(
            (ids.slice(start, size) for start in range(0, len(ids), size)), 1
        )
    ]


def _uuid(ids: pa.Array, i: int) -> uuid.UUID:
    return uuid.UUID(bytes=ids[i].as_py())


async def _lock_row(engine: Engine, reading_id: uuid.UUID) -> psycopg.AsyncConnection[Any]:
    """Another session holding one reading's row lock (its transaction left open)."""
    blocker = await psycopg.AsyncConnection.connect(engine.dsn)
    try:
        await blocker.execute(
            "SELECT 1 FROM meter_reading WHERE meter_reading_id = %s FOR UPDATE", (reading_id,)
        )
    except BaseException:
        await blocker.close()
        raise
    return blocker


async def _waiting_for_lock(engine: Engine) -> bool:
    return bool(
        await engine.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE '%%UPDATE meter_reading%%' AND pid <> pg_backend_pid()"
        )
    )


async def test_batches_confirmed_while_a_mark_runs_go_in_the_next_one(engine: Engine) -> None:
    tenant = await engine.tenant(server=False)
    seeded = await engine.seed(tenant, 9)
    first, second, third = _batches(seeded.column("meter_reading_id"), 3)
    done: list[tuple[list[int], int]] = []
    queue = MarkQueue(
        lambda ids: engine.db.mark_synchronized(tenant, ids),
        lambda group, marked, _s: done.append(([b.batch_no for b in group], marked)),
    )
    blocker = await _lock_row(engine, _uuid(first.ids, 0))
    try:
        queue.add(first)  # its UPDATE starts and waits for the row lock
        assert await eventually(lambda: _waiting_for_lock(engine))
        queue.add(second)
        queue.add(third)
        await asyncio.sleep(0.05)
        assert done == []  # nothing is counted before its UPDATE committed
    finally:
        await blocker.rollback()
        await blocker.close()
    await queue.drain()
    # The first UPDATE carried batch 1; batches 2 and 3, confirmed meanwhile, went in ONE more.
    assert done == [([1], 3), ([2, 3], 6)]
    assert queue.updates == 2
    assert await engine.status_counts(tenant) == {"synchronized:true": 9}


async def test_room_holds_the_caller_while_marks_fall_behind(engine: Engine) -> None:
    tenant = await engine.tenant(server=False)
    seeded = await engine.seed(tenant, 12)
    batches = _batches(seeded.column("meter_reading_id"), 3)
    queue = MarkQueue(lambda ids: engine.db.mark_synchronized(tenant, ids), lambda *_: None)
    blocker = await _lock_row(engine, _uuid(batches[0].ids, 0))
    try:
        queue.add(batches[0])
        assert await eventually(lambda: _waiting_for_lock(engine))
        for batch in batches[1:]:
            queue.add(batch)
        room = asyncio.ensure_future(queue.room(2))  # 3 wait: over a backlog of 2
        await asyncio.sleep(0.1)
        assert not room.done()
    finally:
        await blocker.rollback()
        await blocker.close()
    await asyncio.wait_for(room, 10)
    await queue.drain()
    assert await engine.status_counts(tenant) == {"synchronized:true": 12}


async def test_a_failed_mark_names_every_batch_left_unmarked(engine: Engine) -> None:
    tenant = await engine.tenant(server=False)
    seeded = await engine.seed(tenant, 6)
    first, second, third = _batches(seeded.column("meter_reading_id"), 2)
    calls = 0

    async def mark(ids: pa.Array) -> int:
        nonlocal calls
        calls += 1
        if calls == 2:  # the second mark is refused: ids that are not 16 bytes
            ids = pa.array([b"short"] * len(ids), type=pa.binary())
        return await engine.db.mark_synchronized(tenant, ids)

    queue = MarkQueue(mark, lambda *_: None)
    queue.add(first)
    await queue.drain()
    queue.add(second)
    with pytest.raises(MarkFailedError) as failed:
        await queue.drain()
    queue.add(third)  # after a failure nothing more is marked: it joins the failure
    assert [b.batch_no for b in failed.value.batches] == [2, 3]
    assert "marking batches 2, 3 failed" in str(queue.failure)
    with pytest.raises(MarkFailedError):
        queue.check()
    assert calls == 2
    assert await engine.status_counts(tenant) == {"synchronized:true": 2, "pending:false": 4}


async def test_a_mark_that_fails_in_a_cycle_ends_it_and_the_next_cycle_sends_again(
    engine: Engine,
) -> None:
    """A mark that cannot take its row lock in time (another session holds it) fails after the
    Client System confirmed the batch: the cycle ends with the error, those readings stay
    pending, and the next cycle sends them again; the Client System counts them as duplicates."""
    tenant = await engine.tenant(upload=5)
    seeded = await engine.seed(tenant, 30)
    ids = seeded.column("meter_reading_id")
    db = await SyncDatabase.connect(f"{engine.dsn} options='-c lock_timeout=300'")
    blocker = await _lock_row(engine, _uuid(ids, 12))  # a reading of batch 3
    try:
        report = await engine.uploader(tenant, db=db, max_in_flight=2).upload()
    finally:
        await blocker.rollback()
        await blocker.close()
        await db.close()
    assert report.error is not None and "marking batch" in report.error
    assert "lock" in report.error
    synced = await engine.local_ids(tenant, "is_synchronized")
    assert str(_uuid(ids, 12)) not in synced
    assert synced <= await engine.server_ids(tenant)  # marked only what the server holds
    assert report.confirmed == len(synced) < report.readings_sent
    again = await engine.uploader(tenant).upload()
    assert again.error is None
    assert again.confirmed == 30 - len(synced)
    assert again.duplicates == report.readings_sent - len(synced)
    assert await engine.status_counts(tenant) == {"synchronized:true": 30}


# -- GroupMarks: one UPDATE for a group of small tenants ---------------------------------------


async def test_a_group_commit_marks_every_share_with_one_update(engine: Engine) -> None:
    """Each tenant is told its own count; the one statement is counted once, on the first."""
    tenants = [await engine.tenant() for _ in range(3)]
    ids = [(await engine.seed(t, 4 + i)).column("meter_reading_id") for i, t in enumerate(tenants)]
    calls: list[list[tuple[int, Any]]] = []

    async def mark_many(pairs: list[tuple[int, Any]]) -> dict[int, int]:
        calls.append(pairs)
        return await engine.db.mark_synchronized_many(pairs)

    told: list[tuple[int, list[int], int, int]] = []
    group = GroupMarks(mark_many)
    for tenant, tenant_ids in zip(tenants, ids, strict=True):
        share = group.share(
            tenant,
            lambda b, marked, _s, st, t=tenant: told.append((t, [x.rows for x in b], marked, st)),
            lambda err: pytest.fail(f"no failure expected: {err}"),
        )
        assert not group.holds(tenant)
        for batch in _batches(tenant_ids, 3):
            share.add(batch)
        assert await share.drain() is None and share.failure is None  # nothing waits here
        assert group.holds(tenant)
    await group.commit()
    assert len(calls) == 1 and [t for t, _ in calls[0]] == tenants
    assert told == [
        (tenants[0], [3, 1], 4, 1),
        (tenants[1], [3, 2], 5, 0),
        (tenants[2], [3, 3], 6, 0),
    ]
    assert group.updates == 1 and not any(group.holds(t) for t in tenants)
    for tenant, n in zip(tenants, (4, 5, 6), strict=True):
        assert await engine.status_counts(tenant) == {"synchronized:true": n}
    await group.commit()  # nothing left: no second statement
    assert len(calls) == 1


async def test_a_failed_group_commit_tells_every_share_and_marks_nothing(engine: Engine) -> None:
    tenants = [await engine.tenant() for _ in range(2)]
    ids = [(await engine.seed(t, 3)).column("meter_reading_id") for t in tenants]

    async def mark_many(pairs: list[tuple[int, Any]]) -> dict[int, int]:
        raise psycopg.errors.LockNotAvailable("canceling statement due to lock timeout")

    failures: dict[int, MarkFailedError] = {}
    group = GroupMarks(mark_many)
    for tenant, tenant_ids in zip(tenants, ids, strict=True):
        share = group.share(
            tenant,
            lambda *_: pytest.fail("nothing was marked"),
            lambda err, t=tenant: failures.__setitem__(t, err),
        )
        for batch in _batches(tenant_ids, 3):
            share.add(batch)
    await group.commit()  # never raises: the shares carry the failure
    assert sorted(failures) == sorted(tenants)
    for err in failures.values():
        assert [b.rows for b in err.batches] == [3]
        assert "marking batch 1 failed: LockNotAvailable" in str(err)
        assert isinstance(err.__cause__, psycopg.errors.LockNotAvailable)
    for tenant in tenants:
        assert await engine.status_counts(tenant) == {"pending:false": 3}


async def test_a_cancelled_cycle_takes_its_batches_back_from_the_group(engine: Engine) -> None:
    tenant = await engine.tenant()
    ids = (await engine.seed(tenant, 4)).column("meter_reading_id")
    group = GroupMarks(engine.db.mark_synchronized_many)
    share = group.share(tenant, lambda *_: None, lambda _: None)
    for batch in _batches(ids, 2):
        share.add(batch)
    assert [b.rows for b in await share.cancel()] == [2, 2]
    assert not group.holds(tenant) and group.abandon() == []
    await group.commit()
    assert group.updates == 0
    assert await engine.status_counts(tenant) == {"pending:false": 4}

"""The group statements of many small tenants (issue 12): several tenants' upload locks in one
statement, and their first batches in one COPY, each exactly what the one-tenant fetch gives."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metersync.errors import TenantLockLostError
from metersync.store.database import SyncDatabase
from metersync.tools.synthetic import reading_batch

_tenants = itertools.count(47_000)
_seeds = itertools.count(1)


async def _tenant(db: SyncDatabase, pending: int) -> int:
    tenant_id = next(_tenants)
    await db.add_tenant(tenant_id, f"tenant {tenant_id}", f"key-{tenant_id}")
    if pending:
        await db.insert_readings(
            reading_batch(pending, seed=next(_seeds), tenant_id=tenant_id), 10_000
        )
    return tenant_id


def _sql(dsn: str, statement: str, *params: Any) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(statement, params or None)


async def test_locks_of_a_group_in_one_statement_and_busy_ones_left_out(
    db: SyncDatabase, dsn: str
) -> None:
    tenants = [await _tenant(db, 0) for _ in range(4)]
    async with await SyncDatabase.connect(dsn) as other:
        assert await other.try_lock_tenant(tenants[2], "upload")
        before = db.statements
        got = await db.try_lock_tenants(tenants, "upload")
        assert db.statements - before == 1
        assert got == [tenants[0], tenants[1], tenants[3]]  # the held one left out, order kept
        assert all(db.holds_lock(t, "upload") for t in got)
        assert not db.holds_lock(tenants[2], "upload")
        assert await db.try_lock_tenants(tenants, "upload") == []  # ours are not re-entrant
        assert not await other.try_lock_tenant(tenants[0], "upload")
        assert await other.try_lock_tenant(tenants[0], "download")  # per operation
        before = db.statements
        await db.unlock_tenants(tenants, "upload")  # the one not held is skipped
        assert db.statements - before == 1
        assert not db.holds_lock(tenants[0], "upload")
        assert await other.try_lock_tenant(tenants[0], "upload")  # released for real
        assert await other.try_lock_tenant(tenants[3], "upload")
    with pytest.raises(ValueError, match="repeat"):
        await db.try_lock_tenants([tenants[0], tenants[0]], "upload")


async def test_group_fetch_is_each_tenants_own_fetch(db: SyncDatabase, dsn: str) -> None:
    """Queue order, the limit, quarantined / in-doubt / synchronized rows skipped, an empty
    queue: every tenant's slice equals fetch_unsynchronized for it."""
    a, b, c, d = [await _tenant(db, n) for n in (30, 5, 0, 12)]
    first = "SELECT ctid FROM meter_reading WHERE tenant_id = %s ORDER BY created_at"
    _sql(dsn, f"UPDATE meter_reading SET retry_count = 3 WHERE ctid IN ({first} LIMIT 4)", a)
    _sql(
        dsn,
        f"UPDATE meter_reading SET sync_status = 'in_doubt' WHERE ctid IN ({first} DESC LIMIT 2)",
        d,
    )
    _sql(
        dsn,
        "UPDATE meter_reading SET is_synchronized = true, sync_status = 'synchronized' "
        f"WHERE ctid IN ({first} LIMIT 3)",
        d,
    )
    limits = [(a, 10), (b, 100), (c, 7), (d, 100)]
    assert await db.try_lock_tenants([t for t, _ in limits], "upload")
    before = db.statements
    got = await db.fetch_unsynchronized_many(limits, max_retries=3)
    assert db.statements - before == 1
    assert list(got) == [a, b, c, d]
    for tenant, limit in limits:
        alone = await db.fetch_unsynchronized(tenant, limit, max_retries=3)
        assert got[tenant].schema == alone.schema
        assert got[tenant].equals(alone), tenant
    assert [got[t].num_rows for t in (a, b, c, d)] == [10, 5, 0, 7]


async def test_group_fetch_needs_every_lock_and_respects_a_lost_one(db: SyncDatabase) -> None:
    a, b = await _tenant(db, 3), await _tenant(db, 3)
    assert await db.try_lock_tenants([a], "upload") == [a]
    with pytest.raises(RuntimeError, match=f"tenant {b}: fetch for an upload lock not held"):
        await db.fetch_unsynchronized_many([(a, 5), (b, 5)])
    db._lost_locks.add(("upload", a))  # as after a reconnect: fenced until released
    with pytest.raises(TenantLockLostError):
        await db.fetch_unsynchronized_many([(a, 5)])
    with pytest.raises(ValueError, match="limit"):
        await db.fetch_unsynchronized_many([(b, 0)])


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(shape=st.lists(st.tuples(st.integers(0, 25), st.integers(1, 30)), min_size=1, max_size=6))
async def test_group_fetch_agrees_with_one_fetch_per_tenant(dsn: str, shape: list) -> None:
    async with await SyncDatabase.connect(dsn) as db:
        limits = [(await _tenant(db, pending), limit) for pending, limit in shape]
        assert len(await db.try_lock_tenants([t for t, _ in limits], "upload")) == len(limits)
        got = await db.fetch_unsynchronized_many(limits)
        for tenant, limit in limits:
            assert got[tenant].equals(await db.fetch_unsynchronized(tenant, limit))


# -- one UPDATE for a group's marks -----------------------------------------------------------


async def test_one_update_marks_several_tenants_and_counts_each(db: SyncDatabase, dsn: str) -> None:
    """Each tenant's own ids only: an id given under the wrong tenant marks nothing, a tenant
    given no ids is counted 0, and already synchronized rows are not counted again."""
    tenants = [await _tenant(db, 12) for _ in range(3)]
    batches = {t: await db.fetch_unsynchronized(t, 100) for t in tenants}
    a, b, c = tenants
    ids = {t: batch.column("meter_reading_id") for t, batch in batches.items()}
    before = db.statements
    newly = await db.mark_synchronized_many(
        [(a, ids[a].slice(0, 5)), (b, ids[b]), (c, ids[a].slice(5, 3)), (c, ids[c].slice(0, 0))]
    )
    assert db.statements == before + 1  # ONE statement for all of them
    assert newly == {a: 5, b: 12, c: 0}  # c's ids were a's: keyed by tenant, nothing changed
    assert (await db.fetch_unsynchronized(a, 100)).num_rows == 7
    assert (await db.fetch_unsynchronized(b, 100)).num_rows == 0
    assert (await db.fetch_unsynchronized(c, 100)).num_rows == 12
    again = await db.mark_synchronized_many([(a, ids[a]), (b, ids[b].slice(0, 2))])
    assert again == {a: 7, b: 0}  # only newly marked rows count
    assert await db.mark_synchronized_many([]) == {}
    assert await db.mark_synchronized_many([(c, [])]) == {c: 0}


async def test_a_lost_lock_fences_the_group_update(db: SyncDatabase) -> None:
    tenants = [await _tenant(db, 3) for _ in range(2)]
    ids = (await db.fetch_unsynchronized(tenants[1], 10)).column("meter_reading_id")
    db._lost_locks.add(("upload", tenants[1]))
    with pytest.raises(TenantLockLostError):
        await db.mark_synchronized_many([(tenants[0], []), (tenants[1], ids)])
    db._lost_locks.clear()
    assert (await db.fetch_unsynchronized(tenants[1], 10)).num_rows == 3


async def test_the_group_update_probes_the_primary_key(db: SyncDatabase, dsn: str) -> None:
    """One primary-key index scan per tenant, OR'ed in a bitmap: never a scan of the table or
    of a tenant's backlog (joined to unnest()ed pairs, the planner hashed the whole table)."""
    from metersync.store import sql as q

    tenants = [await _tenant(db, 5000) for _ in range(4)]  # a table a seq scan would cost
    terms: list[Any] = []
    for t in tenants:
        batch = await db.fetch_unsynchronized(t, 100)
        terms += [
            t,
            [str(uuid.UUID(bytes=v)) for v in batch.column("meter_reading_id").to_pylist()],
        ]
    _sql(dsn, "ANALYZE meter_reading")
    statement = q.mark_synchronized_many(len(tenants))
    with psycopg.connect(dsn) as conn:
        cur = psycopg.ClientCursor(conn)  # the ids as literals: the plan a custom plan gets
        cur.execute("EXPLAIN (COSTS OFF) " + statement.replace("ANY(%s)", "ANY(%s::uuid[])"), terms)
        plan = "\n".join(r[0] for r in cur.fetchall())
        conn.rollback()
    shape = "\n".join(line[:120] for line in plan.splitlines())  # without the id lists
    assert plan.count("Index Scan on meter_reading_pkey") == len(tenants), shape
    assert "Seq Scan" not in plan and "queue_idx" not in plan and "Hash Join" not in plan, shape

"""One adapter, one session: tasks sharing a ``SyncDatabase`` take turns, and a tenant lock lost
with its session fences the tenant's work (issue 9 item 2, issue 11 item 1).
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Coroutine
from typing import Any

import orjson
import psycopg
import pyarrow as pa
import pytest

from fix_engine import Engine
from metersync.errors import DatabaseUnavailableError, TenantLockLostError
from metersync.store.database import SyncDatabase
from metersync.tools.synthetic import reading_batch

_tenants = itertools.count(7_000_001)
_seeds = itertools.count(100)


def _sql(dsn: str, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(statement, params or None)
        return cur.fetchall() if cur.description else []


def _terminate(dsn: str, pid: int) -> None:
    """End a backend and wait until it is gone (the server ends it asynchronously)."""
    _sql(dsn, "SELECT pg_terminate_backend(%s)", pid)
    deadline = time.monotonic() + 10
    while _sql(dsn, "SELECT 1 FROM pg_stat_activity WHERE pid = %s", pid):
        assert time.monotonic() < deadline, "the terminated backend did not go away"
        time.sleep(0.01)


async def _pid(db: SyncDatabase) -> int:
    cur = await db._conn.execute("SELECT pg_backend_pid()")
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


# ---------------------------------------------------------------------------------- sharing


async def test_tasks_sharing_one_adapter_never_run_inside_each_others_transaction(
    engine_dsn: str,
) -> None:
    """A page whose COPY fails rolls back its transaction; a mark another task issued meanwhile
    on the same adapter must not be rolled back with it (it would be, were it to run between
    the page's statements)."""
    async with await SyncDatabase.connect(engine_dsn) as db:
        for _ in range(5):
            t = next(_tenants)
            queued = reading_batch(40, seed=next(_seeds), tenant_id=t)
            await db.insert_readings(queued, 100)
            ids = queued.column("meter_reading_id")
            page = reading_batch(3000, seed=next(_seeds), tenant_id=None)
            meter_id = page.column("meter_id").to_pylist()
            meter_id[-1] = None  # the last COPY chunk violates NOT NULL: the page rolls back
            bad = page.set_column(2, "meter_id", pa.array(meter_id, pa.int64()))

            async def marks(t: int = t, ids: pa.Array = ids) -> list[int]:
                out = []
                for i in range(0, 40, 4):
                    await asyncio.sleep(0)
                    out.append(await db.mark_synchronized(t, ids.slice(i, 4)))
                return out

            store = db.store_download_page(t + 1, bad, 500, "c")
            results = await asyncio.gather(store, marks(), return_exceptions=True)
            assert isinstance(results[0], psycopg.errors.NotNullViolation), results[0]
            assert results[1] == [4] * 10
            synced = _sql(
                engine_dsn,
                "SELECT count(*) FROM meter_reading WHERE tenant_id = %s AND is_synchronized",
                t,
            )
            assert synced == [(40,)]  # every mark the task was told about is there


async def test_concurrent_fetches_on_one_adapter_each_get_their_rows(engine_dsn: str) -> None:
    async with await SyncDatabase.connect(engine_dsn) as db:
        tenants = [next(_tenants) for _ in range(4)]
        for n, t in enumerate(tenants, 1):
            await db.insert_readings(reading_batch(50 * n, seed=next(_seeds), tenant_id=t), 1000)
        batches = await asyncio.gather(*(db.fetch_unsynchronized(t, 1000) for t in tenants))
        assert [b.num_rows for b in batches] == [50, 100, 150, 200]


# ---------------------------------------------------------------------------------- fencing


async def test_a_lock_lost_with_its_session_fences_the_tenant_until_released(
    engine_dsn: str,
) -> None:
    t = next(_tenants)
    async with (
        await SyncDatabase.connect(engine_dsn) as db,
        await SyncDatabase.connect(engine_dsn) as other,
    ):
        await db.insert_readings(reading_batch(10, seed=next(_seeds), tenant_id=t), 100)
        ids = (await db.fetch_unsynchronized(t, 100)).column("meter_reading_id")
        async with db.tenant_lock(t, "upload"):
            _terminate(engine_dsn, await _pid(db))
            with pytest.raises(DatabaseUnavailableError):
                await db.fetch_unsynchronized(t, 10)  # meets the dead session
            assert await other.try_lock_tenant(t, "upload")  # the lock is free for others
            for call in (
                lambda: db.fetch_unsynchronized(t, 10),
                lambda: db.mark_synchronized(t, ids),
                lambda: db.mark_rejected(t, ids[:1], ["x"], 3),
                lambda: db.requeue(t),
                lambda: db.store_download_page(t, reading_batch(2, seed=1, tenant_id=None), 5, "c"),
            ):
                with pytest.raises(TenantLockLostError, match=f"tenant {t}: the upload lock"):
                    await call()
            assert not await db.try_lock_tenant(t, "upload")  # still fenced, never re-taken
            assert (await db.fetch_unsynchronized(t + 1, 10)).num_rows == 0  # others work
            assert db.reconnects == 1
        # Released: the fence is gone; the lock belongs to the other worker now.
        assert (await db.fetch_unsynchronized(t, 100)).num_rows == 10
        assert not await db.try_lock_tenant(t, "upload")
        assert await other.unlock_tenant(t, "upload")
        async with db.tenant_lock(t, "upload"):
            assert await db.mark_synchronized(t, ids) == 10


class _Posts:
    """The real client, noting the ids of every POST; ``on_post(n)`` runs synchronously as the
    n-th POST is started (before the request goes out)."""

    def __init__(self, client: Any, on_post: Any = None) -> None:
        self._client = client
        self._on_post = on_post
        self.batches: list[set[str]] = []

    def post_batch(self, body: bytes, count: int, **kwargs: Any) -> Coroutine[Any, Any, Any]:
        rows = orjson.loads(body)
        rows = rows["readings"] if isinstance(rows, dict) else rows
        self.batches.append({str(uuid.UUID(r["meter_reading_id"])) for r in rows})
        if self._on_post is not None:
            self._on_post(len(self.batches))
        return self._client.post_batch(body, count, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


async def test_upload_stops_when_its_lock_is_lost_mid_window(engine: Engine) -> None:
    """Worker 1's session is terminated while it has POSTs in flight; worker 2 takes the lock
    and uploads. Worker 1 marks nothing and sends nothing more on its new session."""
    tenant = await engine.tenant(upload=5)
    await engine.seed(tenant, 40)
    engine.server.set_faults("delay=0.15")
    second: dict[str, Any] = {}
    async with (
        await SyncDatabase.connect(engine.dsn) as db1,
        await SyncDatabase.connect(engine.dsn) as db2,
    ):
        pid = await _pid(db1)
        posts2 = _Posts(engine.client(tenant))
        worker2 = engine.uploader(tenant, db=db2, client=posts2, max_in_flight=2)

        def on_post(n: int) -> None:
            if n == 3:  # batch 1 answered and marked, batches 2 and 3 in the air
                _terminate(engine.dsn, pid)
                second["task"] = asyncio.ensure_future(worker2.upload())

        posts1 = _Posts(engine.client(tenant), on_post)
        worker1 = engine.uploader(tenant, db=db1, client=posts1, max_in_flight=2)
        report1 = await worker1.upload()
        report2 = await second["task"]

    assert report1.error is not None and "TenantLockLostError" in report1.error, report1
    # Worker 1 marked only what it marked while it held the lock (batch 1), and posted nothing
    # after its session ended (3 POSTs: the third started as the session was terminated).
    assert report1.confirmed == 5 and len(posts1.batches) == 3
    assert report2.error is None and report2.confirmed == 35
    sent2 = [i for b in posts2.batches for i in b]
    assert len(sent2) == len(set(sent2)) == 35  # worker 2 sent each pending reading once
    assert not posts1.batches[0] & set(sent2)  # nothing worker 1 marked went again
    assert await engine.status_counts(tenant) == {"synchronized:true": 40}
    assert await engine.server_ids(tenant) == await engine.local_ids(tenant)

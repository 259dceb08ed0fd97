"""SyncDatabase against real PostgreSQL: queue order, marks, inserts, downloads, locks, counts.

One migrated database per module; every test uses its own tenant ids, so tests share it.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from metersync.errors import (
    ConfigError,
    DatabaseUnavailableError,
    SchemaError,
    TenantLockLostError,
    UnknownTenantError,
)
from metersync.store.database import InsertResult, SyncDatabase, TenantRow
from metersync.tools.synthetic import reading_batch

_tenants = itertools.count(1000)
_seeds = itertools.count(1)


def _sql(dsn: str, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(statement, params or None)
        return cur.fetchall() if cur.description else []


async def _tenant(db: SyncDatabase, **sizes: int) -> int:
    tenant_id = next(_tenants)
    await db.add_tenant(tenant_id, f"tenant {tenant_id}", f"key-{tenant_id}", **sizes)
    return tenant_id


def _readings(n: int, tenant_id: int | None, **kwargs: Any) -> pa.RecordBatch:
    return reading_batch(n, seed=next(_seeds), tenant_id=tenant_id, **kwargs)


def _queue_order(batch: pa.RecordBatch) -> pa.RecordBatch:
    return batch.sort_by([("created_at", "ascending"), ("meter_reading_id", "ascending")])


def _shuffled(batch: pa.RecordBatch, seed: int = 7) -> pa.RecordBatch:
    import numpy as np

    return batch.take(pa.array(np.random.default_rng(seed).permutation(batch.num_rows)))


# ---------------------------------------------------------------------------------- fetch


async def test_fetch_is_oldest_first_limited_and_per_tenant(db: SyncDatabase) -> None:
    a, b = await _tenant(db), await _tenant(db)
    mine = _readings(700, a)
    theirs = _readings(300, b)  # same timestamps: interleaved with a's in time
    await db.insert_readings(_shuffled(mine), 128)  # heap order differs from queue order
    await db.insert_readings(theirs, 1000)
    expected = _queue_order(mine.drop_columns(["tenant_id"]))
    got = await db.fetch_unsynchronized(a, 250)
    assert got.num_rows == 250
    assert got.equals(expected.slice(0, 250))
    everything = await db.fetch_unsynchronized(a, 10_000)
    assert everything.equals(expected)  # nothing of tenant b, ever
    ids = everything.column("meter_reading_id")
    assert await db.mark_synchronized(b, ids) == 0  # another tenant's id list touches nothing
    assert (await db.fetch_unsynchronized(a, 10_000)).num_rows == 700
    assert await db.mark_synchronized(a, ids.slice(0, 250)) == 250
    assert (await db.fetch_unsynchronized(a, 10)).equals(expected.slice(250, 10))
    skip = expected.column("meter_reading_id").slice(250, 5)
    assert (await db.fetch_unsynchronized(a, 10, exclude=skip)).equals(expected.slice(255, 10))
    assert (await db.fetch_unsynchronized(next(_tenants), 10)).num_rows == 0


async def test_fetch_plan_is_an_index_range_scan_never_a_sort(db: SyncDatabase, dsn: str) -> None:
    tenants = [await _tenant(db) for _ in range(3)]
    for t in tenants:
        await db.insert_readings(_shuffled(_readings(2000, t)), 2000)
        backlog = await db.fetch_unsynchronized(t, 1500)
        await db.mark_synchronized(t, backlog.column("meter_reading_id"))
    _sql(dsn, "ANALYZE meter_reading")
    layout = await db.layout()
    for exclude in (None, [uuid.uuid4()]):
        select = db.fetch_statement(tenants[1], 100, exclude=exclude, layout=layout, copy=False)
        with psycopg.connect(dsn, autocommit=True) as conn:
            query = select.as_string(conn)
            plan = "\n".join(r[0] for r in conn.execute("EXPLAIN (COSTS OFF) " + query))
        assert "Index Scan using meter_reading_queue_idx" in plan, plan
        assert "Sort" not in plan and "Seq Scan" not in plan, plan


# ---------------------------------------------------------------------------------- marks


async def test_id_list_statements_probe_the_primary_key_never_the_queue(
    db: SyncDatabase, dsn: str
) -> None:
    """With statistics showing a short queue, or a generic plan, a mark must still not walk the
    tenant's backlog through the queue index: only the primary key serves an id list."""
    from metersync.store import sql as q

    t = await _tenant(db)
    await db.insert_readings(_readings(300, t), 300)
    ids = [str(uuid.UUID(bytes=b)) for b in _readings(50, None).column(0).to_pylist()]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ANALYZE meter_reading")
        for mode in ("auto", "force_generic_plan"):
            conn.execute(f"SET plan_cache_mode = {mode}")
            for name, statement, args in (
                ("mark", q.MARK_SYNCHRONIZED, "bigint, uuid[]"),
                ("requeue", q.REQUEUE_IDS, "bigint, uuid[]"),
                ("reject", q.MARK_REJECTED, "uuid[], text[], bigint, integer"),
            ):
                params = (ids, ["e"] * 50, t, 5) if name == "reject" else (t, ids)
                numbered = statement
                for i in range(1, 5):
                    numbered = numbered.replace("%s", f"${i}", 1)
                conn.execute(f"PREPARE {name}_{mode}({args}) AS {numbered}")
                marks = ", ".join(f"%s::{t.strip()}" for t in args.split(","))
                cur = psycopg.ClientCursor(conn)  # EXPLAIN EXECUTE takes no bind parameters
                cur.execute(f"EXPLAIN EXECUTE {name}_{mode}({marks})", params)
                plan = "\n".join(r[0] for r in cur.fetchall())
                assert "meter_reading_pkey" in plan and "queue_idx" not in plan, plan


async def test_marks_rejections_quarantine_and_requeue(db: SyncDatabase, dsn: str) -> None:
    t = await _tenant(db)
    await db.insert_readings(_readings(20, t), 100)
    batch = await db.fetch_unsynchronized(t, 20, max_retries=3)
    ids = [str(uuid.UUID(bytes=b)) for b in batch.column("meter_reading_id").to_pylist()]
    bad, good = ids[:4], ids[4:]

    before = db.statements
    result = await db.mark_rejected(t, bad, [f"bad value {i}" for i in range(4)], 3)
    assert db.statements - before == 1
    assert (result.rejected, result.quarantined) == (4, 0)
    rows = _sql(dsn, "SELECT sync_status, retry_count, last_error, is_synchronized "
                     "FROM meter_reading WHERE meter_reading_id = %s", bad[1])  # fmt: skip
    assert rows == [("failed", 1, "bad value 1", False)]
    for _ in range(2):
        result = await db.mark_rejected(t, bad, ["still bad\x00!"] * 4, 3)
    assert result.quarantined == 4
    (status,) = await db.queue_status(t, max_retries=3)
    assert (status.pending, status.failed, status.quarantined, status.synchronized) == (16, 0, 4, 0)
    queue = await db.fetch_unsynchronized(t, 100, max_retries=3)
    assert queue.num_rows == 16  # quarantined readings no longer block the queue
    assert len(await db.quarantined_ids(t, 3)) == 4

    before = db.statements
    assert await db.mark_synchronized(t, pa.array(good)) == 16
    assert db.statements - before == 1
    assert await db.mark_synchronized(t, good) == 0  # a repeated mark writes nothing
    assert await db.requeue(t, await db.quarantined_ids(t, 3)) == 4
    rows = _sql(dsn, "SELECT DISTINCT sync_status, retry_count, is_synchronized FROM meter_reading "
                     "WHERE meter_reading_id = ANY(%s::uuid[])", bad)  # fmt: skip
    assert rows == [("pending", 0, False)]
    (status,) = await db.queue_status(t, max_retries=3)
    assert (status.pending, status.failed, status.quarantined, status.synchronized) == (4, 0, 0, 16)
    assert status.oldest_pending_age_s is not None and status.oldest_pending_age_s > 0
    await db.mark_rejected(t, bad[:1], ["x"], 3)
    assert await db.requeue(t) == 1
    all_rows = {s.tenant_id: s for s in await db.queue_status(None, 3)}
    assert all_rows[t].pending == 4


async def test_statement_counts(db: SyncDatabase) -> None:
    t = await _tenant(db)
    batch = _readings(250, t)
    await db.layout()  # reflected once per adapter; not part of the counts below
    before = db.statements
    result = await db.insert_readings(batch, 100)
    assert result == InsertResult(inserted=250, skipped=0, chunks=3)
    assert db.statements - before == 1 + 3  # existing-id check + one COPY per chunk
    before = db.statements
    page = await db.fetch_unsynchronized(t, 100)
    assert db.statements - before == 1
    before = db.statements
    await db.mark_synchronized(t, page.column("meter_reading_id"))
    assert db.statements - before == 1
    before = db.statements
    result = await db.store_download_page(t, _readings(120, None), 50, "cursor-1")
    assert result == InsertResult(inserted=120, skipped=0, chunks=3)
    assert db.statements - before == 1 + 3 + 1  # check, COPYs, cursor upsert


# ---------------------------------------------------------------------------------- inserts


async def test_insert_skips_readings_already_present(db: SyncDatabase, dsn: str) -> None:
    t = await _tenant(db)
    batch = _readings(2500, t)  # >= OVERLAP_MIN_ROWS: encoded while the check runs
    assert await db.insert_readings(batch.slice(0, 300), 1000) == InsertResult(300, 0, 1)
    assert await db.insert_readings(batch.slice(0, 500), 150) == InsertResult(200, 300, 2)
    assert await db.insert_readings(batch, 1000) == InsertResult(2000, 500, 2)
    assert await db.insert_readings(batch, 150) == InsertResult(0, 2500, 0)
    assert _sql(dsn, "SELECT count(*) FROM meter_reading WHERE tenant_id = %s", t) == [(2500,)]
    stored = await db.fetch_unsynchronized(t, 10_000)
    assert stored.equals(_queue_order(batch.drop_columns(["tenant_id"])))


async def test_store_download_page_is_atomic(db: SyncDatabase, dsn: str) -> None:
    t = await _tenant(db)
    first = _readings(10, None)
    await db.store_download_page(t, first, 5, "c-1")
    assert await db.get_download_cursor(t) == "c-1"
    page = _readings(20, None)
    meter_id = page.column("meter_id").to_pylist()
    meter_id[15] = None  # the second chunk violates NOT NULL
    bad = page.set_column(2, "meter_id", pa.array(meter_id, pa.int64()))
    with pytest.raises(psycopg.errors.NotNullViolation):
        await db.store_download_page(t, bad, 10, "c-2")
    assert await db.get_download_cursor(t) == "c-1"
    assert _sql(dsn, "SELECT count(*) FROM meter_reading WHERE tenant_id = %s", t) == [(10,)]
    # Replaying a page duplicates nothing; stored readings are synchronized, never uploaded.
    result = await db.store_download_page(t, pa.concat_batches([first, page]), 8, "c-2")
    assert (result.inserted, result.skipped) == (20, 10)
    assert await db.get_download_cursor(t) == "c-2"
    assert (await db.fetch_unsynchronized(t, 100)).num_rows == 0
    rows = _sql(dsn, "SELECT sync_status, is_synchronized, count(*) FROM meter_reading "
                     "WHERE tenant_id = %s GROUP BY 1, 2", t)  # fmt: skip
    assert rows == [("synchronized", True, 30)]
    wrong = _readings(3, t + 1)
    with pytest.raises(ValueError, match=f"tenant {t + 1}"):
        await db.store_download_page(t, wrong, 10, "c-3")


async def test_pages_stored_together_without_a_check_still_skip_present_readings(
    db: SyncDatabase, dsn: str
) -> None:
    t = await _tenant(db)
    layout = await db.layout()
    first, second = _readings(30, None), _readings(25, None)
    pages = [db.encode_download_page(layout, t, b, 10) for b in (first, second)]
    assert [len(p.chunks) for p in pages] == [3, 3]
    before = db.statements
    result = await db.store_download_pages(t, pages, "c-2", check_present=False)
    assert result == InsertResult(55, 0, 6)
    assert db.statements - before == 6 + 1  # the COPYs and the cursor: no existing-id check
    assert await db.get_download_cursor(t) == "c-2"
    # The same pages again, unchecked: the COPY meets the stored readings, the unit is redone
    # through the staging table, which skips them all; the cursor moves with it.
    replay = [*pages, db.encode_download_page(layout, t, _readings(5, None), 10)]
    result = await db.store_download_pages(t, replay, "c-3", check_present=False)
    assert (result.inserted, result.skipped) == (5, 55)
    assert await db.get_download_cursor(t) == "c-3"
    # Checked: the present readings are left out before the COPY (pages encoded again).
    result = await db.store_download_pages(t, replay, "c-4", check_present=True)
    assert result == InsertResult(0, 60, 0)
    rows = _sql(dsn, "SELECT count(*), count(DISTINCT meter_reading_id), bool_and(is_synchronized) "
                     "FROM meter_reading WHERE tenant_id = %s", t)  # fmt: skip
    assert rows == [(60, 60, True)]
    # Encoded rows of another tenant are refused before anything is written.
    theirs = db.encode_download_page(layout, t + 1, _readings(2, None), 10)
    with pytest.raises(ValueError, match="another tenant"):
        await db.store_download_pages(t, [theirs], "c-5")
    assert await db.get_download_cursor(t) == "c-4"


async def test_a_second_session_moves_the_cursor_only_under_the_holders_lock(
    db: SyncDatabase, dsn: str
) -> None:
    t = await _tenant(db)
    layout = await db.layout()
    second = await db.download_writer()
    assert second is not None
    try:
        page = db.encode_download_page(layout, t, _readings(12, None), 5)
        # The lock holder's session does not hold the download lock: nothing is written.
        with pytest.raises(TenantLockLostError, match="not held"):
            await second.store_download_pages(
                t, [page], "c-1", held_by=db.lock_holder(t, "download")
            )
        assert await db.get_download_cursor(t) is None
        assert _sql(dsn, "SELECT count(*) FROM meter_reading WHERE tenant_id = %s", t) == [(0,)]
        async with db.tenant_lock(t, "download"):
            result = await second.store_download_pages(
                t, [page], "c-1", held_by=db.lock_holder(t, "download")
            )
        assert result == InsertResult(12, 0, 3)
        assert await db.get_download_cursor(t) == "c-1"
    finally:
        await second.close()


async def _race_a_writer(dsn: str, t: int, rid: uuid.UUID, insert: Any) -> Any:
    """Another writer inserts reading ``rid`` and commits only once our COPY waits on its
    row (so our existing-id check could not see it): the COPY then meets a unique violation."""
    other = await psycopg.AsyncConnection.connect(dsn)
    try:
        await other.execute(
            "INSERT INTO meter_reading (meter_reading_id, tenant_id, meter_id, is_synchronized,"
            " sync_status) VALUES (%s, %s, 1, true, 'synchronized')",
            (rid, t),
        )
        task = asyncio.ensure_future(insert())
        for _ in range(250):  # wait until our COPY waits on the other writer's row
            waiting = _sql(dsn, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY%%' "
                                "AND wait_event_type = 'Lock'")  # fmt: skip
            if waiting[0][0]:
                break
            await asyncio.sleep(0.02)
        else:
            pytest.fail("our COPY never waited on the other writer")
        await other.commit()
        return await task
    finally:
        await other.close()


async def test_a_concurrent_writer_of_the_same_id_is_skipped_not_an_error(
    db: SyncDatabase, dsn: str
) -> None:
    t = await _tenant(db)
    batch = _readings(50, t)
    rid = uuid.UUID(bytes=batch.column("meter_reading_id")[40].as_py())
    result = await _race_a_writer(dsn, t, rid, lambda: db.insert_readings(batch, 20))
    assert result == InsertResult(49, 1, 3)  # redone through the staging table
    assert _sql(dsn, "SELECT count(*) FROM meter_reading WHERE tenant_id = %s", t) == [(50,)]
    assert await db.insert_readings(batch, 20) == InsertResult(0, 50, 0)


async def test_a_download_page_racing_a_concurrent_writer_is_stored_once(
    db: SyncDatabase, dsn: str
) -> None:
    """Issue 11 item 3: no raw ``UniqueViolation`` from the download path; the page and its
    cursor commit together, the raced reading is counted as already present."""
    t = await _tenant(db)
    page = _readings(3000, None)  # >= OVERLAP_MIN_ROWS: the encode-while-checking path
    rid = uuid.UUID(bytes=page.column("meter_reading_id")[2999].as_py())
    before = db.statements
    result = await _race_a_writer(
        dsn, t, rid, lambda: db.store_download_page(t, page, 1000, "c-race")
    )
    assert (result.inserted, result.skipped, result.chunks) == (2999, 1, 3)
    assert db.statements - before >= 1 + 3 + 1 + 3 + 2  # fast path, then stage + insert
    assert await db.get_download_cursor(t) == "c-race"
    rows = _sql(dsn, "SELECT count(*), count(DISTINCT meter_reading_id), bool_and(is_synchronized) "
                     "FROM meter_reading WHERE tenant_id = %s", t)  # fmt: skip
    assert rows == [(3000, 3000, True)]
    # A unique constraint of the site's own is refused clearly, not as a driver error.
    _sql(dsn, "CREATE UNIQUE INDEX site_unique_meter_time ON meter_reading (tenant_id, meter_id, "
              f"created_at) WHERE tenant_id = {t:d}")  # fmt: skip
    try:
        clash = _readings(2, None)
        clash = clash.set_column(2, "meter_id", pa.array([7, 7], pa.int64()))
        clash = clash.set_column(1, "created_at", pa.array([clash.column(1)[0]] * 2))
        with pytest.raises(SchemaError, match="site_unique_meter_time"):
            await db.store_download_page(t, clash, 10, "c-clash")
        assert await db.get_download_cursor(t) == "c-race"
    finally:
        _sql(dsn, "DROP INDEX site_unique_meter_time")


async def test_layout_with_fewer_and_extra_columns_round_trips(fresh_dsn: str) -> None:
    _sql(fresh_dsn, """CREATE TABLE meter_reading (
        meter_reading_id uuid PRIMARY KEY, created_at timestamptz NOT NULL,
        tenant_id bigint NOT NULL, meter_id bigint NOT NULL, meter_element_id bigint,
        power numeric(18,4), frequency numeric(18,4), voltage_p_n numeric(18,4), site_note text,
        is_synchronized boolean)""")  # fmt: skip
    async with await SyncDatabase.connect(fresh_dsn) as db:
        await db.migrate()
        layout = await db.layout()
        assert layout.upload_columns[4:] == ["power", "frequency", "voltage_p_n", "site_note"]
        base = _readings(40, 7, columns=("power", "frequency", "voltage_p_n"))
        notes = pa.array([None if i % 3 else f"note {i} ü" for i in range(40)])
        batch = base.append_column("site_note", notes)
        assert await db.insert_readings(batch, 16) == InsertResult(40, 0, 3)
        got = await db.fetch_unsynchronized(7, 100)
        assert got.schema == layout.upload_schema
        assert got.equals(_queue_order(batch.drop_columns(["tenant_id"])))


async def test_insert_rejects_bad_batches(db: SyncDatabase) -> None:
    batch = _readings(3, 1)
    with pytest.raises(ValueError, match="no_such_column"):
        await db.insert_readings(batch.append_column("no_such_column", pa.array([1, 2, 3])), 10)
    with pytest.raises(ValueError, match="tenant_id"):
        await db.insert_readings(batch.drop_columns(["tenant_id"]), 10)
    twice = pa.concat_batches([batch, batch])
    with pytest.raises(ValueError, match="more than once"):
        await db.insert_readings(twice, 10)
    with pytest.raises(ValueError, match="chunk_rows"):
        await db.insert_readings(batch, 0)


# ---------------------------------------------------------------------------------- tenants


async def test_tenant_rows_hide_the_key_and_sizes_are_validated(db: SyncDatabase, dsn: str) -> None:
    t = await _tenant(db, upload_batch_size=250)
    row = await db.get_tenant(t)
    assert isinstance(row, TenantRow) and row.api_key == f"key-{t}"
    assert f"key-{t}" not in repr(row) and f"key-{t}" not in str(row)
    assert row.upload_batch_size == 250 and row.download_batch_size == 1000
    assert t in {r.tenant_id for r in await db.list_tenants()}
    with pytest.raises(ConfigError, match=r"upload_batch_size.*10001.*1\.\.10000"):
        await db.set_tenant_batch_sizes(t, upload=10_001)
    with pytest.raises(ConfigError, match=r"download_batch_size.*0"):
        await db.set_tenant_batch_sizes(t, download=0)
    with pytest.raises(UnknownTenantError, match=str(t + 10_000)):
        await db.set_tenant_batch_sizes(t + 10_000, upload=5)
    with pytest.raises(ConfigError, match="already exists"):
        await db.add_tenant(t, "again", None)

    listener = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    try:
        await listener.execute("LISTEN metersync_tenant")
        updated = await db.set_tenant_batch_sizes(t, upload=5, download=7)
        assert (updated.upload_batch_size, updated.download_batch_size) == (5, 7)
        gen = listener.notifies(timeout=5.0, stop_after=1)
        payloads = [n.payload async for n in gen]
        assert payloads == [str(t)]
    finally:
        await listener.close()
    config = await db.get_tenant_batch_config(t)
    assert (config.upload_batch_size, config.download_batch_size, config.source) == (5, 7, "tenant")


async def test_unreachable_database_names_host_never_password(fresh_dsn: str) -> None:
    dsn = "host=127.0.0.1 port=1 dbname=sitedb user=ops password=hunter2secret connect_timeout=2"
    with pytest.raises(DatabaseUnavailableError) as info:
        await SyncDatabase.connect(dsn)
    assert "127.0.0.1" in str(info.value) and "sitedb" in str(info.value)
    assert "hunter2secret" not in str(info.value)


# ---------------------------------------------------------------------------------- locks


async def test_tenant_locks_are_per_session(dsn: str) -> None:
    t = next(_tenants)
    first = await SyncDatabase.connect(dsn)
    second = await SyncDatabase.connect(dsn)
    try:
        assert await first.try_lock_tenant(t, "upload")
        assert not await first.try_lock_tenant(t, "upload")  # not re-entrant
        assert not await second.try_lock_tenant(t, "upload")
        assert await second.try_lock_tenant(t, "download")  # another operation
        await first.close()  # a dead worker's locks go with its connection
        for _ in range(250):  # the server ends the closed session asynchronously
            if await second.try_lock_tenant(t, "upload"):
                break
            await asyncio.sleep(0.02)
        else:
            pytest.fail("the lock of a closed session was never released")
        assert await second.unlock_tenant(t, "upload")
        assert not await second.unlock_tenant(t, "upload")
    finally:
        await second.close()
        if not first.closed:
            await first.close()


# ---------------------------------------------------------------------------------- bookkeeping


async def test_sync_log_and_recent_cycles(db: SyncDatabase) -> None:
    t = next(_tenants)
    await db.write_sync_log(t, "upload", 3, 300, 7, 0.25, True, None)
    await db.write_sync_log(t, "download", 1, 0, 2, 0.5, False, "boom\x00" + "x" * 5000)
    cycles = await db.recent_cycles(t, 5)
    assert [c.operation for c in cycles] == ["download", "upload"]
    assert (cycles[1].batches, cycles[1].records, cycles[1].statements) == (3, 300, 7)
    assert cycles[0].success is False and cycles[0].error is not None
    assert cycles[0].error.startswith("boom\\x00") and len(cycles[0].error) <= 2000
    assert len(await db.recent_cycles(t, 1)) == 1


async def test_ids_in_any_form(db: SyncDatabase) -> None:
    t = await _tenant(db)
    batch = _readings(4, t)
    await db.insert_readings(batch, 10)
    raw = batch.column("meter_reading_id").to_pylist()
    forms: list[Any] = [raw[0], uuid.UUID(bytes=raw[1]), str(uuid.UUID(bytes=raw[2]))]
    assert await db.mark_synchronized(t, forms) == 3
    ext = pa.ExtensionArray.from_storage(pa.uuid(), pa.array(raw[3:], pa.binary(16)))
    assert await db.mark_synchronized(t, ext) == 1
    with pytest.raises(ValueError, match="not-a-uuid"):
        await db.mark_synchronized(t, ["not-a-uuid"])
    assert pc.sum(pc.is_in(batch.column("meter_reading_id"), pa.array(raw))).as_py() == 4


# ---------------------------------------------------------------------------------- outages


async def test_lost_connection_is_database_unavailable_then_reconnects(dsn: str) -> None:
    async with await SyncDatabase.connect(dsn) as db:
        tenant_id = await _tenant(db)
        await db.insert_readings(_readings(5, tenant_id), 5)
        assert await db.try_lock_tenant(tenant_id, "upload")
        cur = await db._conn.execute("SELECT pg_backend_pid()")
        pid = await cur.fetchone()
        assert pid is not None
        _sql(dsn, "SELECT pg_terminate_backend(%s)", pid[0])
        # The call that meets the dead session fails clearly, naming the database, no password.
        with pytest.raises(DatabaseUnavailableError) as info:
            await db.fetch_unsynchronized(tenant_id, 10)
        assert psycopg.conninfo.conninfo_to_dict(dsn)["dbname"] in str(info.value)
        # The lock died with the session: unlocking does not mask anything, it just says no.
        assert await db.unlock_tenant(tenant_id, "upload") is False
        # The next call reconnects and works; the lock can be taken again.
        batch = await db.fetch_unsynchronized(tenant_id, 10)
        assert batch.num_rows == 5 and db.reconnects == 1
        assert await db.try_lock_tenant(tenant_id, "upload")
        await db.unlock_tenant(tenant_id, "upload")
    # close() is final: no silent reconnect of a closed adapter.
    with pytest.raises(DatabaseUnavailableError, match="closed"):
        await db.fetch_unsynchronized(tenant_id, 10)


async def test_tenant_lock_is_exclusive_and_released_however_the_body_ends(dsn: str) -> None:
    from metersync.errors import TenantBusyError

    async with (
        await SyncDatabase.connect(dsn) as first,
        await SyncDatabase.connect(dsn) as second,
    ):
        t = next(_tenants)
        async with first.tenant_lock(t, "upload"):
            with pytest.raises(TenantBusyError, match=f"tenant {t}: .*upload lock"):
                async with second.tenant_lock(t, "upload"):
                    raise AssertionError("the body must not run while another worker holds it")
        with pytest.raises(RuntimeError, match="boom"):
            async with first.tenant_lock(t, "upload"):
                raise RuntimeError("boom")
        async with second.tenant_lock(t, "upload"):  # released after the failing body
            assert not await first.try_lock_tenant(t, "upload")

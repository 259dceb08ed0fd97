"""Upload cycle against the real sync database and the real reference server (spec §4)."""

from __future__ import annotations

import hashlib
import logging
import math
import uuid
from typing import Any

import orjson
import psycopg
import pyarrow as pa
import pytest

from fix_engine import Engine
from metersync.engine.tenant_cache import TenantCache
from metersync.engine.upload import MeterReadingUploadManager, idempotency_key
from metersync.errors import TenantBusyError, TenantLockLostError
from metersync.remote.client import ClientSystemApiClient
from metersync.store.database import CompanionReader, SyncDatabase


@pytest.mark.parametrize("overlap", [True, False])
async def test_cycle_drains_the_queue_in_configured_batches(engine: Engine, overlap: bool) -> None:
    tenant = await engine.tenant(upload=7)
    await engine.seed(tenant, 30)
    report = await engine.uploader(tenant, overlap=overlap).upload()
    assert report.error is None
    assert report.upload_batch_size == 7
    assert (report.batches, report.readings_sent, report.confirmed) == (5, 30, 30)
    assert (report.inserted, report.duplicates, report.rejected) == (30, 0, 0)
    assert await engine.status_counts(tenant) == {"synchronized:true": 30}
    assert await engine.server_ids(tenant) == await engine.local_ids(tenant)
    stats = engine.server.stats()
    assert stats["batches_received"] == 5
    assert stats["readings_received"] == 30
    # 5 fetches with rows + 1 empty + 5 marks + lock/unlock + the cache's load.
    assert report.statements <= 2 * math.ceil(30 / 7) + 10


async def test_empty_queue_sends_nothing(engine: Engine) -> None:
    tenant = await engine.tenant()
    report = await engine.uploader(tenant).upload()
    assert (report.batches, report.readings_sent, report.error) == (0, 0, None)
    assert engine.server.stats()["batches_received"] == 0


async def test_other_tenants_readings_are_not_touched(engine: Engine) -> None:
    tenant = await engine.tenant(upload=50)
    other = await engine.tenant(upload=50)
    await engine.seed(tenant, 20)
    await engine.seed(other, 15)
    await engine.uploader(tenant).upload()
    assert await engine.status_counts(other) == {"pending:false": 15}
    assert engine.server.rows(other) == 0


async def test_budget_max_batches(engine: Engine) -> None:
    tenant = await engine.tenant(upload=4)
    await engine.seed(tenant, 20)
    report = await engine.uploader(tenant, max_batches=2).upload()
    assert (report.batches, report.readings_sent, report.error) == (2, 8, None)
    assert await engine.status_counts(tenant) == {"synchronized:true": 8, "pending:false": 12}
    assert engine.server.stats()["readings_received"] == 8
    # The next cycle goes on with the oldest remaining readings.
    report = await engine.uploader(tenant).upload()
    assert report.readings_sent == 12
    assert await engine.status_counts(tenant) == {"synchronized:true": 20}


async def test_oldest_first(engine: Engine) -> None:
    tenant = await engine.tenant(upload=5)
    seeded = await engine.seed(tenant, 12)
    await engine.uploader(tenant, max_batches=1).upload()
    order = seeded.sort_by([("created_at", "ascending")]).column("meter_reading_id")
    oldest = {str(uuid.UUID(bytes=b)) for b in order.to_pylist()[:5]}
    assert await engine.local_ids(tenant, "is_synchronized") == oldest


async def test_second_uploader_on_the_same_tenant_is_busy(engine: Engine) -> None:
    tenant = await engine.tenant(upload=5)
    await engine.seed(tenant, 10)
    async with await SyncDatabase.connect(engine.dsn) as other:
        assert await other.try_lock_tenant(tenant, "upload")
        with pytest.raises(TenantBusyError, match=f"tenant {tenant}"):
            await engine.uploader(tenant).upload()
        # Downloading the same tenant is a different lock.
        assert await engine.db.try_lock_tenant(tenant, "download")
        await engine.db.unlock_tenant(tenant, "download")
        await other.unlock_tenant(tenant, "upload")
    assert engine.server.stats()["batches_received"] == 0
    assert await engine.status_counts(tenant) == {"pending:false": 10}
    report = await engine.uploader(tenant).upload()  # the lock was released: it runs now
    assert report.readings_sent == 10


async def test_lock_released_after_an_error(engine: Engine) -> None:
    tenant = await engine.tenant(upload=5)
    await engine.seed(tenant, 3)
    engine.server.register_tenant(tenant, "another-key-entirely")  # our key is now refused
    with pytest.raises(Exception, match="refused the API key"):
        await engine.uploader(tenant).upload()
    async with await SyncDatabase.connect(engine.dsn) as other:
        assert await other.try_lock_tenant(tenant, "upload")
        await other.unlock_tenant(tenant, "upload")


def test_idempotency_key_is_stable_and_order_free() -> None:
    ids = [bytes([i]) * 16 for i in range(5)]
    a = idempotency_key(3, pa.array(ids, type=pa.binary(16)))
    b = idempotency_key(3, pa.array(list(reversed(ids)), type=pa.binary(16)))
    c = idempotency_key(3, pa.array(ids[:4], type=pa.binary(16)))
    d = idempotency_key(4, pa.array(ids, type=pa.binary(16)))
    assert a == b
    assert len({a, c, d}) == 3
    assert a.isascii() and " " not in a
    # Sliced arrays (offsets) and the uuid extension type give the same key, and the digest is
    # the one of the sorted id bytes (what earlier versions sent: keys stay stable on upgrade).
    padded = pa.array([b"\xff" * 16, *reversed(ids)], type=pa.binary(16)).slice(1)
    assert idempotency_key(3, padded) == a
    if hasattr(pa, "uuid"):
        ext = pa.ExtensionArray.from_storage(pa.uuid(), pa.array(ids, type=pa.binary(16)))
        assert idempotency_key(3, ext) == a
    assert a == f"ms1-3-{hashlib.sha256(b''.join(sorted(ids))).hexdigest()[:40]}"


async def test_logs_each_batch_at_debug_and_the_cycle_at_info(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    tenant = await engine.tenant(upload=3)
    await engine.seed(tenant, 7)
    caplog.set_level(logging.DEBUG, logger="metersync.engine.upload")
    report = await engine.uploader(tenant).upload()
    batch_lines = [r for r in caplog.records if "upload batch" in r.getMessage()]
    assert len(batch_lines) == 3
    assert all(r.levelno == logging.DEBUG for r in batch_lines)
    cycle = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(cycle) == 1
    text = cycle[0].getMessage()
    assert "3 batches" in text and "7 readings" in text
    assert f"{report.statements} statements" in text
    assert engine.keys[tenant] not in caplog.text


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="max_retries"):
        MeterReadingUploadManager(None, None, None, tenant_id=1, max_retries=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_batches"):
        MeterReadingUploadManager(None, None, None, tenant_id=1, max_batches=0)  # type: ignore[arg-type]


class _WatchingClient:
    """The real client, watched: records every batch's ids, the sets in flight at once, and
    the ids of every batch the Client System answered successfully.

    Raises at once if a POST starts carrying an id that another POST in flight carries.
    ``on_post(n)`` runs just before the n-th POST (1-based) goes out.
    """

    def __init__(self, client: ClientSystemApiClient, on_post: Any = None) -> None:
        self._client = client
        self._on_post = on_post
        self.batches: list[set[str]] = []
        self.in_flight: list[set[str]] = []
        self.most_in_flight = 0
        self.answered: set[str] = set()

    async def post_batch(self, readings_json: bytes, count: int, *, idempotency_key: str) -> Any:
        ids = {row["meter_reading_id"] for row in orjson.loads(readings_json)}
        assert len(ids) == count
        for other in self.in_flight:
            assert not ids & other, "a reading is in two batches in flight at once"
        self.batches.append(ids)
        if self._on_post is not None:
            self._on_post(len(self.batches))
        self.in_flight.append(ids)
        self.most_in_flight = max(self.most_in_flight, len(self.in_flight))
        try:
            result = await self._client.post_batch(
                readings_json, count, idempotency_key=idempotency_key
            )
        finally:
            self.in_flight.remove(ids)
        self.answered |= ids
        return result


@pytest.mark.parametrize("in_flight", [2, 3])
async def test_concurrent_posts_deliver_each_reading_once(engine: Engine, in_flight: int) -> None:
    tenant = await engine.tenant(upload=6)
    await engine.seed(tenant, 80)
    # Slow answers make sure the window really fills up.
    engine.server.set_faults("delay=0.03")
    client = _WatchingClient(engine.client(tenant))
    report = await engine.uploader(tenant, client=client, max_in_flight=in_flight).upload()
    assert report.error is None
    assert client.most_in_flight == in_flight
    assert (report.batches, report.readings_sent, report.confirmed) == (14, 80, 80)
    assert (report.inserted, report.duplicates, report.rejected) == (80, 0, 0)
    # Each reading in exactly one batch, each batch received once, all of them marked.
    sent = [i for ids in client.batches for i in ids]
    assert len(sent) == len(set(sent)) == 80
    stats = engine.server.stats()
    assert (stats["batches_received"], stats["readings_received"]) == (14, 80)
    assert await engine.status_counts(tenant) == {"synchronized:true": 80}
    assert await engine.server_ids(tenant) == await engine.local_ids(tenant) == set(sent)
    # Still one fetch and one mark per batch (+ the empty fetch, lock/unlock, the cache).
    assert report.statements <= 2 * 14 + 10


@pytest.mark.parametrize("in_flight", [1, 2, 3])
async def test_budget_bounds_batches_started_with_concurrent_posts(
    engine: Engine, in_flight: int
) -> None:
    tenant = await engine.tenant(upload=4)
    await engine.seed(tenant, 40)
    client = _WatchingClient(engine.client(tenant))
    uploader = engine.uploader(tenant, client=client, max_batches=3, max_in_flight=in_flight)
    report = await uploader.upload()
    assert (report.batches, report.readings_sent, report.error) == (3, 12, None)
    assert len(client.batches) == 3
    assert await engine.status_counts(tenant) == {"synchronized:true": 12, "pending:false": 28}


@pytest.mark.parametrize("in_flight", [2, 3])
async def test_stop_request_settles_and_marks_the_flights_in_the_air(
    engine: Engine, in_flight: int
) -> None:
    tenant = await engine.tenant(upload=5)
    await engine.seed(tenant, 60)
    engine.server.set_faults("delay=0.03")
    uploader: MeterReadingUploadManager

    def stop_at(n: int) -> None:
        if n == 2:
            uploader.request_stop()

    client = _WatchingClient(engine.client(tenant), on_post=stop_at)
    uploader = engine.uploader(tenant, client=client, max_in_flight=in_flight)
    report = await uploader.upload()
    assert report.error is None
    # The POST during which the stop came still goes out; nothing starts after it.
    assert len(client.batches) == report.batches == 2
    sent = client.batches[0] | client.batches[1]
    assert await engine.local_ids(tenant, "is_synchronized") == sent
    assert await engine.status_counts(tenant) == {"synchronized:true": 10, "pending:false": 50}


@pytest.mark.parametrize("in_flight", [2, 3])
async def test_failure_mid_cycle_marks_only_confirmed_readings(
    engine: Engine, in_flight: int
) -> None:
    tenant = await engine.tenant(upload=5)
    await engine.seed(tenant, 60)
    engine.server.set_faults("delay=0.02")

    def fail_from(n: int) -> None:
        if n == 4:  # the 4th POST and everything after it fail beyond the client's retries
            engine.server.set_faults("fail=1000:503")

    client = _WatchingClient(engine.client(tenant), on_post=fail_from)
    report = await engine.uploader(tenant, client=client, max_in_flight=in_flight).upload()
    assert report.error is not None and "failed as a whole" in report.error
    synced = await engine.local_ids(tenant, "is_synchronized")
    failed_batch = client.batches[3]
    # Marked: only readings whose batch the Client System answered (and so stored).
    assert synced <= client.answered
    assert synced <= await engine.server_ids(tenant)
    assert not synced & failed_batch
    assert client.batches[0] <= synced  # the first batch was answered before the fault
    assert report.confirmed == report.inserted == len(synced)
    assert await engine.status_counts(tenant) == {
        "synchronized:true": len(synced),
        "pending:false": 60 - len(synced),
    }
    # The next cycle sends the rest; whatever the server stored unmarked counts as duplicates.
    engine.server.clear_faults()
    again = await engine.uploader(tenant, max_in_flight=in_flight).upload()
    assert again.error is None
    assert again.confirmed == 60 - len(synced)
    assert await engine.status_counts(tenant) == {"synchronized:true": 60}
    assert await engine.server_ids(tenant) == await engine.local_ids(tenant)


@pytest.mark.parametrize("in_flight", [2, 3])
async def test_rejections_are_excluded_within_the_cycle(engine: Engine, in_flight: int) -> None:
    tenant = await engine.tenant(upload=7)
    seeded = await engine.seed(tenant, 50, meters=5)
    meter = seeded.column("meter_id")[0].as_py()
    bad = sum(1 for m in seeded.column("meter_id").to_pylist() if m == meter)
    assert 0 < bad < 50
    engine.server.set_faults(f"reject=meter_id:{meter},delay=0.02")
    client = _WatchingClient(engine.client(tenant))
    report = await engine.uploader(
        tenant, client=client, max_retries=3, max_in_flight=in_flight
    ).upload()
    assert report.error is None
    assert (report.rejected, report.confirmed, report.quarantined) == (bad, 50 - bad, 0)
    # Every reading sent exactly once in the cycle, rejected ones included.
    sent = [i for ids in client.batches for i in ids]
    assert len(sent) == len(set(sent)) == 50
    assert engine.server.stats()["readings_received"] == 50
    assert await engine.status_counts(tenant) == {
        "synchronized:true": 50 - bad,
        "failed:false": bad,
    }


def test_max_in_flight_is_checked() -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_in_flight"):
            MeterReadingUploadManager(None, None, None, tenant_id=1, max_in_flight=bad)  # type: ignore[arg-type]


# -- the companion connection (the next batch is fetched on it while the last one is marked) ---


async def test_companion_reads_only_while_the_holder_holds_the_lock(engine: Engine) -> None:
    """A companion's queue fetch runs only while its holder's session holds the tenant's
    upload lock (PostgreSQL checks it in the same statement): not before the lock is taken,
    and not after the holder's session ended — which also fences the holder."""
    tenant = await engine.tenant(upload=10)
    await engine.seed(tenant, 12)
    async with await SyncDatabase.connect(engine.dsn) as holder:
        await holder.layout()
        companion = await holder.companion("upload")
        assert companion is not None
        try:
            with pytest.raises(TenantLockLostError):  # the holder never took the lock
                await companion.fetch_unsynchronized(tenant, 10)
            async with holder.tenant_lock(tenant, "upload"):
                batch = await companion.fetch_unsynchronized(tenant, 10)
                assert batch.num_rows == 10
                with psycopg.connect(engine.dsn, autocommit=True) as admin:
                    admin.execute(
                        "SELECT pg_terminate_backend(%s)", (holder._conn.info.backend_pid,)
                    )
                    while admin.execute(
                        "SELECT 1 FROM pg_stat_activity WHERE pid = %s",
                        (holder._conn.info.backend_pid,),
                    ).fetchone():
                        pass
                with pytest.raises(TenantLockLostError):
                    await companion.fetch_unsynchronized(tenant, 10)
                # The holder learned it from its companion: fenced before any statement.
                statements = holder.statements
                with pytest.raises(TenantLockLostError):
                    await holder.mark_synchronized(tenant, batch.column("meter_reading_id"))
                assert holder.statements == statements
        finally:
            await companion.close()
    assert await engine.status_counts(tenant) == {"pending:false": 12}


@pytest.mark.parametrize("in_flight", [1, 2])
async def test_prefetch_on_the_companion_delivers_each_reading_once(
    engine: Engine, in_flight: int
) -> None:
    """With more than one batch the next batch is read on a second session while the last
    one is marked on the lock's session; every reading goes once, its statements are counted
    (a fetch per batch, at most one mark per batch, lock/unlock, the final empty fetch) and the
    second session is closed."""
    tenant = await engine.tenant(upload=10)
    await engine.seed(tenant, 50)
    pids: set[int] = set()
    classes = (SyncDatabase, CompanionReader)
    real = [cls.fetch_unsynchronized for cls in classes]

    def spying(fetch: Any) -> Any:
        async def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
            pids.add(int(self._conn.info.backend_pid))
            return await fetch(self, *args, **kwargs)

        return spy

    for cls, fetch in zip(classes, real, strict=True):
        cls.fetch_unsynchronized = spying(fetch)  # type: ignore[method-assign]
    try:
        cache = TenantCache(engine.db)
        await cache.get(tenant)
        report = await engine.uploader(tenant, cache=cache, max_in_flight=in_flight).upload()
    finally:
        for cls, fetch in zip(classes, real, strict=True):
            cls.fetch_unsynchronized = fetch  # type: ignore[method-assign]
    assert report.error is None and report.confirmed == 50
    assert len(pids) == 2  # the first fetch on the lock's session, the rest on the companion
    assert 5 + 1 + 2 + 1 <= report.statements <= 2 * 5 + 2 + 1
    assert await engine.status_counts(tenant) == {"synchronized:true": 50}
    assert sorted(await engine.server_ids(tenant)) == sorted(await engine.local_ids(tenant))
    assert engine.server.stats()["readings_received"] == 50
    with psycopg.connect(engine.dsn) as conn:
        alive = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (list(pids),)
        ).fetchone()
    assert alive is not None and alive[0] == 1  # only the engine's own session is left

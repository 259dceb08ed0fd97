"""Faults of the Client System and of concurrency: no reading lost, none marked unconfirmed.

Every test drives the real upload/download managers against the real reference server with
its fault injection, then checks both sides: what the sync database marked and what the
server holds.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys

import pytest

from fix_engine import Engine
from metersync.engine.tenant_cache import TenantCache
from metersync.errors import AuthError, MalformedPageError, PayloadTooLargeError, TenantBusyError
from metersync.server import ServerThread
from metersync.store.database import SyncDatabase

PENDING_UNTOUCHED_SQL = (
    "SELECT count(*) FROM meter_reading WHERE tenant_id = %s AND NOT is_synchronized "
    "AND sync_status = 'pending' AND retry_count = 0 AND last_error IS NULL"
)


async def _untouched(engine: Engine, tenant: int) -> int:
    return int(await engine.scalar(PENDING_UNTOUCHED_SQL, tenant))


async def test_5xx_burst_within_retries_succeeds(engine: Engine) -> None:
    tenant = await engine.tenant(upload=10)
    await engine.seed(tenant, 25)
    engine.server.set_faults("fail=2:503")
    report = await engine.uploader(tenant, client=engine.client(tenant, max_retries=3)).upload()
    assert report.error is None
    assert report.confirmed == 25
    stats = engine.server.stats()
    assert stats["requests_per_status"].get("503") == 2
    assert engine.server.rows(tenant) == 25
    assert await engine.status_counts(tenant) == {"synchronized:true": 25}


async def test_server_down_for_the_whole_cycle_marks_nothing(engine: Engine) -> None:
    tenant = await engine.tenant(upload=10)
    await engine.seed(tenant, 25)
    engine.server.set_faults("fail=1000:503")
    report = await engine.uploader(tenant, max_retries=1).upload()
    assert report.error is not None and "nothing marked" in report.error
    assert (report.batches, report.confirmed) == (0, 0)
    # Nothing marked, nothing counted towards quarantine (max_retries=1 would quarantine).
    assert await _untouched(engine, tenant) == 25
    assert engine.server.rows(tenant) == 0
    engine.server.clear_faults()
    report = await engine.uploader(tenant, max_retries=1).upload()
    assert report.confirmed == 25
    assert await engine.status_counts(tenant) == {"synchronized:true": 25}


async def test_timeout_then_retry_succeeds(engine: Engine) -> None:
    tenant = await engine.tenant(upload=50)
    await engine.seed(tenant, 12)
    engine.server.set_faults("delay=1.5:1")  # only the first request is slow
    client = engine.client(tenant, read_timeout=0.3, max_retries=2)
    report = await engine.uploader(tenant, client=client).upload()
    assert report.error is None
    assert report.confirmed == 12
    assert engine.server.rows(tenant) == 12
    assert engine.server.stats()["faults_injected"]


async def test_timeouts_for_the_whole_cycle_mark_nothing(engine: Engine) -> None:
    tenant = await engine.tenant(upload=50)
    await engine.seed(tenant, 12)
    engine.server.set_faults("delay=1.0")
    client = engine.client(tenant, read_timeout=0.2, max_retries=1)
    report = await engine.uploader(tenant, client=client).upload()
    assert report.error is not None
    assert await _untouched(engine, tenant) == 12


async def test_429_with_retry_after_is_honoured(engine: Engine) -> None:
    tenant = await engine.tenant(upload=50)
    await engine.seed(tenant, 12)
    engine.server.set_faults("throttle=2:0.2")
    # backoff_max above Retry-After: the client honours Retry-After up to backoff_max.
    client = engine.client(tenant, max_retries=3, backoff_max=5.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    report = await engine.uploader(tenant, client=client).upload()
    waited = loop.time() - started
    assert report.confirmed == 12
    assert engine.server.stats()["requests_per_status"].get("429") == 2
    # Two Retry-After waits of 0.2 s happened (a lower bound: not a performance assertion).
    assert waited >= 0.4


async def test_lost_response_after_commit_is_marked_next_cycle_without_duplicates(
    engine: Engine,
) -> None:
    tenant = await engine.tenant(upload=100)
    await engine.seed(tenant, 20)
    engine.server.set_faults("drop_after_commit=1")
    client = engine.client(tenant, max_retries=0)
    report = await engine.uploader(tenant, client=client).upload()
    assert report.error is not None
    # The server committed, we never heard: nothing marked.
    assert engine.server.rows(tenant) == 20
    assert await _untouched(engine, tenant) == 20
    report = await engine.uploader(tenant).upload()
    assert report.error is None
    assert (report.inserted, report.duplicates) == (0, 20)
    assert engine.server.rows(tenant) == 20
    assert await engine.status_counts(tenant) == {"synchronized:true": 20}
    assert await engine.server_ids(tenant) == await engine.local_ids(tenant)


async def test_lost_response_retried_in_the_same_cycle_with_the_same_key(engine: Engine) -> None:
    tenant = await engine.tenant(upload=100)
    await engine.seed(tenant, 20)
    engine.server.set_faults("drop_after_commit=1")
    report = await engine.uploader(tenant, client=engine.client(tenant, max_retries=2)).upload()
    assert report.error is None
    assert (report.inserted, report.duplicates, report.confirmed) == (0, 20, 20)
    stats = engine.server.stats()
    keys = [b["idempotency_key"] for b in stats["batch_requests"]]
    assert len(keys) == 2 and keys[0] == keys[1]
    assert stats["idempotency_replays"] == 1
    assert engine.server.rows(tenant) == 20


async def test_401_stops_the_cycle_and_touches_nothing(engine: Engine) -> None:
    tenant = await engine.tenant(upload=5)
    await engine.seed(tenant, 12)
    engine.server.register_tenant(tenant, "a-different-key")
    uploader = engine.uploader(tenant)
    with pytest.raises(AuthError, match=f"tenant {tenant}.*refused the API key"):
        await uploader.upload()
    assert engine.keys[tenant] not in str(uploader.report)
    # Not retried (a profile negotiation's GET /health may precede it: only batches count).
    assert [b["status"] for b in engine.server.stats()["batch_requests"]] == ["401"]
    assert await _untouched(engine, tenant) == 12


async def test_413_tells_to_lower_the_batch_size(engine: Engine) -> None:
    tenant = await engine.tenant(upload=8)
    await engine.seed(tenant, 8)
    with ServerThread(engine.server.dsn, max_batch=5) as small:
        client = engine.client(tenant)
        client_small = type(client)(small.base_url, engine.keys[tenant], max_retries=1)
        engine.clients.append(client_small)
        with pytest.raises(PayloadTooLargeError, match="lower the tenant's upload_batch_size"):
            await engine.uploader(tenant, client=client_small).upload()
    assert await _untouched(engine, tenant) == 8


async def test_inconsistent_counts_mark_nothing(engine: Engine) -> None:
    tenant = await engine.tenant(upload=50)
    await engine.seed(tenant, 10)
    engine.server.set_faults("miscount=1")
    report = await engine.uploader(tenant).upload()
    assert report.error is not None
    assert await _untouched(engine, tenant) == 10
    report = await engine.uploader(tenant).upload()  # inserted before: duplicates now
    assert (report.confirmed, report.duplicates) == (10, 10)


async def test_legacy_answer_marks_all_when_the_count_matches(engine: Engine) -> None:
    tenant = await engine.tenant(upload=50)
    await engine.seed(tenant, 10)
    engine.server.set_faults("legacy=1")
    report = await engine.uploader(tenant).upload()
    assert report.error is None
    assert report.confirmed == 10
    assert await engine.status_counts(tenant) == {"synchronized:true": 10}


async def test_rejections_quarantine_and_requeue(engine: Engine) -> None:
    tenant = await engine.tenant(upload=7)
    seeded = await engine.seed(tenant, 40, meters=5)
    meter = seeded.column("meter_id")[0].as_py()
    bad = sum(1 for m in seeded.column("meter_id").to_pylist() if m == meter)
    assert 0 < bad < 40
    engine.server.set_faults(f"reject=meter_id:{meter}")

    first = await engine.uploader(tenant, max_retries=2).upload()
    assert first.error is None
    assert (first.rejected, first.confirmed, first.quarantined) == (bad, 40 - bad, 0)
    # A rejected reading is not sent again within the same cycle.
    assert engine.server.stats()["readings_received"] == 40
    rows = await engine.rows(
        "SELECT sync_status, retry_count, last_error FROM meter_reading "
        "WHERE tenant_id = %s AND NOT is_synchronized",
        tenant,
    )
    assert len(rows) == bad
    assert all(s == "failed" and n == 1 and e for s, n, e in rows)

    second = await engine.uploader(tenant, max_retries=2).upload()
    assert (second.readings_sent, second.rejected, second.quarantined) == (bad, bad, bad)
    # Quarantined: skipped by the queue, the rest is not blocked.
    third = await engine.uploader(tenant, max_retries=2).upload()
    assert third.readings_sent == 0
    status = await engine.db.queue_status(tenant, max_retries=2)
    assert _field(status, "quarantined") == bad

    engine.server.clear_faults()
    assert await engine.db.requeue(tenant) == bad
    fourth = await engine.uploader(tenant, max_retries=2).upload()
    assert fourth.confirmed == bad
    assert await engine.status_counts(tenant) == {"synchronized:true": 40}
    assert engine.server.rows(tenant) == 40


def _field(status: object, name: str) -> int:
    if isinstance(status, list):
        assert len(status) == 1
        status = status[0]
    if isinstance(status, dict):
        return int(status[name])
    return int(getattr(status, name))


async def test_marking_failure_resends_next_cycle(engine: Engine) -> None:
    """The POST succeeded, the UPDATE did not happen: next cycle re-sends, the server dedups."""
    tenant = await engine.tenant(upload=6)
    await engine.seed(tenant, 15)
    script = (
        "import asyncio, json, sys\n"
        "from metersync.store.database import SyncDatabase\n"
        "from metersync.remote.client import ClientSystemApiClient\n"
        "from metersync.engine.tenant_cache import TenantCache\n"
        "from metersync.engine.upload import MeterReadingUploadManager\n"
        "async def main():\n"
        "    async with await SyncDatabase.connect(sys.argv[1]) as db:\n"
        "        cache = TenantCache(db)\n"
        "        key = (await cache.get(int(sys.argv[3]))).api_key\n"
        "        async with ClientSystemApiClient(sys.argv[2], key) as client:\n"
        "            m = MeterReadingUploadManager(db, client, cache, tenant_id=int(sys.argv[3]))\n"
        "            r = await m.upload()\n"
        "            print(json.dumps({'error': r.error, 'confirmed': r.confirmed}))\n"
        "asyncio.run(main())\n"
    )
    env = dict(os.environ, METERSYNC_FAILPOINTS="upload.before_mark=2:raise")
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", script, engine.dsn, engine.server.base_url, str(tenant)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    # Batch 3 may have been confirmed while batch 2 waited for its mark: then one UPDATE
    # carried both (engine/marks.py), and its failure names both.
    assert out["error"] and re.search(r"marking (batch 2|batches 2, 3) failed", out["error"])
    assert out["confirmed"] == 6  # batch 1 marked, batch 2 sent but not marked
    # Batch 3 may have been on the wire (overlap) when marking 2 failed: cancelled, unmarked.
    assert engine.server.rows(tenant) in (12, 15)
    assert await engine.status_counts(tenant) == {"synchronized:true": 6, "pending:false": 9}
    report = await engine.uploader(tenant).upload()
    assert report.duplicates >= 6
    assert report.duplicates + report.inserted == 9
    assert engine.server.rows(tenant) == 15
    assert await engine.status_counts(tenant) == {"synchronized:true": 15}


async def test_two_concurrent_uploaders_never_send_a_reading_twice(engine: Engine) -> None:
    tenant = await engine.tenant(upload=5)
    await engine.seed(tenant, 30)
    engine.server.set_faults("delay=0.1")  # keep the first uploader busy long enough
    async with await SyncDatabase.connect(engine.dsn) as db2:
        first = engine.uploader(tenant)
        second = engine.uploader(tenant, db=db2, cache=TenantCache(db2))
        results = await asyncio.gather(first.upload(), second.upload(), return_exceptions=True)
    busy = [r for r in results if isinstance(r, TenantBusyError)]
    done = [r for r in results if not isinstance(r, BaseException)]
    assert len(busy) == 1 and len(done) == 1, results
    assert done[0].confirmed == 30
    stats = engine.server.stats()
    assert stats["readings_received"] == 30
    assert stats["duplicates_seen"] == 0
    assert engine.server.rows(tenant) == 30


async def test_two_uploaders_taking_turns_share_the_queue(engine: Engine) -> None:
    """Budgeted cycles from two connections alternate; each reading goes up exactly once."""
    tenant = await engine.tenant(upload=4)
    await engine.seed(tenant, 24)
    async with await SyncDatabase.connect(engine.dsn) as db2:
        a = engine.uploader(tenant, max_batches=1)
        b = engine.uploader(tenant, db=db2, cache=TenantCache(db2), max_batches=1)
        for _ in range(3):
            await a.upload()
            await b.upload()
    stats = engine.server.stats()
    assert stats["readings_received"] == 24
    assert stats["duplicates_seen"] == 0
    assert await engine.status_counts(tenant) == {"synchronized:true": 24}


async def _backfill_fixture(engine: Engine, n: int) -> int:
    tenant = await engine.tenant(upload=5, download=10)
    await engine.seed(tenant, n)
    await engine.uploader(tenant).upload()
    await engine.scalar("DELETE FROM meter_reading WHERE tenant_id = %s RETURNING 1", tenant)
    return tenant


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("malformed_page=1", "not a UUID"),
        ("oversize_page=1", "but at most 10 were asked for"),
        ("garbage_page=1", "readings"),
    ],
)
async def test_bad_download_page_writes_nothing(engine: Engine, fault: str, message: str) -> None:
    tenant = await _backfill_fixture(engine, 25)
    first = await engine.downloader(tenant, max_pages=1).download()  # a good page: cursor set
    cursor = await engine.db.get_download_cursor(tenant)
    assert first.inserted == 10 and cursor is not None
    engine.server.set_faults(fault)
    with pytest.raises(MalformedPageError, match=message):
        await engine.downloader(tenant).download()
    assert await engine.db.get_download_cursor(tenant) == cursor
    assert await engine.status_counts(tenant) == {"synchronized:true": 10}
    # The fault was one page: the next cycle goes on from the same cursor.
    report = await engine.downloader(tenant).download()
    assert report.inserted == 15
    assert await engine.status_counts(tenant) == {"synchronized:true": 25}


async def test_download_with_server_down_keeps_the_cursor(engine: Engine) -> None:
    tenant = await _backfill_fixture(engine, 12)
    engine.server.set_faults("fail=100:503,path=/api/sync/readings")
    report = await engine.downloader(tenant, client=engine.client(tenant, max_retries=1)).download()
    assert report.error is not None and report.pages == 0
    assert await engine.db.get_download_cursor(tenant) is None
    assert await engine.status_counts(tenant) == {}

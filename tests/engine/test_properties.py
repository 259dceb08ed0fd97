"""Properties P1–P7 of the batch-size design, as hypothesis tests on the real engine.

One migrated sync database per module and the session's reference server; every example uses
fresh tenants, so examples never see each other's readings. Examples stay small (a few dozen
readings) so that 100 of each run in well under two minutes.
"""

from __future__ import annotations

import math
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fix_engine import Engine, RecordingTransport
from metersync.batch_sizes import (
    DEFAULT_DOWNLOAD_BATCH_SIZE,
    DEFAULT_UPLOAD_BATCH_SIZE,
    MAX_BATCH_SIZE,
)
from metersync.engine.tenant_cache import TenantCache

PROPERTY = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SIZES = st.integers(min_value=1, max_value=MAX_BATCH_SIZE)
SMALL = st.integers(min_value=2, max_value=10)  # 1 is covered by test_p5_size_one


# P1 ---------------------------------------------------------------------------------------------
@PROPERTY
@given(upload=SIZES, download=SIZES)
async def test_p1_loaded_sizes_equal_stored(engine: Engine, upload: int, download: int) -> None:
    tenant = await engine.tenant(upload=upload, download=download, server=False)
    batch = (await TenantCache(engine.db).get(tenant)).batch
    assert (batch.upload_batch_size, batch.download_batch_size) == (upload, download)
    assert batch.source == "tenant"


# P2 ---------------------------------------------------------------------------------------------
INVALID = st.one_of(st.integers(max_value=0), st.integers(min_value=MAX_BATCH_SIZE + 1))


@PROPERTY
@given(
    case=st.sampled_from(["missing", "unset", "bad_upload", "bad_download", "both_bad"]),
    bad=INVALID.filter(lambda v: -(2**31) <= v < 2**31),
    good=SIZES,
)
async def test_p2_defaults_when_unset_or_invalid(
    engine: Engine, case: str, bad: int, good: int
) -> None:
    if case == "missing":
        tenant = 900_000_000 + good  # no tenant row at all
        expected = (DEFAULT_UPLOAD_BATCH_SIZE, DEFAULT_DOWNLOAD_BATCH_SIZE)
    elif case == "unset":
        tenant = await engine.tenant(server=False)  # column defaults
        expected = (DEFAULT_UPLOAD_BATCH_SIZE, DEFAULT_DOWNLOAD_BATCH_SIZE)
    else:
        tenant = await engine.tenant(upload=good, download=good, server=False)
        up = bad if case in ("bad_upload", "both_bad") else good
        down = bad if case in ("bad_download", "both_bad") else good
        # Stored by hand (as an old tool or a manual UPDATE might): the adapter refuses them.
        await engine.scalar(
            "UPDATE tenant SET upload_batch_size = %s, download_batch_size = %s "
            "WHERE tenant_id = %s RETURNING 1",
            up,
            down,
            tenant,
        )
        expected = (
            DEFAULT_UPLOAD_BATCH_SIZE if up == bad else good,
            DEFAULT_DOWNLOAD_BATCH_SIZE if down == bad else good,
        )
    batch = (await TenantCache(engine.db).get(tenant)).batch
    assert (batch.upload_batch_size, batch.download_batch_size) == expected
    assert batch.source != "tenant" or case == "unset"


# P3 ---------------------------------------------------------------------------------------------
@PROPERTY
@given(n=st.integers(min_value=0, max_value=12), size=SMALL, overlap=st.booleans())
async def test_p3_success_sets_both_flags(engine: Engine, n: int, size: int, overlap: bool) -> None:
    tenant = await engine.tenant(upload=size)
    await engine.seed(tenant, n)
    async with engine.client_for(tenant) as client:
        report = await engine.uploader(tenant, client=client, overlap=overlap).upload()
    assert report.error is None
    assert report.confirmed == n
    flags = await engine.rows(
        "SELECT is_synchronized, sync_status, count(*) FROM meter_reading WHERE tenant_id = %s "
        "GROUP BY 1, 2",
        tenant,
    )
    assert flags == ([(True, "synchronized", n)] if n else [])
    assert await engine.server_ids(tenant) == await engine.local_ids(tenant)


# P4 ---------------------------------------------------------------------------------------------
FAULTS = st.sampled_from(["fail=100:503", "fail=100:500", "miscount=100", "drop_after_commit=100"])


@PROPERTY
@given(n=st.integers(min_value=1, max_value=12), size=SMALL, fault=FAULTS)
async def test_p4_failed_upload_leaves_flags_untouched(
    engine: Engine, n: int, size: int, fault: str
) -> None:
    tenant = await engine.tenant(upload=size)
    await engine.seed(tenant, n)
    engine.server.set_faults(fault)
    try:
        async with engine.client_for(tenant, max_retries=0) as client:
            report = await engine.uploader(tenant, client=client).upload()
    finally:
        engine.server.clear_faults()
    assert report.error is not None
    untouched = await engine.scalar(
        "SELECT count(*) FROM meter_reading WHERE tenant_id = %s AND NOT is_synchronized "
        "AND sync_status = 'pending' AND retry_count = 0",
        tenant,
    )
    assert untouched == n


# P5 ---------------------------------------------------------------------------------------------
@PROPERTY
@given(n=st.integers(min_value=0, max_value=12), upload=SMALL, download=SMALL)
async def test_p5_no_operation_exceeds_its_configured_size(
    engine: Engine, n: int, upload: int, download: int
) -> None:
    tenant = await engine.tenant(upload=upload, download=download)
    await engine.seed(tenant, n)
    seen = RecordingTransport()
    async with engine.client_for(tenant, transport=seen) as client:
        report = await engine.uploader(tenant, client=client).upload()
        assert report.confirmed == n
        assert sum(seen.posted) == n
        assert all(1 <= c <= upload for c in seen.posted)
        assert len(seen.posted) == math.ceil(n / upload)
        # Wipe locally, download back: pages ask ≤ download, COPY chunks hold ≤ upload rows.
        await engine.scalar("DELETE FROM meter_reading WHERE tenant_id = %s", tenant)
        down = await engine.downloader(tenant, client=client).download()
    assert down.inserted == n
    assert all(limit == download and got <= download for limit, got in seen.pages)
    page_sizes = [got for _, got in seen.pages if got > 0]
    assert down.chunks == sum(math.ceil(p / upload) for p in page_sizes)


# P6 ---------------------------------------------------------------------------------------------
@PROPERTY
@given(n=st.integers(min_value=1, max_value=25), pick=st.data())
async def test_p6_one_statement_per_status_update(engine: Engine, n: int, pick: Any) -> None:
    tenant = await engine.tenant(server=False)
    seeded = await engine.seed(tenant, n)
    ids = seeded.column("meter_reading_id")
    k = pick.draw(st.integers(min_value=1, max_value=n), label="marked")
    before = engine.db.statements
    marked = await engine.db.mark_synchronized(tenant, ids.slice(0, k))
    assert engine.db.statements - before == 1
    assert marked == k
    rest = [str(uuid.UUID(bytes=b)) for b in ids.slice(k).to_pylist()]
    if rest:
        before = engine.db.statements
        await engine.db.mark_rejected(tenant, rest, ["bad"] * len(rest), 5)
        assert engine.db.statements - before == 1
    counts = await engine.status_counts(tenant)
    assert counts.get("synchronized:true") == k
    assert counts.get("failed:false", 0) == n - k


@PROPERTY
@given(n=st.integers(min_value=0, max_value=12), size=SMALL)
async def test_p6_upload_cycle_issues_at_most_one_mark_per_batch(
    engine: Engine, n: int, size: int
) -> None:
    tenant = await engine.tenant(upload=size)
    await engine.seed(tenant, n)
    cache = TenantCache(engine.db)
    await cache.get(tenant)  # warm: the cycle's statements are its own
    marks: list[int] = []
    real_mark = engine.db.mark_synchronized

    async def counting_mark(tenant_id: int, ids: Any) -> int:
        marks.append(len(ids))
        return await real_mark(tenant_id, ids)

    engine.db.mark_synchronized = counting_mark  # type: ignore[method-assign]
    try:
        async with engine.client_for(tenant) as client:
            report = await engine.uploader(tenant, cache=cache, client=client).upload()
    finally:
        del engine.db.mark_synchronized
    batches = math.ceil(n / size)
    assert report.batches == batches
    # Per batch one fetch and at most one UPDATE (batches confirmed while a mark runs are
    # marked together by the next one), every reading in exactly one; plus lock and unlock,
    # and a final empty fetch only when the last batch was full.
    assert sum(marks) == n and all(marks)
    assert (1 if batches else 0) <= len(marks) <= batches
    empty_fetch = 1 if n % size == 0 else 0
    assert report.statements == batches + len(marks) + 2 + empty_fetch
    assert await engine.status_counts(tenant) == ({"synchronized:true": n} if n else {})


# P7 ---------------------------------------------------------------------------------------------
@PROPERTY
@given(first=SMALL, second=SMALL)
async def test_p7_sizes_come_from_the_tenant_cache(engine: Engine, first: int, second: int) -> None:
    tenant = await engine.tenant(upload=first)
    cache = TenantCache(engine.db, ttl_seconds=3600)
    assert (await cache.get(tenant)).batch.upload_batch_size == first  # cached now
    await engine.seed(tenant, first + 6)
    # The row changes; the cache still serves the old size until invalidated.
    await engine.db.set_tenant_batch_sizes(tenant, upload=second)
    seen = RecordingTransport()
    async with engine.client_for(tenant, transport=seen) as client:
        report = await engine.uploader(tenant, cache=cache, client=client, max_batches=1).upload()
        assert report.upload_batch_size == first
        assert seen.posted == [first]
        cache.invalidate(tenant)  # what set_tenant_batch_sizes' NOTIFY does in a listener
        seen.posted.clear()
        report = await engine.uploader(tenant, cache=cache, client=client).upload()
    assert report.upload_batch_size == second
    assert seen.posted[:-1] == [second] * (len(seen.posted) - 1)
    assert 1 <= seen.posted[-1] <= second and sum(seen.posted) == 6
    assert await engine.status_counts(tenant) == {"synchronized:true": first + 6}


@pytest.mark.parametrize("size", [1, MAX_BATCH_SIZE])
async def test_p1_bounds(engine: Engine, size: int) -> None:
    tenant = await engine.tenant(upload=size, download=size, server=False)
    batch = (await TenantCache(engine.db).get(tenant)).batch
    assert (batch.upload_batch_size, batch.download_batch_size) == (size, size)


async def test_p5_size_one(engine: Engine) -> None:
    tenant = await engine.tenant(upload=1, download=1)
    await engine.seed(tenant, 5)
    seen = RecordingTransport()
    async with engine.client_for(tenant, transport=seen) as client:
        assert (await engine.uploader(tenant, client=client).upload()).batches == 5
        await engine.scalar("DELETE FROM meter_reading WHERE tenant_id = %s", tenant)
        down = await engine.downloader(tenant, client=client).download()
    assert seen.posted == [1] * 5
    assert all(limit == 1 and got <= 1 for limit, got in seen.pages)
    assert (down.inserted, down.chunks) == (5, 5)

"""Upload cycle against the real sync database and the real reference server (spec §4)."""

from __future__ import annotations

import logging
import math
import uuid

import pyarrow as pa
import pytest

from fix_engine import Engine
from metersync.db import SyncDatabase
from metersync.errors import TenantBusyError
from metersync.upload import MeterReadingUploadManager, idempotency_key


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


async def test_logs_each_batch_at_debug_and_the_cycle_at_info(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    tenant = await engine.tenant(upload=3)
    await engine.seed(tenant, 7)
    caplog.set_level(logging.DEBUG, logger="metersync.upload")
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

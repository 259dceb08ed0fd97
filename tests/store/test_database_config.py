"""Batch configuration from the tenant row (spec §3) and reflection of a real table.

Stored value <= 0 or > 10000: ERROR naming tenant, column and value, that field's default.
Tenant row missing, columns missing (old schema), lookup failing: WARNING, defaults.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metersync.batch_sizes import DEFAULT_DOWNLOAD_BATCH_SIZE as DL
from metersync.batch_sizes import DEFAULT_UPLOAD_BATCH_SIZE as UL
from metersync.batch_sizes import BatchSizes
from metersync.errors import SchemaError
from metersync.store.database import SyncDatabase

_tenants = itertools.count(1)


def _sql(dsn: str, statement: str, *params: Any) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(statement, params or None)


async def _config(dsn: str, tenant_id: int) -> BatchSizes:
    async with await SyncDatabase.connect(dsn) as db:
        return await db.get_tenant_batch_config(tenant_id)


def _records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level]


@pytest.mark.parametrize("bad", [0, -1, 10_001, 2**31 - 1])
@pytest.mark.parametrize("column", ["upload_batch_size", "download_batch_size"])
async def test_stored_size_out_of_range_logs_error_and_uses_that_default(
    dsn: str, caplog: pytest.LogCaptureFixture, column: str, bad: int
) -> None:
    t = next(_tenants)
    _sql(dsn, "INSERT INTO tenant (tenant_id, name, upload_batch_size, download_batch_size) "
              "VALUES (%s, 'x', 42, 4242)", t)  # fmt: skip
    _sql(dsn, f"UPDATE tenant SET {column} = %s WHERE tenant_id = %s", bad, t)
    with caplog.at_level(logging.DEBUG, logger="metersync"):
        config = await _config(dsn, t)
    if column == "upload_batch_size":
        assert (config.upload_batch_size, config.download_batch_size) == (UL, 4242)
    else:
        assert (config.upload_batch_size, config.download_batch_size) == (42, DL)
    assert config.source == "tenant+default"
    errors = _records(caplog, logging.ERROR)
    assert len(errors) == 1 and f"tenant {t}" in errors[0]
    assert column in errors[0] and str(bad) in errors[0]
    assert not _records(caplog, logging.WARNING)


async def test_missing_tenant_warns_and_uses_defaults(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="metersync"):
        config = await _config(dsn, 987_654)
    assert config == BatchSizes(DL, UL, "default")
    warnings = _records(caplog, logging.WARNING)
    assert len(warnings) == 1 and "987654" in warnings[0]


async def test_old_schema_without_size_columns_warns_and_uses_defaults(
    fresh_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    _sql(fresh_dsn, "CREATE TABLE tenant (tenant_id bigint primary key, name text not null, "
                    "api_key text)")  # fmt: skip
    _sql(fresh_dsn, "INSERT INTO tenant VALUES (3, 'old', 'secret-key')")
    with caplog.at_level(logging.DEBUG, logger="metersync"):
        config = await _config(fresh_dsn, 3)
    assert config == BatchSizes(DL, UL, "default")
    warnings = _records(caplog, logging.WARNING)
    assert any("download_batch_size" in w for w in warnings), warnings
    assert any("upload_batch_size" in w for w in warnings), warnings
    assert all("tenant 3" in w and "migrate" in w for w in warnings)
    assert "secret-key" not in caplog.text


async def test_failed_lookup_warns_and_uses_defaults(
    fresh_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="metersync"):
        config = await _config(fresh_dsn, 5)  # no tenant table at all
    assert config == BatchSizes(DL, UL, "default")
    warnings = _records(caplog, logging.WARNING)
    assert len(warnings) == 1 and "tenant 5" in warnings[0] and "failed" in warnings[0]


INT4 = st.integers(min_value=-(2**31), max_value=2**31 - 1)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(upload=INT4 | st.integers(1, 10_000), download=INT4 | st.integers(1, 10_000))
def test_loaded_sizes_are_the_stored_ones_or_the_defaults(
    dsn: str, upload: int, download: int
) -> None:
    """P1/P2: a valid stored size is loaded as stored; an invalid one gives its default and an
    ERROR naming tenant, column and value; the other field is unaffected."""
    t = next(_tenants)
    _sql(dsn, "INSERT INTO tenant (tenant_id, name, upload_batch_size, download_batch_size) "
              "VALUES (%s, 'p', %s, %s)", t, upload, download)  # fmt: skip
    handler = _Collect()
    logger = logging.getLogger("metersync.batch_sizes")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        config = asyncio.run(_config(dsn, t))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    valid = {
        "upload_batch_size": 1 <= upload <= 10_000,
        "download_batch_size": 1 <= download <= 10_000,
    }
    assert config.upload_batch_size == (upload if valid["upload_batch_size"] else UL)
    assert config.download_batch_size == (download if valid["download_batch_size"] else DL)
    expected_source = {2: "tenant", 1: "tenant+default", 0: "default"}[sum(valid.values())]
    assert config.source == expected_source
    errors = [r.getMessage() for r in handler.records if r.levelno == logging.ERROR]
    assert len(errors) == sum(not v for v in valid.values())
    for column, stored in (("upload_batch_size", upload), ("download_batch_size", download)):
        if not valid[column]:
            assert any(f"tenant {t}" in m and f"{column}={stored}" in m for m in errors), errors


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.parametrize("pg_type", ["jsonb", "interval", "integer[]"])
async def test_unsupported_column_type_is_a_schema_error_naming_it(
    fresh_dsn: str, pg_type: str
) -> None:
    async with await SyncDatabase.connect(fresh_dsn) as db:
        await db.migrate()
        _sql(fresh_dsn, f"ALTER TABLE meter_reading ADD COLUMN odd_column {pg_type}")
        with pytest.raises(SchemaError) as info:
            await db.layout()
    assert "odd_column" in str(info.value) and pg_type in str(info.value)

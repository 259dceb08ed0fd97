"""Bad tenant rows and bad tables: clear errors, and the defaults where the spec says so (§3).

* a stored batch size <= 0 or > 10000: an ERROR naming tenant, column and value; that field
  falls back to its default, the other keeps the tenant's value;
* setting such a size (library or CLI): refused with a clear error, nothing changed;
* an unknown tenant: the sizes fall back to the defaults with a WARNING; syncing it is a clear
  error; changing it is ``UnknownTenantError``;
* a ``meter_reading`` column of a type the codec cannot carry: a ``SchemaError`` naming column
  and type before anything moves (no reading sent, none marked).
"""

from __future__ import annotations

import logging
import subprocess
import sys

import psycopg
import pytest
from _harness import REPO, World, run

from metersync.batch_sizes import DEFAULT_DOWNLOAD_BATCH_SIZE, DEFAULT_UPLOAD_BATCH_SIZE
from metersync.errors import ConfigError, SchemaError, UnknownTenantError
from metersync.store.database import SyncDatabase

TENANT = 41


def _sql(dsn: str, sql: str, *params: object) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql, params)


def _cli(world: World, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metersync", *args],
        env=world.worker_env(),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


BAD_SIZES = (0, -1, -(2**31), 10_001, 2**31 - 1)


def test_out_of_range_stored_size_falls_back_with_an_error(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    cases = [(c, bad) for c in ("upload_batch_size", "download_batch_size") for bad in BAD_SIZES]
    for i, (column, bad) in enumerate(cases):
        world.add_tenant(TENANT + 100 + i, upload=321, download=654, server=False)
        _sql(
            world.sync_dsn,
            f"UPDATE tenant SET {column} = %s WHERE tenant_id = %s",
            bad,
            TENANT + 100 + i,
        )

    async def load() -> list[object]:
        async with await SyncDatabase.connect(world.sync_dsn) as db:
            return [await db.get_tenant_batch_config(TENANT + 100 + i) for i in range(len(cases))]

    with caplog.at_level(logging.DEBUG):
        configs = run(load())
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    for i, ((column, bad), cfg) in enumerate(zip(cases, configs, strict=True)):
        tenant = TENANT + 100 + i
        if column == "upload_batch_size":
            assert (cfg.upload_batch_size, cfg.download_batch_size) == (
                DEFAULT_UPLOAD_BATCH_SIZE,
                654,
            ), (column, bad, cfg)
        else:
            assert (cfg.upload_batch_size, cfg.download_batch_size) == (
                321,
                DEFAULT_DOWNLOAD_BATCH_SIZE,
            ), (column, bad, cfg)
        assert cfg.source == "tenant+default"
        assert any(str(tenant) in m and column in m and str(bad) in m for m in errors), (
            f"no ERROR naming tenant {tenant}, {column} and {bad}: {errors}"
        )


def test_setting_an_out_of_range_size_is_refused(world: World) -> None:
    world.add_tenant(TENANT, upload=321, download=654)

    async def attempt() -> None:
        async with await SyncDatabase.connect(world.sync_dsn) as db:
            for bad in (0, -5, 10_001):
                with pytest.raises(ConfigError, match=str(bad)):
                    await db.set_tenant_batch_sizes(TENANT, upload=bad)
                with pytest.raises(ConfigError, match=str(bad)):
                    await db.set_tenant_batch_sizes(TENANT, download=bad)
            cfg = await db.get_tenant_batch_config(TENANT)
            assert (cfg.upload_batch_size, cfg.download_batch_size) == (321, 654)

    run(attempt())
    result = _cli(world, "tenant", "set", str(TENANT), "--upload-batch-size", "10001")
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert "10000" in result.stderr or "10000" in result.stdout


def test_unknown_tenant(world: World, caplog: pytest.LogCaptureFixture) -> None:
    async def probe() -> object:
        async with await SyncDatabase.connect(world.sync_dsn) as db:
            with pytest.raises(UnknownTenantError, match="999"):
                await db.set_tenant_batch_sizes(999, upload=10)
            return await db.get_tenant_batch_config(999)

    with caplog.at_level(logging.DEBUG):
        cfg = run(probe())
    assert (cfg.download_batch_size, cfg.upload_batch_size) == (
        DEFAULT_DOWNLOAD_BATCH_SIZE,
        DEFAULT_UPLOAD_BATCH_SIZE,
    )
    assert cfg.source == "default"
    assert any(r.levelno == logging.WARNING and "999" in r.getMessage() for r in caplog.records)
    result = _cli(world, "sync", "--once", "--tenant", "999")
    assert result.returncode == 2, result
    assert "999" in result.stderr and "Traceback" not in result.stderr


UNSUPPORTED = ("jsonb", "interval", "point", "bytea", "integer[]", "money", "time", "inet")


def test_unsupported_column_type_stops_before_anything_moves(world: World) -> None:
    world.add_tenant(TENANT, upload=10)
    world.seed(TENANT, 30)

    async def reflect(pg_type: str) -> None:
        async with await SyncDatabase.connect(world.sync_dsn) as db:
            with pytest.raises(SchemaError) as info:
                await db.layout()
            assert "odd_column" in str(info.value), (pg_type, str(info.value))

    for pg_type in UNSUPPORTED:
        _sql(world.sync_dsn, f"ALTER TABLE meter_reading ADD COLUMN odd_column {pg_type}")
        run(reflect(pg_type))
        if pg_type != UNSUPPORTED[-1]:
            _sql(world.sync_dsn, "ALTER TABLE meter_reading DROP COLUMN odd_column")
    result = _cli(world, "sync", "--once", "--tenant", str(TENANT))
    assert result.returncode == 2, result
    assert "odd_column" in result.stderr and "Traceback" not in result.stderr
    assert world.pending([TENANT]) == 30
    assert world.server.stats()["batches_received"] == 0

"""Schema: migrate (fresh, idempotent, concurrent, old-system upgrade) and reflection."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pyarrow as pa
import pytest

from metersync.errors import SchemaError
from metersync.model import MEASUREMENT_COLUMNS
from metersync.store.database import SyncDatabase
from metersync.store.schema import CatalogColumn, numeric_typmod, reflect

OLD_TENANT = "CREATE TABLE tenant (tenant_id bigint primary key, name text not null, api_key text)"
OLD_READING = f"""
CREATE TABLE meter_reading (
    meter_reading_id uuid primary key default gen_random_uuid(),
    created_at timestamptz not null default now(),
    tenant_id bigint not null, meter_id bigint not null, meter_element_id bigint,
    {", ".join(f"{m} numeric(18,4)" for m in MEASUREMENT_COLUMNS)},
    is_synchronized boolean default false,
    retry_count bigint default 0
)
"""

# What migrate may change: columns, constraints, indexes of our tables.
SNAPSHOT = """
SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       pg_get_expr(d.adbin, d.adrelid)
FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid
LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
WHERE c.relname IN ('tenant', 'meter_reading', 'sync_state', 'sync_log')
  AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid), null, null
FROM pg_constraint WHERE conrelid::regclass::text IN ('tenant', 'meter_reading', 'sync_log')
UNION ALL
SELECT tablename, indexname, indexdef, null, null FROM pg_indexes WHERE schemaname = 'public'
ORDER BY 1, 2
"""


def _sql(dsn: str, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(statement, params or None)
        return cur.fetchall() if cur.description else []


async def _migrate(dsn: str) -> list[str]:
    async with await SyncDatabase.connect(dsn) as db:
        return await db.migrate()


async def test_migrate_fresh_then_idempotent(fresh_dsn: str) -> None:
    first = await _migrate(fresh_dsn)
    assert "create table meter_reading" in first and "create index meter_reading_queue_idx" in first
    snapshot = _sql(fresh_dsn, SNAPSHOT)
    for _ in range(2):
        assert await _migrate(fresh_dsn) == []
        assert _sql(fresh_dsn, SNAPSHOT) == snapshot
    columns = {r[1]: r for r in snapshot if r[0] == "meter_reading"}
    assert columns["is_synchronized"][2:4] == ("boolean", True)
    assert columns["retry_count"][2:5] == ("integer", True, "0")
    assert columns["sync_status"][2:4] == ("character varying(20)", True)
    tenant = {r[1]: r for r in snapshot if r[0] == "tenant"}
    assert tenant["download_batch_size"][2:5] == ("integer", True, "1000")
    assert tenant["upload_batch_size"][2:5] == ("integer", True, "100")


def _old_database(dsn: str) -> None:
    _sql(dsn, OLD_TENANT)
    _sql(dsn, OLD_READING)
    _sql(dsn, "INSERT INTO tenant VALUES (1, 'one', 'k1'), (2, 'two', NULL)")
    # 30 rows: is_synchronized cycles NULL / true / false; retry_count NULL on some.
    _sql(
        dsn,
        """INSERT INTO meter_reading (created_at, tenant_id, meter_id, active_energy, voltage_p_n,
                                      is_synchronized, retry_count)
           SELECT '2025-01-01'::timestamptz + g * interval '1 min', 1 + g % 2, g, g * 1.2345,
                  -g / 7.0, (ARRAY[NULL, true, false])[1 + g % 3],
                  CASE WHEN g % 5 = 0 THEN NULL ELSE g % 4 END
           FROM generate_series(1, 30) g""",
    )


CHECKSUM = """SELECT count(*), md5(string_agg(meter_reading_id::text || created_at::text
              || tenant_id || meter_id || coalesce(active_energy::text, '-')
              || coalesce(voltage_p_n::text, '-'), ',' ORDER BY meter_reading_id))
              FROM meter_reading"""


async def test_upgrade_of_the_old_system_keeps_every_row(fresh_dsn: str) -> None:
    _old_database(fresh_dsn)
    before = _sql(fresh_dsn, CHECKSUM)
    flags = dict(
        _sql(
            fresh_dsn,
            "SELECT meter_reading_id, coalesce(is_synchronized, false) FROM meter_reading",
        )
    )
    retries = dict(_sql(fresh_dsn, "SELECT meter_reading_id, retry_count FROM meter_reading"))
    actions = await _migrate(fresh_dsn)
    assert any("is_synchronized" in a and "NOT NULL" in a for a in actions), actions
    assert any("retry_count" in a and "integer" in a for a in actions), actions
    assert _sql(fresh_dsn, CHECKSUM) == before
    for rid, synced, status, retry, err in _sql(
        fresh_dsn,
        "SELECT meter_reading_id, is_synchronized, sync_status, retry_count, last_error "
        "FROM meter_reading",
    ):
        assert synced is flags[rid]  # NULL became false, true and false kept
        assert status == ("synchronized" if synced else "pending")
        assert retry == (retries[rid] or 0)
        assert err is None
    assert _sql(fresh_dsn, "SELECT tenant_id, name, api_key, active, download_batch_size, "
                           "upload_batch_size FROM tenant ORDER BY 1") == [
        (1, "one", "k1", True, 1000, 100),
        (2, "two", None, True, 1000, 100),
    ]  # fmt: skip
    with pytest.raises(psycopg.errors.NotNullViolation):
        _sql(fresh_dsn, "INSERT INTO meter_reading (tenant_id, meter_id, is_synchronized) "
                        "VALUES (1, 1, NULL)")  # fmt: skip
    with pytest.raises(psycopg.errors.CheckViolation):
        _sql(fresh_dsn, "INSERT INTO meter_reading (tenant_id, meter_id, sync_status) "
                        "VALUES (1, 1, 'lost')")  # fmt: skip
    present = _sql(fresh_dsn, "SELECT to_regclass('meter_reading_queue_idx') IS NOT NULL, "
                              "to_regclass('sync_state') IS NOT NULL, "
                              "to_regclass('sync_log') IS NOT NULL")  # fmt: skip
    assert present == [(True, True, True)]
    snapshot = _sql(fresh_dsn, SNAPSHOT)
    assert await _migrate(fresh_dsn) == []
    assert _sql(fresh_dsn, SNAPSHOT) == snapshot


async def test_upgrade_refuses_retry_count_beyond_integer_and_changes_nothing(
    fresh_dsn: str,
) -> None:
    _old_database(fresh_dsn)
    _sql(fresh_dsn, "UPDATE meter_reading SET retry_count = 5000000000 WHERE meter_id = 3")
    snapshot = _sql(fresh_dsn, SNAPSHOT)
    with pytest.raises(SchemaError, match=r"meter_reading\.retry_count.*5000000000"):
        await _migrate(fresh_dsn)
    assert _sql(fresh_dsn, SNAPSHOT) == snapshot  # the tenant columns were rolled back too
    nulls = _sql(fresh_dsn, "SELECT count(*) FROM meter_reading WHERE is_synchronized IS NULL")
    assert nulls == [(10,)]


async def test_concurrent_migrations_do_not_collide(fresh_dsn: str) -> None:
    _old_database(fresh_dsn)
    results = await asyncio.gather(*(_migrate(fresh_dsn) for _ in range(3)))
    assert sum(1 for r in results if r) == 1, results  # one applied, the others found it done
    assert await _migrate(fresh_dsn) == []


def test_numeric_typmod() -> None:
    assert numeric_typmod((18 << 16 | 4) + 4) == (18, 4)
    assert numeric_typmod(-1) == (None, None)


def _catalog(*cols: tuple[str, str, str], typmod: int = (18 << 16 | 4) + 4) -> list[CatalogColumn]:
    base = [
        ("meter_reading_id", "uuid", "uuid"),
        ("created_at", "timestamptz", "timestamp with time zone"),
        ("tenant_id", "int8", "bigint"),
        *cols,
        ("is_synchronized", "bool", "boolean"),
        ("sync_status", "varchar", "character varying(20)"),
        ("retry_count", "int4", "integer"),
        ("last_error", "text", "text"),
    ]
    return [
        CatalogColumn(n, t, s, typmod if t == "numeric" else -1, False, None) for n, t, s in base
    ]


def test_reflect_upload_columns_in_table_order() -> None:
    layout = reflect(_catalog(("power", "numeric", "numeric(18,4)"), ("note", "text", "text")))
    assert layout.upload_columns == ["meter_reading_id", "created_at", "power", "note"]
    assert layout.upload_schema.field("power").type == pa.decimal128(18, 4)
    assert layout.upload_schema.field("meter_reading_id").type == pa.binary(16)
    assert layout.insert_schema.names == ["tenant_id", *layout.upload_columns,
                                          "is_synchronized", "sync_status"]  # fmt: skip


@pytest.mark.parametrize(
    ("typname", "sql_type"),
    [("jsonb", "jsonb"), ("interval", "interval"), ("numeric", "numeric"), ("_int4", "integer[]")],
)
def test_reflect_refuses_unsupported_types_naming_the_column(typname: str, sql_type: str) -> None:
    with pytest.raises(SchemaError, match=rf"meter_reading\.odd.*{sql_type.replace('[', '.')}"):
        reflect(_catalog(("odd", typname, sql_type), typmod=-1))


def test_reflect_needs_the_bookkeeping_columns() -> None:
    with pytest.raises(SchemaError, match="migrate"):
        reflect([c for c in _catalog() if c.name != "sync_status"])
    with pytest.raises(SchemaError, match="does not exist"):
        reflect([])

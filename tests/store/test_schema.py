"""Schema: migrate (fresh, idempotent, concurrent, old-system upgrade) and reflection."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from typing import Any

import psycopg
import pyarrow as pa
import pytest

from metersync.codec._types import numeric_type
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


async def test_migrate_adds_in_doubt_since_without_rewriting_the_table(fresh_dsn: str) -> None:
    """A sync database of before the held-age column (readings already held in doubt): migrate
    adds ``in_doubt_since`` nullable without default — a catalog change, the table is not
    rewritten — and the old holds fall back to their created_at in ``queue_status``."""
    await _migrate(fresh_dsn)
    _sql(fresh_dsn, "ALTER TABLE meter_reading DROP COLUMN in_doubt_since")
    _sql(fresh_dsn, "INSERT INTO tenant (tenant_id, name) VALUES (1, 'one')")
    _sql(
        fresh_dsn,
        """INSERT INTO meter_reading (created_at, tenant_id, meter_id, sync_status)
           SELECT now() - interval '3 hours' + g * interval '1 min', 1, g,
                  CASE WHEN g <= 4 THEN 'in_doubt' ELSE 'pending' END
           FROM generate_series(1, 10) g""",
    )
    async with await SyncDatabase.connect(fresh_dsn) as db:
        with pytest.raises(SchemaError, match=r"in_doubt_since.*migrate"):
            await db.layout()
    filenode = _sql(fresh_dsn, "SELECT pg_relation_filenode('meter_reading')")
    actions = await _migrate(fresh_dsn)
    assert "add meter_reading.in_doubt_since timestamptz" in actions, actions
    assert _sql(fresh_dsn, "SELECT pg_relation_filenode('meter_reading')") == filenode
    column = [r for r in _sql(fresh_dsn, SNAPSHOT) if r[:2] == ("meter_reading", "in_doubt_since")]
    assert column == [("meter_reading", "in_doubt_since", "timestamp with time zone", False, None)]
    assert _sql(fresh_dsn, "SELECT count(*) FROM meter_reading WHERE in_doubt_since IS NULL") == [
        (10,)
    ]
    async with await SyncDatabase.connect(fresh_dsn) as db:
        assert "in_doubt_since" not in (await db.layout()).upload_columns  # never sent
        (status,) = await db.queue_status(1)
    assert status.in_doubt == 4
    # held before the column existed: its created_at (3 h - 1 min ago) stands in
    assert 3 * 3600 - 120 < status.oldest_in_doubt_age_s < 3 * 3600
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
        ("in_doubt_since", "timestamptz", "timestamp with time zone"),
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
    [("jsonb", "jsonb"), ("interval", "interval"), ("_int4", "integer[]")],
)
def test_reflect_refuses_unsupported_types_naming_the_column(typname: str, sql_type: str) -> None:
    with pytest.raises(SchemaError, match=rf"meter_reading\.odd.*{sql_type.replace('[', '.')}"):
        reflect(_catalog(("odd", typname, sql_type), typmod=-1))


def test_reflect_maps_plain_numeric_to_exact_text() -> None:
    """A numeric without precision and scale (issue 11 item 8): the metersync.numeric type."""
    layout = reflect(_catalog(("reading", "numeric", "numeric"), typmod=-1))
    assert layout.upload_schema.field("reading").type == numeric_type()
    assert layout.insert_schema.field("reading").type == numeric_type()


def test_reflect_needs_the_bookkeeping_columns() -> None:
    with pytest.raises(SchemaError, match="migrate"):
        reflect([c for c in _catalog() if c.name != "sync_status"])
    with pytest.raises(SchemaError, match="does not exist"):
        reflect([])


# ---------------------------------------------------------------------------------- issue 11, 9


async def test_migrate_brings_every_table_to_the_current_shape(fresh_dsn: str) -> None:
    """Old tables lacking columns the product needs (tenant without api_key and the sizes, a
    hand-made sync_state and sync_log): migrate adds them all, and every command then works."""
    _sql(fresh_dsn, "CREATE TABLE tenant (tenant_id bigint primary key, name text)")
    _sql(fresh_dsn, "INSERT INTO tenant VALUES (1, 'one'), (2, NULL)")
    _sql(fresh_dsn, "CREATE TABLE sync_state (tenant_id bigint primary key)")
    _sql(fresh_dsn, "CREATE TABLE sync_log (id bigserial primary key, tenant_id bigint not null, "
                    "operation text)")  # fmt: skip
    _sql(fresh_dsn, "INSERT INTO sync_log (tenant_id, operation) VALUES (1, 'upload')")
    async with await SyncDatabase.connect(fresh_dsn) as db:
        with pytest.raises(SchemaError, match="migrate"):
            await db.get_tenant(1)  # what every command said before
        actions = await db.migrate()
        assert any("tenant.api_key" in a for a in actions), actions
        assert any("sync_log.success" in a for a in actions), actions
        assert any("sync_state.download_cursor" in a for a in actions), actions
        assert await db.migrate() == []  # up to date now, and the commands agree:
        row = await db.get_tenant(2)
        assert row is not None and row.name == "tenant 2" and row.api_key is None
        assert (row.upload_batch_size, row.download_batch_size, row.active) == (100, 1000, True)
        assert [t.tenant_id for t in await db.list_tenants()] == [1, 2]
        await db.set_tenant_batch_sizes(1, upload=7)
        await db.write_sync_log(1, "download", 1, 2, 3, 0.5, True)
        assert [c.operation for c in await db.recent_cycles(1)] == ["download", "upload"]
        await db.store_download_page(1, _one_reading(), 10, "c-9")
        assert await db.get_download_cursor(1) == "c-9"
        assert await db.site_id()


def _one_reading() -> pa.RecordBatch:
    from metersync.tools.synthetic import reading_batch

    return reading_batch(1, seed=3, tenant_id=None)


async def test_migrate_reports_readings_quarantined_by_old_retry_counts(fresh_dsn: str) -> None:
    _old_database(fresh_dsn)
    # retry_count cycles 1, 2, 3, 0 (NULL on every 5th): some unsynchronized rows reach 3.
    expected = _sql(
        fresh_dsn,
        "SELECT count(*) FROM meter_reading WHERE is_synchronized IS NOT TRUE AND retry_count >= 3",
    )[0][0]
    assert expected > 0
    async with await SyncDatabase.connect(fresh_dsn) as db:
        actions = await db.migrate(max_retries=3)
        notes = [a for a in actions if "quarantined" in a]
        assert len(notes) == 1 and notes[0].startswith(f"note: {expected} ")
        assert "requeue" in notes[0]
        (status,) = await db.queue_status(1, max_retries=3)
        (other,) = await db.queue_status(2, max_retries=3)
        assert status.quarantined + other.quarantined == expected
        assert await db.migrate(max_retries=3) == []  # said once, at the upgrade


@pytest.mark.parametrize("id_type", ["text", "bigint"])
async def test_meter_reading_id_not_uuid_is_refused_at_migrate_and_reflect(
    fresh_dsn: str, id_type: str
) -> None:
    _sql(fresh_dsn, f"""CREATE TABLE meter_reading (meter_reading_id {id_type} primary key,
        created_at timestamptz not null, tenant_id bigint not null, meter_id bigint not null,
        power numeric(18,4))""")  # fmt: skip
    snapshot = _sql(fresh_dsn, SNAPSHOT)
    with pytest.raises(SchemaError) as info:
        await _migrate(fresh_dsn)
    message = str(info.value)
    assert "meter_reading.meter_reading_id" in message and id_type in message
    assert "uuid" in message and "migrate changed nothing" in message
    if id_type == "text":
        assert "USING meter_reading_id::uuid" in message  # what to do
    assert _sql(fresh_dsn, SNAPSHOT) == snapshot
    catalog = [c for c in _catalog() if c.name != "meter_reading_id"]
    catalog.insert(0, CatalogColumn("meter_reading_id", "int8" if id_type == "bigint" else "text",
                                    id_type, -1, True, None))  # fmt: skip
    with pytest.raises(SchemaError, match=rf"meter_reading\.meter_reading_id has type {id_type}"):
        reflect(catalog)
    # The command line says it in one line and exits 2.
    proc = subprocess.run(
        [sys.executable, "-m", "metersync", "--dsn", fresh_dsn, "migrate"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "meter_reading_id" in proc.stderr and "Traceback" not in proc.stderr


async def test_created_at_without_time_zone_is_refused_with_what_to_do(fresh_dsn: str) -> None:
    _sql(
        fresh_dsn,
        """CREATE TABLE meter_reading (meter_reading_id uuid primary key,
        created_at timestamp not null, tenant_id bigint not null, meter_id bigint not null)""",
    )
    snapshot = _sql(fresh_dsn, SNAPSHOT)
    with pytest.raises(SchemaError) as info:
        await _migrate(fresh_dsn)
    message = str(info.value)
    assert "meter_reading.created_at" in message and "timestamp without time zone" in message
    assert "TYPE timestamptz USING created_at AT TIME ZONE" in message
    assert _sql(fresh_dsn, SNAPSHOT) == snapshot
    catalog = [
        c
        if c.name != "created_at"
        else CatalogColumn("created_at", "timestamp", "timestamp without time zone", -1, 1, None)
        for c in _catalog()
    ]
    with pytest.raises(SchemaError, match=r"meter_reading\.created_at"):
        reflect(catalog)


#: Every primary key / unique constraint / unique index of our tables, with its columns.
UNIQUE_KEYS = """
SELECT c.relname, i.indexrelid::regclass::text,
       array_agg(a.attname::text ORDER BY k.ord)
FROM pg_index i
JOIN pg_class c ON c.oid = i.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
WHERE i.indisunique
GROUP BY 1, 2 ORDER BY 1, 2
"""


@pytest.mark.parametrize("start", ["fresh", "old system", "previous metersync"])
async def test_every_key_of_a_distributable_table_includes_tenant_id(
    fresh_dsn: str, start: str
) -> None:
    """Citus: every primary key and unique constraint (index) of a table distributed by
    ``tenant_id`` must include it. Checked on the migrated catalog, for every table that has a
    ``tenant_id`` column (``sync_site`` has none: a reference table)."""
    if start == "old system":
        _old_database(fresh_dsn)
    elif start == "previous metersync":  # the keys as metersync created them before
        _old_database(fresh_dsn)
        _sql(fresh_dsn, "CREATE TABLE sync_log (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY "
                        "KEY, tenant_id bigint NOT NULL, operation text NOT NULL, started_at "
                        "timestamptz NOT NULL DEFAULT now(), batches integer NOT NULL DEFAULT 0, "
                        "records bigint NOT NULL DEFAULT 0, statements bigint NOT NULL DEFAULT 0, "
                        "duration_s double precision NOT NULL DEFAULT 0, success boolean NOT NULL, "
                        "error text)")  # fmt: skip
        _sql(fresh_dsn, "CREATE INDEX sync_log_tenant_id_idx ON sync_log (tenant_id, id)")
        _sql(
            fresh_dsn, "INSERT INTO sync_log (tenant_id, operation, success) VALUES (1, 'x', true)"
        )
    actions = await _migrate(fresh_dsn)
    if start != "fresh":
        assert any("primary key of meter_reading" in a for a in actions), actions
    distributable = {
        r[0]
        for r in _sql(
            fresh_dsn,
            "SELECT table_name FROM information_schema.columns WHERE "
            "table_schema = 'public' AND column_name = 'tenant_id'",
        )
    }
    assert distributable == {"tenant", "meter_reading", "sync_state", "sync_log"}
    keys = _sql(fresh_dsn, UNIQUE_KEYS)
    seen = {table for table, _, _ in keys}
    assert distributable <= seen  # each has a key at all
    for table, index, columns in keys:
        if table in distributable:
            assert "tenant_id" in columns, f"{table}: unique index {index} on {columns}"
    primary = {r[0]: r[1] for r in _sql(fresh_dsn, """
        SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint
        WHERE contype = 'p' AND connamespace = 'public'::regnamespace""")}  # fmt: skip
    assert primary["meter_reading"] == "PRIMARY KEY (tenant_id, meter_reading_id)"
    assert primary["sync_log"] == "PRIMARY KEY (tenant_id, id)"
    assert _sql(fresh_dsn, "SELECT to_regclass('sync_log_tenant_id_idx')") == [(None,)]
    assert await _migrate(fresh_dsn) == []


async def test_in_doubt_is_a_status_the_queue_skips_and_the_status_counts(fresh_dsn: str) -> None:
    # A database migrated before in_doubt existed has the old check constraint.
    _old_database(fresh_dsn)
    await _migrate(fresh_dsn)
    _sql(fresh_dsn, "ALTER TABLE meter_reading DROP CONSTRAINT meter_reading_sync_status_check")
    _sql(fresh_dsn, "ALTER TABLE meter_reading ADD CONSTRAINT meter_reading_sync_status_check "
                    "CHECK (sync_status IN ('pending', 'synchronized', 'failed'))")  # fmt: skip
    actions = await _migrate(fresh_dsn)
    assert any("in_doubt" in a for a in actions), actions
    assert await _migrate(fresh_dsn) == []
    async with await SyncDatabase.connect(fresh_dsn) as db:
        queue = await db.fetch_unsynchronized(1, 100)
        doubt = [d[0] for d in _sql(fresh_dsn, "SELECT meter_reading_id::text FROM meter_reading "
                                               "WHERE tenant_id = 1 AND NOT is_synchronized "
                                               "ORDER BY created_at LIMIT 2")]  # fmt: skip
        _sql(fresh_dsn, "UPDATE meter_reading SET sync_status = 'in_doubt' "
                        "WHERE meter_reading_id = ANY(%s::uuid[])", doubt)  # fmt: skip
        after = await db.fetch_unsynchronized(1, 100)
        assert after.num_rows == queue.num_rows - 2
        fetched = {str(uuid.UUID(bytes=b)) for b in after.column("meter_reading_id").to_pylist()}
        assert not fetched & set(doubt)
        (status,) = await db.queue_status(1, max_retries=100)
        assert status.in_doubt == 2 and status.oldest_in_doubt_age_s is not None
        assert status.oldest_in_doubt_age_s > 0
        total = _sql(fresh_dsn, "SELECT count(*) FROM meter_reading WHERE tenant_id = 1")[0][0]
        parts = status.pending + status.failed + status.quarantined + status.synchronized
        assert parts + status.in_doubt == total


async def test_site_id_is_generated_once_and_stable(fresh_dsn: str) -> None:
    async with await SyncDatabase.connect(fresh_dsn) as db:
        assert await db.site_id() is None  # not migrated yet
        actions = await db.migrate()
        assert any("site's id" in a for a in actions)
        site = await db.site_id()
        assert site and site.startswith("site-") and site.isascii() and " " not in site
        assert await db.migrate() == []
        assert await db.site_id() == site
    with pytest.raises(psycopg.errors.Error):  # one row, ever
        _sql(fresh_dsn, "INSERT INTO sync_site (site_id) VALUES ('another')")


def test_migrate_command_counts_quarantine_with_the_max_retries_setting(fresh_dsn: str) -> None:
    _old_database(fresh_dsn)
    expected = _sql(
        fresh_dsn,
        "SELECT count(*) FROM meter_reading WHERE is_synchronized IS NOT TRUE AND retry_count >= 2",
    )[0][0]
    proc = subprocess.run(
        [sys.executable, "-m", "metersync", "--dsn", fresh_dsn, "migrate", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "METERSYNC_MAX_RETRIES": "2"},
    )
    assert proc.returncode == 0, proc.stderr
    actions = json.loads(proc.stdout)["actions"]
    notes = [a for a in actions if "quarantined" in a]
    assert notes == [notes[0]] and notes[0].startswith(f"note: {expected} ")
    assert "retry_count >= 2" in notes[0]

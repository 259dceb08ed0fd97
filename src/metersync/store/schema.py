"""The sync database schema: ``migrate`` (spec §2) and the reflection of ``meter_reading``.

``migrate`` reads the catalog and applies only what is missing, so a second run applies nothing.
It runs in one transaction under an advisory lock (two concurrent migrations queue up; the second
finds nothing to do) and upgrades a database of the old system in place, never dropping data:
NULL ``is_synchronized`` becomes false, ``retry_count bigint`` becomes ``integer`` (refused,
naming the column, when a value does not fit), ``sync_status`` is derived from
``is_synchronized``. Any error rolls the whole migration back.

``reflect`` turns the catalog rows of ``meter_reading`` into a :class:`TableLayout`: which
columns are sent (every non-bookkeeping column, in table order) and their Arrow types.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import pyarrow as pa
from psycopg import AsyncCursor

from metersync.codec._types import pg_to_arrow
from metersync.errors import SchemaError
from metersync.model import BOOKKEEPING_COLUMNS, SYNC_STATUSES
from metersync.store import sql as q

#: How the schema module runs a statement: the adapter's counting executor.
Execute = Callable[[Any, Any], Awaitable[AsyncCursor[Any]]]

INT_TYPES = frozenset({"int2", "int4", "int8", "numeric"})
TEXT_TYPES = frozenset({"text", "varchar", "bpchar"})


@dataclass(frozen=True, slots=True)
class Column:
    """One reflected column: its name, its PostgreSQL type as written, its Arrow type."""

    name: str
    pg_type: str
    arrow_type: pa.DataType


@dataclass(frozen=True, slots=True)
class TableLayout:
    """What the engine knows of ``meter_reading``.

    ``columns``: the upload columns with their types (the bookkeeping columns are not moved);
    ``upload_columns``: their names in table order (``meter_reading_id, created_at, meter_id,
    meter_element_id, ...``); ``upload_schema``: the Arrow schema of a fetched batch;
    ``insert_schema``: ``tenant_id`` + upload columns + ``is_synchronized``, ``sync_status``
    (a downloaded reading is stored already synchronized).
    """

    columns: list[Column]
    upload_columns: list[str]
    upload_schema: pa.Schema
    insert_schema: pa.Schema

    def arrow_type(self, name: str) -> pa.DataType:
        """Arrow type of an upload column (``KeyError`` for an unknown one)."""
        return self.upload_schema.field(name).type


@dataclass(frozen=True, slots=True)
class CatalogColumn:
    """A row of :data:`metersync.store.sql.TABLE_COLUMNS`."""

    name: str
    typname: str
    sql_type: str
    typmod: int
    not_null: bool
    default: str | None


def numeric_typmod(typmod: int) -> tuple[int | None, int | None]:
    """Precision and scale of ``numeric(p,s)`` from its typmod (``None`` if unconstrained)."""
    if typmod < 4:
        return None, None
    value = typmod - 4
    scale = ((value & 0x7FF) ^ 1024) - 1024  # an 11-bit signed field since PostgreSQL 15
    return (value >> 16) & 0xFFFF, scale


REQUIRED_COLUMNS = ("meter_reading_id", "created_at", *sorted(BOOKKEEPING_COLUMNS))


def reflect(columns: Sequence[CatalogColumn]) -> TableLayout:
    """Build the layout of ``meter_reading`` from its catalog rows.

    Raises :class:`SchemaError` when the table is missing, lacks a column the engine needs, or
    holds an upload column of a type the codec cannot carry (naming the column and its type).
    """
    if not columns:
        raise SchemaError("table meter_reading does not exist: run `metersync migrate`")
    names = {c.name for c in columns}
    missing = [n for n in REQUIRED_COLUMNS if n not in names]
    if missing:
        raise SchemaError(
            f"table meter_reading lacks column(s) {', '.join(missing)}: run `metersync migrate`"
        )
    upload: list[Column] = []
    for c in columns:
        if c.name in BOOKKEEPING_COLUMNS:
            continue
        problem = key_column_problem(c)
        if problem:
            raise SchemaError(f"{problem}. Nothing was moved.")
        precision, scale = numeric_typmod(c.typmod) if c.typname == "numeric" else (None, None)
        try:
            arrow_type = pg_to_arrow(c.typname, precision, scale, column=c.name)
        except TypeError as exc:
            raise SchemaError(
                f"column meter_reading.{c.name} has type {c.sql_type}, which metersync cannot "
                f"sync ({exc}); change the column's type or drop it. Nothing was moved."
            ) from None
        upload.append(Column(c.name, c.sql_type, arrow_type))
    upload_schema = pa.schema([pa.field(c.name, c.arrow_type) for c in upload])
    insert_schema = pa.schema(
        [
            pa.field("tenant_id", pa.int64(), nullable=False),
            *upload_schema,
            pa.field("is_synchronized", pa.bool_(), nullable=False),
            pa.field("sync_status", pa.string(), nullable=False),
        ]
    )
    return TableLayout(upload, [c.name for c in upload], upload_schema, insert_schema)


async def catalog_columns(execute: Execute, table: str) -> list[CatalogColumn]:
    """The columns of ``table`` in table order (empty when the table does not exist)."""
    cur = await execute(q.TABLE_COLUMNS, (table,))
    return [CatalogColumn(*row) for row in await cur.fetchall()]


# ---------------------------------------------------------------------------------- migrate


@dataclass(frozen=True, slots=True)
class _Target:
    """A column migrate guarantees on an existing table.

    ``default``: its SQL default (also what NULLs become when it must be NOT NULL);
    ``not_null``: whether it must be NOT NULL (implied by a default); ``fill``: what NULLs (and
    the existing rows of a new NOT NULL column without default) become when that differs from
    the default; ``int_column``: convertible from another integer type (range-checked);
    ``required``: a key column migrate cannot invent values for (refused when missing).
    """

    name: str
    type_sql: str
    family: frozenset[str]  # typnames accepted as already right
    default: str | None = None
    not_null: bool = False
    fill: str | None = None
    int_column: bool = False
    required: bool = False

    @property
    def must_be_not_null(self) -> bool:
        return self.not_null or self.default is not None


_INT8_FAMILY = frozenset({"int2", "int4", "int8"})
_TENANT_TARGETS = (
    _Target("tenant_id", "bigint", _INT8_FAMILY, required=True),
    _Target("name", "text", TEXT_TYPES, not_null=True, fill="'tenant ' || tenant_id"),
    _Target("api_key", "text", TEXT_TYPES),
    _Target("active", "boolean", frozenset({"bool"}), "true"),
    _Target("download_batch_size", "integer", frozenset({"int4"}), "1000", int_column=True),
    _Target("upload_batch_size", "integer", frozenset({"int4"}), "100", int_column=True),
    _Target("updated_at", "timestamptz", frozenset({"timestamptz"})),
)
_READING_TARGETS = (
    _Target("meter_reading_id", "uuid", frozenset({"uuid"}), required=True),
    _Target("created_at", "timestamptz", frozenset({"timestamptz"}), required=True),
    _Target("tenant_id", "bigint", _INT8_FAMILY, required=True),
    _Target("meter_id", "bigint", _INT8_FAMILY, required=True),
    _Target("is_synchronized", "boolean", frozenset({"bool"}), "false"),
    _Target(
        "sync_status",
        "varchar(20)",
        TEXT_TYPES,
        "'pending'",
        fill="CASE WHEN is_synchronized THEN 'synchronized' ELSE 'pending' END",
    ),
    _Target("retry_count", "integer", frozenset({"int4"}), "0", int_column=True),
    _Target("last_error", "text", TEXT_TYPES),
    # When the reading was last claimed or held in doubt (NULL when it is not in doubt): how long
    # the operator has waited, not how old the reading is. Nullable without default, so adding it
    # to a big table is a catalog change only.
    _Target("in_doubt_since", "timestamptz", frozenset({"timestamptz"})),
)
_SYNC_STATE_TARGETS = (
    _Target("tenant_id", "bigint", _INT8_FAMILY, required=True),
    _Target("download_cursor", "text", TEXT_TYPES),
    _Target("updated_at", "timestamptz", frozenset({"timestamptz"}), "now()"),
)
_SYNC_LOG_TARGETS = (
    _Target("id", "bigint GENERATED ALWAYS AS IDENTITY", _INT8_FAMILY, not_null=True),
    _Target("tenant_id", "bigint", _INT8_FAMILY, required=True),
    _Target("operation", "text", TEXT_TYPES, not_null=True, fill="'unknown'"),
    _Target("started_at", "timestamptz", frozenset({"timestamptz"}), "now()"),
    _Target("batches", "integer", frozenset({"int4"}), "0", int_column=True),
    _Target("records", "bigint", _INT8_FAMILY, "0"),
    _Target("statements", "bigint", _INT8_FAMILY, "0"),
    _Target("duration_s", "double precision", frozenset({"float8", "float4"}), "0"),
    # A hand-made log without the column: its old rows did not say; they do not claim success.
    _Target("success", "boolean", frozenset({"bool"}), not_null=True, fill="false"),
    _Target("error", "text", TEXT_TYPES),
)

#: The primary key of each table: every key includes ``tenant_id`` (Citus distributes by it;
#: ``tenant`` itself is a reference table, its key is the tenant id).
PRIMARY_KEYS: dict[str, tuple[str, ...]] = {
    "tenant": ("tenant_id",),
    q.READING: ("tenant_id", "meter_reading_id"),
    "sync_state": ("tenant_id",),
    "sync_log": ("tenant_id", "id"),
}


def key_column_problem(column: CatalogColumn) -> str | None:
    """Why ``meter_reading``'s id or timestamp column cannot be served (``None``: it can).

    ``meter_reading_id`` must be ``uuid`` (the Client System identifies readings by UUID, and
    every id list travels as a binary ``uuid[]``); ``created_at`` must be ``timestamptz`` (a
    reading's instant must not depend on the session's time zone). The text says what to do.
    """
    if column.name == "meter_reading_id" and column.typname != "uuid":
        how = (
            "if it holds UUID text, convert it: ALTER TABLE meter_reading ALTER COLUMN "
            "meter_reading_id TYPE uuid USING meter_reading_id::uuid"
            if column.typname in TEXT_TYPES
            else "give the readings a uuid key (e.g. a new uuid column filled with "
            "gen_random_uuid(), made the key in its place)"
        )
        return (
            f"column meter_reading.meter_reading_id has type {column.sql_type}; metersync needs "
            f"uuid (readings are identified by UUID end to end): {how}"
        )
    if column.name == "created_at" and column.typname != "timestamptz":
        how = (
            "convert it, naming the time zone its values were written in: ALTER TABLE "
            "meter_reading ALTER COLUMN created_at TYPE timestamptz USING created_at AT TIME "
            "ZONE 'Europe/Berlin' (your site's zone)"
            if column.typname == "timestamp"
            else "convert it to timestamp with time zone"
        )
        return (
            f"column meter_reading.created_at has type {column.sql_type}; metersync needs "
            f"timestamp with time zone (an unambiguous instant): {how}"
        )
    return None


class _Migration:
    def __init__(self, execute: Execute) -> None:
        self.execute = execute
        self.actions: list[str] = []
        self.changed: set[str] = set()  # tables migrate changed

    async def run(
        self, statement: Any, action: str, params: Any = None, *, table: str = ""
    ) -> AsyncCursor[Any]:
        cur = await self.execute(statement, params)
        self.actions.append(action)
        if table:
            self.changed.add(table)
        return cur

    async def scalar(self, statement: Any, params: Any = None) -> Any:
        cur = await self.execute(statement, params)
        row = await cur.fetchone()
        return None if row is None else row[0]

    async def ensure_table(self, table: str, create: str, targets: Sequence[_Target]) -> None:
        existing = {c.name: c for c in await catalog_columns(self.execute, table)}
        if not existing:
            await self.run(create, f"create table {table}", table=table)
            return
        for target in targets:
            await self.ensure_column(table, target, existing.get(target.name))

    async def ensure_column(self, table: str, t: _Target, have: CatalogColumn | None) -> None:
        where = f"{table}.{t.name}"
        if have is None:
            if t.required:
                raise SchemaError(
                    f"table {table} has no column {t.name} ({t.type_sql}), a key metersync "
                    "cannot invent values for; add it and fill it, migrate changed nothing"
                )
            await self.add_column(table, t)
            return
        if table == q.READING:
            problem = key_column_problem(have)
            if problem:
                raise SchemaError(f"{problem}; migrate changed nothing")
        if have.typname not in t.family:
            if not (t.int_column and have.typname in INT_TYPES):
                raise SchemaError(
                    f"column {where} has type {have.sql_type}, expected {t.type_sql}; "
                    "convert it by hand, migrate changed nothing"
                )
            count, low, high = await self._fetch_one(q.out_of_int_range(table, t.name))
            if count:
                raise SchemaError(
                    f"column {where} ({have.sql_type}) holds {count} value(s) outside the "
                    f"integer range (from {low} to {high}); fix them before migrating, "
                    "migrate changed nothing"
                )
            await self.run(
                q.alter_type_integer(table, t.name),
                f"convert {where} from {have.sql_type} to integer",
                table=table,
            )
        if t.default is not None and have.default is None and not t.required:
            await self.run(
                q.set_default(table, t.name, t.default),
                f"set default of {where} to {t.default}",
                table=table,
            )
        if t.must_be_not_null and not have.not_null:
            fill = t.fill or t.default
            if fill is not None:
                cur = await self.execute(q.fill_nulls(table, t.name, fill), None)
                if cur.rowcount:
                    self.actions.append(f"set {cur.rowcount} NULL {where} to {fill}")
            await self.run(q.set_not_null(table, t.name), f"set {where} NOT NULL", table=table)

    async def add_column(self, table: str, t: _Target) -> None:
        where = f"{table}.{t.name}"
        if t.default is not None:  # constant default: added without rewriting the table
            await self.run(
                q.add_column(table, t.name, t.type_sql, t.default),
                f"add {where} {t.type_sql} NOT NULL DEFAULT {t.default}",
                table=table,
            )
            if table == q.READING and t.name == "sync_status":
                cur = await self.execute(q.STATUS_FROM_FLAG, None)
                self.actions.append(
                    f"set {where} = 'synchronized' where is_synchronized ({cur.rowcount} rows)"
                )
            return
        await self.run(
            q.add_column(table, t.name, t.type_sql, None), f"add {where} {t.type_sql}", table=table
        )
        if t.fill is not None:
            cur = await self.execute(q.fill_nulls(table, t.name, t.fill), None)
            self.actions.append(f"set {where} = {t.fill} ({cur.rowcount} rows)")
        if t.not_null and "IDENTITY" not in t.type_sql:
            await self.run(q.set_not_null(table, t.name), f"set {where} NOT NULL", table=table)

    async def _fetch_one(self, statement: Any) -> tuple[Any, ...]:
        cur = await self.execute(statement, None)
        row = await cur.fetchone()
        assert row is not None
        return tuple(row)

    async def ensure_primary_key(self, table: str, columns: tuple[str, ...]) -> None:
        """Make ``columns`` the table's primary key (every key includes ``tenant_id``: the
        rule Citus imposes on a table distributed by it). An old key is replaced in place."""
        cur = await self.execute(q.PRIMARY_KEY, (table,))
        row = await cur.fetchone()
        if row is not None and tuple(row[1]) == columns:
            return
        want = ", ".join(columns)
        if row is None:
            statement = q.add_primary_key(table, columns)
            action = f"add primary key ({want}) to {table}"
        else:
            statement = q.replace_primary_key(table, row[0], columns)
            action = f"change the primary key of {table} from ({', '.join(row[1])}) to ({want})"
        try:
            await self.run(statement, action, table=table)
        except psycopg.errors.DependentObjectsStillExist as exc:
            raise SchemaError(
                f"cannot change the primary key of {table} to ({want}): other objects depend "
                f"on it ({str(exc).strip().splitlines()[0]}); drop or adapt them first, "
                "migrate changed nothing"
            ) from None
        except psycopg.errors.UniqueViolation:
            raise SchemaError(
                f"table {table} holds duplicate ({want}) values, so they cannot be its primary "
                "key; remove the duplicates first, migrate changed nothing"
            ) from None

    async def ensure_status_check(self) -> None:
        definition = await self.scalar(q.CONSTRAINT_DEF, (q.READING, q.STATUS_CHECK))
        if definition is not None and all(f"'{s}'" in definition for s in SYNC_STATUSES):
            return
        cur = await self.execute(q.BAD_STATUS_VALUES, None)
        bad = [r[0] for r in await cur.fetchall()]
        if bad:
            raise SchemaError(
                f"column meter_reading.sync_status holds values outside "
                f"{', '.join(SYNC_STATUSES)} (e.g. {', '.join(map(repr, bad))}); fix them "
                "before migrating, migrate changed nothing"
            )
        if definition is not None:
            await self.run(
                q.DROP_STATUS_CHECK, f"drop check constraint {q.STATUS_CHECK} (old value list)"
            )
        await self.run(
            q.ADD_STATUS_CHECK,
            f"add check constraint {q.STATUS_CHECK} ({', '.join(SYNC_STATUSES)})",
        )

    async def ensure_index(self, name: str, create: str) -> None:
        if not await self.scalar(q.INDEX_EXISTS, (name,)):
            await self.run(create, f"create index {name}")

    async def ensure_site(self) -> None:
        if not await self.scalar(q.TABLE_EXISTS, ("sync_site",)):
            await self.run(q.CREATE_SYNC_SITE, "create table sync_site")
        site = await self.scalar(q.GET_SITE_ID)
        if site is None:
            site = await self.scalar(q.INSERT_SITE_ID)
            self.actions.append(f"generate this site's id {site!r} in sync_site")

    async def report_quarantine(self, max_retries: int) -> None:
        """The upgrade of an old table: say how many readings are quarantined from now on (the
        old system's ``retry_count`` meant nothing to the queue; ours skips them)."""
        if q.READING not in self.changed:
            return
        count = await self.scalar(q.COUNT_QUARANTINED, (max_retries,))
        if count:
            self.actions.append(
                f"note: {count} unsynchronized reading(s) have retry_count >= {max_retries} "
                "(max_retries): they are quarantined from now on, skipped by the queue until "
                "`metersync requeue --tenant ID` puts them back"
            )


async def migrate(execute: Execute, *, max_retries: int = 5) -> list[str]:
    """Create or upgrade the schema; return the actions applied (empty when up to date).

    Every table gets every column the product needs (added with its default, NULLs filled,
    types converted where safe); key columns that cannot be invented, or of a type metersync
    cannot serve, are refused with what to do. Every primary key includes ``tenant_id``. An
    upgraded ``meter_reading`` reports how many readings its ``retry_count`` quarantines at the
    given ``max_retries``.

    The caller runs this inside one transaction; :data:`metersync.store.sql.MIGRATE_LOCK` is taken
    first, so a concurrent migration waits and then sees the finished schema.
    """
    m = _Migration(execute)
    await execute(q.MIGRATE_LOCK, None)
    await m.ensure_table("tenant", q.CREATE_TENANT, _TENANT_TARGETS)
    await m.ensure_table(q.READING, q.CREATE_READING, _READING_TARGETS)
    await m.ensure_status_check()
    await m.ensure_index(q.QUEUE_INDEX, q.CREATE_QUEUE_INDEX)
    await m.ensure_table("sync_state", q.CREATE_SYNC_STATE, _SYNC_STATE_TARGETS)
    await m.ensure_table("sync_log", q.CREATE_SYNC_LOG, _SYNC_LOG_TARGETS)
    for table, columns in PRIMARY_KEYS.items():
        await m.ensure_primary_key(table, columns)
    # The old (tenant_id, id) index of sync_log is its primary key now.
    if await m.scalar(q.INDEX_EXISTS, (q.OLD_SYNC_LOG_INDEX,)):
        await m.run(q.DROP_OLD_SYNC_LOG_INDEX, f"drop index {q.OLD_SYNC_LOG_INDEX} (now the key)")
    await m.ensure_site()
    await m.report_quarantine(max_retries)
    return m.actions

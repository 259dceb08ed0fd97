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

import pyarrow as pa
from psycopg import AsyncCursor

from metersync.codec._types import pg_to_arrow
from metersync.errors import SchemaError
from metersync.model import BOOKKEEPING_COLUMNS
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
    """A column migrate guarantees on an existing table."""

    name: str
    type_sql: str
    family: frozenset[str]  # typnames accepted as already right
    default: str | None  # also what NULLs are filled with when the column must be NOT NULL
    int_column: bool = False  # convertible from another integer type (range-checked)
    fill: str | None = None  # what NULLs become when it differs from the default


_TENANT_TARGETS = (
    _Target("active", "boolean", frozenset({"bool"}), "true"),
    _Target("download_batch_size", "integer", frozenset({"int4"}), "1000", int_column=True),
    _Target("upload_batch_size", "integer", frozenset({"int4"}), "100", int_column=True),
    _Target("updated_at", "timestamptz", frozenset({"timestamptz"}), None),
)
_READING_TARGETS = (
    _Target("is_synchronized", "boolean", frozenset({"bool"}), "false"),
    _Target(
        "sync_status",
        "varchar(20)",
        TEXT_TYPES,
        "'pending'",
        fill="CASE WHEN is_synchronized THEN 'synchronized' ELSE 'pending' END",
    ),
    _Target("retry_count", "integer", frozenset({"int4"}), "0", int_column=True),
    _Target("last_error", "text", TEXT_TYPES, None),
)


class _Migration:
    def __init__(self, execute: Execute) -> None:
        self.execute = execute
        self.actions: list[str] = []

    async def run(self, statement: Any, action: str, params: Any = None) -> AsyncCursor[Any]:
        cur = await self.execute(statement, params)
        self.actions.append(action)
        return cur

    async def scalar(self, statement: Any, params: Any = None) -> Any:
        cur = await self.execute(statement, params)
        row = await cur.fetchone()
        return None if row is None else row[0]

    async def ensure_table(self, table: str, create: str, targets: Sequence[_Target]) -> None:
        existing = {c.name: c for c in await catalog_columns(self.execute, table)}
        if not existing:
            await self.run(create, f"create table {table}")
            return
        for target in targets:
            await self.ensure_column(table, target, existing.get(target.name))

    async def ensure_column(self, table: str, t: _Target, have: CatalogColumn | None) -> None:
        where = f"{table}.{t.name}"
        if have is None:
            spec = t.type_sql + (f" NOT NULL DEFAULT {t.default}" if t.default else "")
            await self.run(
                q.add_column(table, t.name, t.type_sql, t.default), f"add {where} {spec}"
            )
            if table == q.READING and t.name == "sync_status":
                cur = await self.execute(q.STATUS_FROM_FLAG, None)
                self.actions.append(
                    f"set {where} = 'synchronized' where is_synchronized ({cur.rowcount} rows)"
                )
            return
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
            )
        if t.default is not None and have.default is None:
            await self.run(
                q.set_default(table, t.name, t.default), f"set default of {where} to {t.default}"
            )
        if t.default is not None and not have.not_null:
            fill = t.fill or t.default
            cur = await self.execute(q.fill_nulls(table, t.name, fill), None)
            if cur.rowcount:
                self.actions.append(f"set {cur.rowcount} NULL {where} to {fill}")
            await self.run(q.set_not_null(table, t.name), f"set {where} NOT NULL")

    async def _fetch_one(self, statement: Any) -> tuple[Any, ...]:
        cur = await self.execute(statement, None)
        row = await cur.fetchone()
        assert row is not None
        return tuple(row)

    async def ensure_status_check(self) -> None:
        if await self.scalar(q.CONSTRAINT_EXISTS, (q.READING, q.STATUS_CHECK)):
            return
        cur = await self.execute(q.BAD_STATUS_VALUES, None)
        bad = [r[0] for r in await cur.fetchall()]
        if bad:
            raise SchemaError(
                f"column meter_reading.sync_status holds values outside pending, synchronized, "
                f"failed (e.g. {', '.join(map(repr, bad))}); fix them before migrating, "
                "migrate changed nothing"
            )
        await self.run(q.ADD_STATUS_CHECK, f"add check constraint {q.STATUS_CHECK}")

    async def ensure_index(self, name: str, create: str) -> None:
        if not await self.scalar(q.INDEX_EXISTS, (name,)):
            await self.run(create, f"create index {name}")


async def migrate(execute: Execute) -> list[str]:
    """Create or upgrade the schema; return the actions applied (empty when up to date).

    The caller runs this inside one transaction; :data:`metersync.store.sql.MIGRATE_LOCK` is taken
    first, so a concurrent migration waits and then sees the finished schema.
    """
    m = _Migration(execute)
    await execute(q.MIGRATE_LOCK, None)
    await m.ensure_table("tenant", q.CREATE_TENANT, _TENANT_TARGETS)
    await m.ensure_table(q.READING, q.CREATE_READING, _READING_TARGETS)
    await m.ensure_status_check()
    await m.ensure_index(q.QUEUE_INDEX, q.CREATE_QUEUE_INDEX)
    await m.ensure_table("sync_state", q.CREATE_SYNC_STATE, ())
    await m.ensure_table("sync_log", q.CREATE_SYNC_LOG, ())
    await m.ensure_index(q.SYNC_LOG_INDEX, q.CREATE_SYNC_LOG_INDEX)
    return m.actions

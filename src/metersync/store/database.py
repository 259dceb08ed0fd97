"""``SyncDatabase``: the async adapter to the sync database (psycopg 3, one connection).

The adapter knows SQL (all of it lives in :mod:`metersync.store.sql`); the codec knows bytes. Rows
move as Arrow record batches: fetched with ``COPY (SELECT ...) TO STDOUT (FORMAT BINARY)``
decoded by :func:`metersync.codec.from_copy_binary`, inserted with one binary ``COPY ... FROM
STDIN`` per chunk encoded by :func:`metersync.codec.copy_binary`. Id lists travel as one binary
``uuid[]`` parameter (:func:`metersync.codec.uuid_array_binary`), never as Python UUID objects.

The connection is in autocommit mode; statements that belong together run in an explicit
transaction. ``statements`` counts every statement the adapter issues (each execute and each
COPY counts 1; BEGIN/COMMIT do not), for ``sync_log`` and the benchmarks.

Marks are one ``UPDATE`` per batch keyed by ``tenant_id`` and a binary id list, probing the
primary key; the measurements behind that choice, the fetch and insert figures, and the COPY
read path are in docs/store-notes.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, Self, TypeVar

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import pq
from psycopg.adapt import Dumper
from psycopg.conninfo import conninfo_to_dict

from metersync import codec
from metersync._failpoints import failpoint
from metersync.batch_sizes import (
    DEFAULT_DOWNLOAD_BATCH_SIZE,
    DEFAULT_UPLOAD_BATCH_SIZE,
    MAX_BATCH_SIZE,
    MIN_BATCH_SIZE,
    SIZE_DEFAULTS,
    BatchSizes,
    batch_size_problem,
    sizes_after_failed_lookup,
    sizes_from_row,
)
from metersync.codec.cast import id_array, insert_batch
from metersync.errors import (
    ConfigError,
    DatabaseUnavailableError,
    SchemaError,
    TenantBusyError,
    TenantLockLostError,
    UnknownTenantError,
)
from metersync.store import sql as q
from metersync.store.schema import TableLayout, catalog_columns, migrate, reflect

__all__ = [
    "CycleRow",
    "InsertResult",
    "QueueStatus",
    "RejectResult",
    "SyncDatabase",
    "TenantRow",
    "UuidArray",
    "describe_dsn",
    "id_array",
    "uuid_param",
]

log = logging.getLogger(__name__)

UUID_ARRAY_OID = 2951  # pg_type oid of uuid[]
#: Below this many rows an insert encodes inline: a worker thread costs more than it hides.
OVERLAP_MIN_ROWS = 2000
MAX_ERROR_TEXT = 2000  # last_error / sync_log.error are for humans: keep them bounded


# ---------------------------------------------------------------------------------- values


class UuidArray:
    """A binary ``uuid[]`` parameter (what :func:`codec.uuid_array_binary` produced)."""

    __slots__ = ("count", "data")

    def __init__(self, data: bytes, count: int) -> None:
        self.data = data
        self.count = count

    def __repr__(self) -> str:
        return f"UuidArray({self.count} ids)"


class _UuidArrayDumper(Dumper):
    format = pq.Format.BINARY
    oid = UUID_ARRAY_OID

    def dump(self, obj: UuidArray) -> bytes:
        return obj.data


def uuid_param(ids: pa.Array | pa.ChunkedArray | Sequence[Any]) -> UuidArray:
    """A binary ``uuid[]`` parameter for ``= ANY(%s)``."""
    arr = id_array(ids)
    return UuidArray(codec.uuid_array_binary(arr), len(arr))


def _clean_text(text: object) -> str:
    """PostgreSQL text cannot hold NUL; long messages are cut."""
    s = str(text).replace("\x00", "\\x00")
    return s if len(s) <= MAX_ERROR_TEXT else s[: MAX_ERROR_TEXT - 1] + "…"


def _ids_with_texts(
    ids: Sequence[Any] | pa.Array, errors: Sequence[str]
) -> tuple[UuidArray, list[str]] | None:
    """The ids as one ``uuid[]`` parameter and their error texts (cleaned), checked to pair up
    one to one; None when there are no ids."""
    arr = id_array(ids)
    if len(arr) != len(errors):
        raise ValueError(f"{len(arr)} ids but {len(errors)} error texts")
    if not len(arr):
        return None
    return UuidArray(codec.uuid_array_binary(arr), len(arr)), [_clean_text(e) for e in errors]


async def _id_column(cur: psycopg.AsyncCursor[Any]) -> pa.Array:
    """The uuid first column of a cursor's rows as ``fixed_size_binary(16)``, in row order."""
    return pa.array([r[0].bytes for r in await cur.fetchall()], type=pa.binary(16))


def _check_tenant_id(tenant_id: object) -> int:
    if isinstance(tenant_id, bool) or not isinstance(tenant_id, int):
        raise TypeError(f"tenant_id must be an int, got {tenant_id!r}")
    return tenant_id


@dataclass(frozen=True, slots=True)
class TenantRow:
    """A row of ``tenant``. Its ``repr``/``str`` never show the API key."""

    tenant_id: int
    name: str
    api_key: str | None
    active: bool
    download_batch_size: int
    upload_batch_size: int
    updated_at: datetime | None

    def __repr__(self) -> str:
        key = None if self.api_key is None else "'***'"
        return (
            f"TenantRow(tenant_id={self.tenant_id}, name={self.name!r}, api_key={key}, "
            f"active={self.active}, download_batch_size={self.download_batch_size}, "
            f"upload_batch_size={self.upload_batch_size}, updated_at={self.updated_at!r})"
        )

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class InsertResult:
    """Outcome of an insert: rows written, rows skipped (already present), COPY statements."""

    inserted: int
    skipped: int
    chunks: int


@dataclass(frozen=True, slots=True)
class RejectResult:
    """Outcome of :meth:`SyncDatabase.mark_rejected`: rows updated, of which now quarantined."""

    rejected: int
    quarantined: int


@dataclass(frozen=True, slots=True)
class QueueStatus:
    """One tenant's queue: the five counts partition its readings.

    ``pending``: never rejected, waiting; ``failed``: rejected fewer than ``max_retries``
    times, will retry; ``quarantined``: rejected ``max_retries`` times, skipped until requeued;
    ``in_doubt``: sent to a non-idempotent Client System with an unknown outcome, skipped until
    ``metersync resolve``; ``synchronized``: confirmed by the Client System. The oldest pending
    reading counts pending and failed ones (those the queue still serves). ``oldest_in_doubt_at``
    is when the longest-held in-doubt reading was claimed or held (``in_doubt_since``; its
    ``created_at`` only for a reading held before that column existed) and
    ``oldest_in_doubt_age_s`` how long ago that was: how long the Client System has had to finish
    storing it, not the reading's age (``metersync resolve`` waits for a safety window).
    """

    tenant_id: int
    pending: int
    failed: int
    quarantined: int
    synchronized: int
    oldest_pending_at: datetime | None
    oldest_pending_age_s: float | None
    in_doubt: int = 0
    oldest_in_doubt_at: datetime | None = None
    oldest_in_doubt_age_s: float | None = None


@dataclass(frozen=True, slots=True)
class CycleRow:
    """A row of ``sync_log``."""

    tenant_id: int
    operation: str
    started_at: datetime
    batches: int
    records: int
    statements: int
    duration_s: float
    success: bool
    error: str | None


def describe_dsn(dsn: str) -> str:
    """``user@host:port/dbname`` of a DSN, never its password."""
    try:
        p = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "(unparsable DSN)"
    host = p.get("host") or "localhost"
    port = f":{p['port']}" if p.get("port") else ""
    user = f"{p['user']}@" if p.get("user") else ""
    return f"{user}{host}{port}/{p.get('dbname') or '(default)'}"


# ---------------------------------------------------------------------------------- adapter

#: Server-side ends of a session: admin shutdown, crash shutdown, cannot connect now.
_SHUTDOWN_STATES = frozenset({"57P01", "57P02", "57P03"})

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _operation(
    method: Callable[Concatenate[SyncDatabase, _P], Awaitable[_R]],
) -> Callable[Concatenate[SyncDatabase, _P], Coroutine[Any, Any, _R]]:
    """A public operation of :class:`SyncDatabase`: reopen a lost connection before it, and
    turn a connection lost during it into :class:`DatabaseUnavailableError` (the driver error is
    chained as ``__cause__``). Other database errors pass unchanged."""

    @functools.wraps(method)
    async def run(self: SyncDatabase, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        async with self._use.hold():
            await self._ensure_connection()
            try:
                return await method(self, *args, **kwargs)
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                if not self._connection_lost(exc):
                    raise
                self._lose_locks()
                raise self._unavailable(exc) from exc

    return run


class _TaskLock:
    """An ``asyncio.Lock`` the task holding it may enter again (an operation that calls another
    one, e.g. :meth:`SyncDatabase.fetch_unsynchronized` reflecting the layout first).

    It serializes the adapter's one connection between tasks: without it a task's statement
    could run inside another task's transaction (and be rolled back with it), or between the
    statements of its COPY.
    """

    __slots__ = ("_depth", "_lock", "_owner")

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._owner: asyncio.Task[Any] | None = None
        self._depth = 0

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        """Hold the lock for the body (at once when this task already holds it)."""
        task = asyncio.current_task()
        if task is not None and self._owner is task:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        async with self._lock:
            self._owner, self._depth = task, 1
            try:
                yield
            finally:
                self._owner, self._depth = None, 0


async def _open_connection(dsn: str, options: dict[str, Any]) -> psycopg.AsyncConnection[Any]:
    """A new autocommit connection; failures as :class:`ConfigError` (bad DSN) or
    :class:`DatabaseUnavailableError` naming host and database, never the password."""
    where = describe_dsn(dsn)
    try:
        return await psycopg.AsyncConnection.connect(dsn, autocommit=True, **options)
    except psycopg.ProgrammingError:
        raise ConfigError(f"invalid sync database DSN for {where}") from None
    except (psycopg.OperationalError, OSError) as exc:
        reason = _first_line(exc)
        password = _password(dsn)
        if password:
            reason = reason.replace(password, "***")
        raise DatabaseUnavailableError(
            f"cannot connect to the sync database {where}: {reason}"
        ) from None


def _setup(conn: psycopg.AsyncConnection[Any]) -> psycopg.AsyncConnection[Any]:
    """The session setup of every connection (the first and each reconnect)."""
    conn.adapters.register_dumper(UuidArray, _UuidArrayDumper)
    return conn


class SyncDatabase:
    """The sync database, through one psycopg ``AsyncConnection`` (autocommit).

    Open with ``await SyncDatabase.connect(dsn)``; close with :meth:`close` or ``async with``.
    Several tasks may share one adapter (managers of one process): its operations take turns on
    the connection (an ``asyncio`` lock around each), so one task's statement never lands inside
    another's transaction or COPY. For parallel work give each worker its own adapter.

    A lost connection (terminated backend, server restart, network) fails the operation it
    interrupts with :class:`DatabaseUnavailableError` (a transaction in progress is rolled back by
    the server: nothing half-written), and the next operation opens a new connection with the
    same DSN. Never in the middle of a transaction: a half-done unit of work is not retried.
    Session advisory locks (:meth:`try_lock_tenant`) end with the lost session, and are
    *fenced*: until the lock is released with :meth:`unlock_tenant` (the end of
    :meth:`tenant_lock`), every operation on that tenant's readings raises
    :class:`TenantLockLostError` instead of running on a session that does not hold the lock
    (another worker may hold it by then and be sending the same readings).
    """

    def __init__(
        self,
        conn: psycopg.AsyncConnection[Any],
        dsn_description: str,
        *,
        dsn: str | None = None,
        connect_options: dict[str, Any] | None = None,
    ) -> None:
        self._conn = _setup(conn)
        self._where = dsn_description
        # Kept for reconnecting only; never shown (it may hold the password).
        self._dsn = dsn
        self._connect_options = dict(connect_options or {})
        self._layout: TableLayout | None = None
        self._locks: set[tuple[str, int]] = set()
        # Locks whose session was lost while held: the tenant's work is fenced until released.
        self._lost_locks: set[tuple[str, int]] = set()
        self._use = _TaskLock()
        self._closed = False  # close() was called: no reconnecting
        self._in_transaction = False
        self.statements = 0
        self.reconnects = 0  # connections reopened after one was lost (status, tests)

    @classmethod
    async def connect(cls, dsn: str, *, connect_timeout: float | None = None) -> Self:
        """Connect; an unreachable database raises :class:`DatabaseUnavailableError` naming the
        host and database (never the password). ``connect_timeout`` (seconds) defaults to the
        DSN's own, else 10."""
        options: dict[str, Any] = {}
        if connect_timeout is not None:
            options["connect_timeout"] = max(1, round(connect_timeout))
        elif "connect_timeout" not in _params(dsn):
            options["connect_timeout"] = 10
        conn = await _open_connection(dsn, options)
        return cls(conn, describe_dsn(dsn), dsn=dsn, connect_options=options)

    async def close(self) -> None:
        """Close the connection (session advisory locks are released with it)."""
        self._closed = True
        self._locks.clear()
        self._lost_locks.clear()
        await self._conn.close()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called (a lost connection is reopened, not closed)."""
        return self._closed

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"SyncDatabase({self._where}, statements={self.statements})"

    # -- plumbing ------------------------------------------------------------------------------

    async def _ensure_connection(self) -> None:
        """Before an operation: reopen the connection if the previous one was lost."""
        if self._closed:
            raise DatabaseUnavailableError(
                f"the connection to the sync database {self._where} was closed"
            )
        if not self._conn.closed:
            return
        if self._in_transaction:  # never resume half a unit of work on a new session
            raise DatabaseUnavailableError(
                f"lost the connection to the sync database {self._where} during a transaction; "
                "it was rolled back"
            )
        if self._dsn is None:
            raise DatabaseUnavailableError(
                f"lost the connection to the sync database {self._where} (no DSN to reconnect)"
            )
        self._lose_locks()  # advisory locks end with their session
        conn = await _open_connection(self._dsn, self._connect_options)
        self._conn = _setup(conn)
        self.reconnects += 1
        lost = sorted(self._lost_locks)
        log.log(
            logging.WARNING if lost else logging.INFO,
            "reconnected to the sync database %s%s",
            self._where,
            f" (locks lost with the old session, their cycles stop: {lost})" if lost else "",
        )

    def _lose_locks(self) -> None:
        """The session ended: every lock it held is lost, and fenced until released."""
        self._lost_locks |= self._locks
        self._locks.clear()

    def _fence(self, tenant_id: int) -> None:
        """Refuse work on ``tenant_id``'s readings while one of its locks is lost."""
        lost = sorted(op for op, t in self._lost_locks if t == tenant_id)
        if lost:
            raise TenantLockLostError(
                f"tenant {tenant_id}: the {' and '.join(lost)} lock was lost with the connection "
                f"to the sync database {self._where}; the cycle stops without fetching or "
                "marking anything more (another worker may hold the lock now)"
            )

    def _connection_lost(self, exc: BaseException) -> bool:
        """Whether ``exc`` means the connection itself failed (not just the statement)."""
        if not isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
            return False
        if self._conn.closed:  # psycopg closes a connection whose socket or session is gone
            return True
        state = getattr(exc, "sqlstate", None) or ""
        return state.startswith("08") or state in _SHUTDOWN_STATES

    def _unavailable(self, exc: BaseException) -> DatabaseUnavailableError:
        reason = _first_line(exc)
        password = _password(self._dsn) if self._dsn else None
        if password:
            reason = reason.replace(password, "***")
        return DatabaseUnavailableError(
            f"lost the connection to the sync database {self._where}: {reason} "
            "(a transaction in progress was rolled back; the next operation reconnects)"
        )

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[None]:
        """``conn.transaction()``, remembered so that no reconnect happens inside it."""
        self._in_transaction = True
        try:
            async with self._conn.transaction():
                yield
        finally:
            self._in_transaction = False

    async def _execute(self, query: Any, params: Any = None) -> psycopg.AsyncCursor[Any]:
        """Run one statement (counted) and return its cursor."""
        self.statements += 1
        cur = self._conn.cursor()
        await cur.execute(query, params)
        return cur

    async def _scalar(self, query: Any, params: Any = None) -> Any:
        cur = await self._execute(query, params)
        row = await cur.fetchone()
        return None if row is None else row[0]

    # -- schema --------------------------------------------------------------------------------

    @_operation
    async def migrate(self, *, max_retries: int = 5) -> list[str]:
        """Create or upgrade the schema (spec §2); return the actions applied.

        One transaction under an advisory lock; idempotent (a second run returns ``[]``).
        ``max_retries`` (the setting of the same name) is only used to report how many readings
        of an upgraded old table are quarantined by their ``retry_count``.
        """
        async with self._transaction():
            actions = await migrate(self._execute, max_retries=max_retries)
        self._layout = None
        for action in actions:
            log.info("migrate: %s", action)
        return actions

    @_operation
    async def site_id(self) -> str | None:
        """This site's stable id, generated once by :meth:`migrate` (table ``sync_site``);
        ``None`` when the database was not migrated yet (the caller picks its own fallback).

        Sent as ``X-Metersync-Site`` with uploads, so that a download from a Client System with
        a site filter skips the readings this site uploaded itself (issue 12)."""
        try:
            return await self._scalar(q.GET_SITE_ID)
        except psycopg.errors.UndefinedTable:
            return None

    @_operation
    async def layout(self, *, refresh: bool = False) -> TableLayout:
        """The reflected layout of ``meter_reading`` (read once, then cached).

        Raises :class:`SchemaError` naming the column and its type for an unsupported column.
        """
        if self._layout is None or refresh:
            self._layout = reflect(await catalog_columns(self._execute, q.READING))
        return self._layout

    # -- tenants -------------------------------------------------------------------------------

    @_operation
    async def get_tenant(self, tenant_id: int) -> TenantRow | None:
        """The tenant's row, or ``None``.

        Works on a ``tenant`` table that lacks the batch-size columns (not migrated yet): the
        row then shows the defaults, as the sync cycles use them (spec §3). A table without
        ``api_key`` or ``name`` is a :class:`SchemaError` asking for ``metersync migrate``."""
        cur = await self._execute(q.GET_TENANT_JSON, (_check_tenant_id(tenant_id),))
        row = await cur.fetchone()
        return None if row is None else _tenant_row(row[0])

    @_operation
    async def list_tenants(self) -> list[TenantRow]:
        """All tenants, by id (like :meth:`get_tenant`, also before migrating)."""
        cur = await self._execute(q.LIST_TENANTS_JSON)
        return [_tenant_row(row[0]) for row in await cur.fetchall()]

    @_operation
    async def add_tenant(
        self,
        tenant_id: int,
        name: str,
        api_key: str | None,
        *,
        upload_batch_size: int | None = None,
        download_batch_size: int | None = None,
    ) -> TenantRow:
        """Create a tenant (sizes default to 100 / 1000); ``ConfigError`` if it exists or a
        size is outside 1..10000."""
        _check_tenant_id(tenant_id)
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"tenant {tenant_id}: name must be a non-empty string")
        upload = DEFAULT_UPLOAD_BATCH_SIZE if upload_batch_size is None else upload_batch_size
        download = (
            DEFAULT_DOWNLOAD_BATCH_SIZE if download_batch_size is None else download_batch_size
        )
        _validate_size(tenant_id, "upload_batch_size", upload)
        _validate_size(tenant_id, "download_batch_size", download)
        try:
            async with self._transaction():
                cur = await self._execute(
                    q.ADD_TENANT, (tenant_id, name, api_key, download, upload)
                )
                row = await cur.fetchone()
                await self._execute(q.NOTIFY_TENANT, (tenant_id,))
        except psycopg.errors.UniqueViolation:
            raise ConfigError(f"tenant {tenant_id} already exists") from None
        except (psycopg.errors.UndefinedColumn, psycopg.errors.UndefinedTable) as exc:
            raise _needs_migrate(exc) from None
        assert row is not None
        return TenantRow(*row)

    @_operation
    async def set_tenant_batch_sizes(
        self, tenant_id: int, *, upload: int | None = None, download: int | None = None
    ) -> TenantRow:
        """Change a tenant's sizes and notify other processes (``metersync_tenant`` channel),
        in one transaction. ``ConfigError`` names the field and the valid range;
        :class:`UnknownTenantError` when there is no such tenant."""
        _check_tenant_id(tenant_id)
        if upload is None and download is None:
            raise ConfigError(f"tenant {tenant_id}: give upload and/or download batch size")
        if upload is not None:
            _validate_size(tenant_id, "upload_batch_size", upload)
        if download is not None:
            _validate_size(tenant_id, "download_batch_size", download)
        try:
            async with self._transaction():
                cur = await self._execute(q.SET_TENANT_SIZES, (upload, download, tenant_id))
                row = await cur.fetchone()
                if row is None:
                    raise UnknownTenantError(tenant_id)
                await self._execute(q.NOTIFY_TENANT, (tenant_id,))
        except (psycopg.errors.UndefinedColumn, psycopg.errors.UndefinedTable) as exc:
            raise _needs_migrate(exc) from None
        log.info(
            "tenant %s: batch sizes set to upload_batch_size=%s download_batch_size=%s",
            tenant_id,
            row[5],
            row[4],
        )
        return TenantRow(*row)

    @_operation
    async def get_tenant_batch_config(self, tenant_id: int) -> BatchSizes:
        """The tenant's batch sizes, with the spec §3 fallbacks of
        :func:`metersync.batch_sizes.sizes_from_row` (missing row, column or value: WARNING and
        the default; invalid value: ERROR and the default). Raises only
        :class:`DatabaseUnavailableError` (the connection was lost), never for another database
        problem (that is a WARNING and the defaults)."""
        _check_tenant_id(tenant_id)
        try:
            data = await self._scalar(q.TENANT_BATCH_ROW, (tenant_id,))
        except psycopg.Error as exc:
            if self._connection_lost(exc):
                raise  # DatabaseUnavailableError (``_operation``): defaults cannot help there
            return sizes_after_failed_lookup(tenant_id, exc)
        return sizes_from_row(tenant_id, data)

    # -- upload --------------------------------------------------------------------------------

    @_operation
    async def fetch_unsynchronized(
        self,
        tenant_id: int,
        limit: int,
        *,
        max_retries: int = 5,
        exclude: pa.Array | pa.ChunkedArray | Sequence[Any] | None = None,
        after: tuple[Any, bytes] | None = None,
    ) -> pa.RecordBatch:
        """The tenant's oldest ``limit`` unsynchronized readings (order ``created_at,
        meter_reading_id``), skipping quarantined ones (``retry_count >= max_retries``) and the
        ``exclude`` ids, as a record batch of the upload columns. One COPY statement.
        ``after``: keyset lower bound ``(created_at, id bytes)`` (only readings after it)."""
        self._fence(tenant_id)
        layout = await self.layout()
        statement = self.fetch_statement(
            tenant_id, limit, max_retries=max_retries, exclude=exclude, layout=layout, after=after
        )
        self.statements += 1
        async with self._conn.cursor() as cur, cur.copy(statement) as copy:
            chunks = await _read_copy(self._conn, copy)
        return codec.from_copy_binary(b"".join(chunks), layout.upload_schema)

    async def companion(self, operation: str = "upload") -> CompanionReader | None:
        """A second session for the queue READS that run alongside this adapter's work (the
        upload fetches the next batch on it while this session marks the previous one);
        ``None`` when none can be opened here (no DSN). See :class:`CompanionReader`. The
        caller closes it."""
        if self._dsn is None or self._closed:
            return None
        try:
            conn = await asyncio.to_thread(
                psycopg.Connection.connect, self._dsn, autocommit=True, **self._connect_options
            )
        except psycopg.Error as exc:
            raise self._unavailable(exc) from None
        return CompanionReader(self, conn, operation)

    def fetch_statement(
        self,
        tenant_id: int,
        limit: int,
        *,
        max_retries: int = 5,
        exclude: pa.Array | pa.ChunkedArray | Sequence[Any] | None = None,
        layout: TableLayout | None = None,
        copy: bool = True,
        after: tuple[Any, bytes] | None = None,
        held_by: tuple[int, str] | None = None,
    ) -> Any:
        """The exact COPY statement :meth:`fetch_unsynchronized` runs; with ``copy=False``
        its inner ``SELECT`` (what a test EXPLAINs: COPY itself cannot be explained)."""
        _check_tenant_id(tenant_id)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive integer, got {limit!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 1:
            raise ValueError(f"max_retries must be a positive integer, got {max_retries!r}")
        layout = layout or self._layout
        if layout is None:
            raise RuntimeError("call await layout() first")
        literal = None
        if exclude is not None and len(exclude):
            # Hex digits only: safe as a literal (COPY takes no parameters).
            ids = id_array(exclude)
            literal = "{" + ",".join(b.hex() for b in ids.to_pylist() if b is not None) + "}"
        select = q.queue_select(
            layout.upload_columns,
            tenant_id,
            limit,
            max_retries,
            literal,
            after=after,
            held_by=held_by,
        )
        return q.copy_out(select) if copy else select

    @_operation
    async def mark_synchronized(
        self, tenant_id: int, ids: pa.Array | pa.ChunkedArray | Sequence[Any]
    ) -> int:
        """Mark readings the Client System confirmed: ``is_synchronized = true, sync_status =
        'synchronized', last_error = NULL``. ONE statement; returns the rows newly marked
        (already synchronized ones are not written again). Only ``tenant_id``'s rows change."""
        _check_tenant_id(tenant_id)
        self._fence(tenant_id)
        param = uuid_param(ids)
        if not param.count:
            return 0
        cur = await self._execute(q.MARK_SYNCHRONIZED, (tenant_id, param))
        return cur.rowcount

    @_operation
    async def mark_rejected(
        self,
        tenant_id: int,
        ids: Sequence[Any] | pa.Array,
        errors: Sequence[str],
        max_retries: int = 5,
    ) -> RejectResult:
        """Record individual rejections: ``sync_status = 'failed', retry_count + 1,
        last_error``. ONE statement. ``quarantined`` counts the rows that reached
        ``max_retries`` (the queue skips them until :meth:`requeue`)."""
        _check_tenant_id(tenant_id)
        self._fence(tenant_id)
        paired = _ids_with_texts(ids, errors)
        if paired is None:
            return RejectResult(0, 0)
        cur = await self._execute(q.MARK_REJECTED, (*paired, tenant_id, max_retries))
        flags = await cur.fetchall()
        return RejectResult(len(flags), sum(1 for (f,) in flags if f))

    @_operation
    async def requeue(
        self, tenant_id: int, ids: pa.Array | pa.ChunkedArray | Sequence[Any] | None = None
    ) -> int:
        """Put rejected readings back in the queue (``retry_count = 0, sync_status =
        'pending'``): the given ids, or every rejected unsynchronized reading of the tenant."""
        _check_tenant_id(tenant_id)
        self._fence(tenant_id)
        return await self._ids_or_all(tenant_id, ids, q.REQUEUE_IDS, q.REQUEUE_ALL)

    @_operation
    async def quarantined_ids(self, tenant_id: int, max_retries: int = 5) -> pa.Array:
        """Ids of the tenant's quarantined readings (oldest first), ``fixed_size_binary(16)``."""
        _check_tenant_id(tenant_id)
        cur = await self._execute(q.QUARANTINED_IDS, (tenant_id, max_retries))
        return await _id_column(cur)

    # -- in doubt (non-idempotent Client System; upload owner) ----------------------------------

    @_operation
    async def claim_unsynchronized(
        self,
        tenant_id: int,
        limit: int,
        *,
        max_retries: int = 5,
        after: tuple[Any, bytes] | None = None,
    ) -> pa.RecordBatch:
        """Claim the tenant's oldest ``limit`` queue readings (``sync_status = 'in_doubt'``,
        committed) and return them in queue order, in ONE statement: ``COPY (UPDATE ...
        RETURNING ...) TO STDOUT`` (:func:`sql.queue_claim`). Readings already in doubt are
        skipped; ``after`` is a keyset lower bound ``(created_at, id bytes)``."""
        _check_tenant_id(tenant_id)
        self._fence(tenant_id)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive integer, got {limit!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 1:
            raise ValueError(f"max_retries must be a positive integer, got {max_retries!r}")
        layout = await self.layout()
        statement = q.copy_out(
            q.queue_claim(layout.upload_columns, tenant_id, limit, max_retries, after)
        )
        self.statements += 1
        async with self._conn.cursor() as cur, cur.copy(statement) as copy:
            chunks = await _read_copy(self._conn, copy)
        batch = codec.from_copy_binary(b"".join(chunks), layout.upload_schema)
        if batch.num_rows > 1:  # RETURNING has no order: restore the queue order
            batch = batch.sort_by([("created_at", "ascending"), ("meter_reading_id", "ascending")])
        return batch

    @_operation
    async def release_in_doubt(
        self, tenant_id: int, ids: pa.Array | pa.ChunkedArray | Sequence[Any] | None = None
    ) -> int:
        """Put in-doubt readings back in the queue with the status they had (``failed`` when
        rejected before, else ``pending``): the given ids, or all of the tenant's. ONE
        statement; returns the rows released."""
        _check_tenant_id(tenant_id)
        if ids is not None:
            self._fence(tenant_id)
        return await self._ids_or_all(
            tenant_id, ids, q.RELEASE_IN_DOUBT_IDS, q.RELEASE_IN_DOUBT_ALL
        )

    @_operation
    async def hold_in_doubt(
        self, tenant_id: int, ids: Sequence[Any] | pa.Array, errors: Sequence[str]
    ) -> int:
        """Keep readings in doubt and record why (``last_error``). ONE statement."""
        _check_tenant_id(tenant_id)
        self._fence(tenant_id)
        paired = _ids_with_texts(ids, errors)
        if paired is None:
            return 0
        cur = await self._execute(q.HOLD_IN_DOUBT, (*paired, tenant_id))
        return cur.rowcount

    @_operation
    async def mark_in_doubt_synchronized(
        self, tenant_id: int, ids: pa.Array | pa.ChunkedArray | Sequence[Any] | None = None
    ) -> int:
        """Mark in-doubt readings synchronized (an operator found them on the Client System):
        the given ids, or all of the tenant's. ONE statement; returns the rows marked."""
        _check_tenant_id(tenant_id)
        return await self._ids_or_all(
            tenant_id, ids, q.MARK_IN_DOUBT_SYNCHRONIZED_IDS, q.MARK_IN_DOUBT_SYNCHRONIZED_ALL
        )

    @_operation
    async def in_doubt_ids(self, tenant_id: int) -> pa.Array:
        """Ids of the tenant's in-doubt readings (oldest first), ``fixed_size_binary(16)``."""
        _check_tenant_id(tenant_id)
        cur = await self._execute(q.IN_DOUBT_IDS, (tenant_id,))
        return await _id_column(cur)

    @_operation
    async def in_doubt_held(self, tenant_id: int) -> tuple[pa.Array, pa.Array]:
        """The tenant's in-doubt readings (oldest first) and how long each has been held:
        ``(ids fixed_size_binary(16), seconds float64)``, seconds by the database's clock since
        the reading was claimed or held (``in_doubt_since``). ONE statement."""
        _check_tenant_id(tenant_id)
        cur = await self._execute(q.IN_DOUBT_HELD, (tenant_id,))
        rows = await cur.fetchall()
        return (
            pa.array([r[0].bytes for r in rows], type=pa.binary(16)),
            pa.array([r[1] for r in rows], type=pa.float64()),
        )

    async def _ids_or_all(
        self,
        tenant_id: int,
        ids: pa.Array | pa.ChunkedArray | Sequence[Any] | None,
        ids_sql: Any,
        all_sql: Any,
    ) -> int:
        """ONE statement over the given ids (``ids_sql``; no ids: no statement) or, ``ids``
        None, over all of the tenant's (``all_sql``); returns the rows it changed."""
        if ids is None:
            cur = await self._execute(all_sql, (tenant_id,))
        else:
            param = uuid_param(ids)
            if not param.count:
                return 0
            cur = await self._execute(ids_sql, (tenant_id, param))
        return cur.rowcount

    # -- insert / download ---------------------------------------------------------------------

    @_operation
    async def insert_readings(
        self, batch: pa.RecordBatch, chunk_rows: int, *, synchronized: bool = False
    ) -> InsertResult:
        """Insert readings (upload columns + ``tenant_id``), skipping ids already present.

        One transaction: one existing-id check per tenant in the batch, then one binary COPY
        per chunk of ``chunk_rows``. A concurrent writer inserting one of the ids in between
        (the COPY then meets its row): the transaction is redone through a staging table
        (:meth:`_insert_staged`), which skips whatever is present by then.
        """
        layout = await self.layout()
        prepared = insert_batch(batch, _typed_columns(layout), None, synchronized)
        if prepared.num_rows == 0:
            return InsertResult(0, 0, 0)
        return await self._insert_unit(prepared, chunk_rows)

    @_operation
    async def store_download_page(
        self, tenant_id: int, batch: pa.RecordBatch, chunk_rows: int, next_cursor: str | None
    ) -> InsertResult:
        """Store a downloaded page as synchronized readings and advance the tenant's cursor, in
        ONE transaction (a crash replays the page and duplicates nothing)."""
        _check_tenant_id(tenant_id)
        self._fence(tenant_id)
        layout = await self.layout()
        prepared = insert_batch(batch, _typed_columns(layout), tenant_id, True)

        async def cursor() -> None:
            failpoint("download.before_commit")
            await self._execute(q.UPSERT_CURSOR, (tenant_id, next_cursor))

        return await self._insert_unit(prepared, chunk_rows, cursor)

    async def _insert_unit(
        self,
        batch: pa.RecordBatch,
        chunk_rows: int,
        then: Callable[[], Awaitable[None]] | None = None,
    ) -> InsertResult:
        """One transaction: insert ``batch`` (skipping present ids), then ``then()``.

        The fast path (existing-id check, then COPY straight into ``meter_reading``) fails with
        a unique violation when another writer inserts one of the ids between the check and
        the COPY. Then the whole unit is redone once through :meth:`_insert_staged`, which
        cannot fail so: no raw driver error reaches the caller, nothing is written twice.
        """
        _check_chunk_rows(chunk_rows)
        try:
            async with self._transaction():
                result = (
                    await self._insert(batch, chunk_rows)
                    if batch.num_rows
                    else InsertResult(0, 0, 0)
                )
                if then is not None:
                    await then()
            return result
        except psycopg.errors.UniqueViolation as exc:
            log.info(
                "a concurrent writer inserted some of these %d readings (%s); redoing the insert "
                "through a staging table",
                batch.num_rows,
                exc.diag.constraint_name or "unique violation",
            )
        try:
            async with self._transaction():
                result = await self._insert_staged(batch, chunk_rows)
                if then is not None:
                    await then()
            return result
        except psycopg.errors.UniqueViolation as exc:
            # Not the key (ON CONFLICT covers it): a unique constraint of the site's own.
            raise SchemaError(
                f"readings violate the unique constraint {exc.diag.constraint_name} of "
                f"meter_reading ({_first_line(exc)}); only the key (tenant_id, meter_reading_id) "
                "may be unique for metersync to store them; nothing was written"
            ) from None

    async def _insert_staged(self, batch: pa.RecordBatch, chunk_rows: int) -> InsertResult:
        """COPY into a temporary copy of ``meter_reading`` (dropped at commit), then one
        ``INSERT ... SELECT ... ON CONFLICT (tenant_id, meter_reading_id) DO NOTHING``: rows
        present by then, committed by anyone, are skipped instead of failing the unit."""
        names = batch.schema.names
        await self._execute(q.CREATE_STAGE)
        statement = q.copy_in(names, table=q.STAGE)
        count = 0
        async with self._conn.cursor() as cur:
            for chunk in codec.slices(batch, chunk_rows):
                self.statements += 1
                async with cur.copy(statement) as copy:
                    await copy.write(codec.copy_binary(chunk))
                count += 1
        cur = await self._execute(q.insert_from_stage(names))
        inserted = max(cur.rowcount, 0)
        return InsertResult(inserted, batch.num_rows - inserted, count)

    async def _insert(self, batch: pa.RecordBatch, chunk_rows: int) -> InsertResult:
        _check_chunk_rows(chunk_rows)
        total = batch.num_rows
        # The existing-id check (a primary-key probe per id, ~12% of the COPY's own time) runs
        # on the server while a worker thread encodes the chunks (the C encoder releases the
        # GIL): the encoding is then free, and it is only redone if the check found readings
        # to skip.
        check = asyncio.ensure_future(self._present_ids(batch))
        encoded: list[bytes] | None = None
        try:
            if total >= OVERLAP_MIN_ROWS:
                encoded = await asyncio.to_thread(_encode_chunks, batch, chunk_rows)
        finally:
            present = await check
        if present:
            keep = pc.invert(pc.is_in(batch.column("meter_reading_id"), value_set=present))
            batch = batch.filter(keep)
            encoded = None
        chunks = (
            encoded
            if encoded is not None
            else (codec.copy_binary(c) for c in codec.slices(batch, chunk_rows))
        )
        statement = q.copy_in(batch.schema.names)
        count = 0
        async with self._conn.cursor() as cur:
            for data in chunks:
                self.statements += 1
                async with cur.copy(statement) as copy:
                    await copy.write(data)
                count += 1
        return InsertResult(batch.num_rows, total - batch.num_rows, count)

    async def _present_ids(self, batch: pa.RecordBatch) -> pa.Array:
        """Ids of the batch already stored: one statement per tenant in the batch."""
        ids = batch.column("meter_reading_id")
        tenants = batch.column("tenant_id")
        distinct = pc.unique(tenants).to_pylist()
        present: list[bytes] = []
        for tenant in distinct:
            mine = ids if len(distinct) == 1 else ids.filter(pc.equal(tenants, tenant))
            cur = await self._execute(q.EXISTING_IDS, (tenant, uuid_param(mine)))
            present += [r[0].bytes for r in await cur.fetchall()]
        return pa.array(present, type=pa.binary(16))

    @_operation
    async def get_download_cursor(self, tenant_id: int) -> str | None:
        """Where the tenant's download resumes (``None``: from the beginning)."""
        return await self._scalar(q.GET_CURSOR, (_check_tenant_id(tenant_id),))

    # -- locks ---------------------------------------------------------------------------------

    @_operation
    async def try_lock_tenant(self, tenant_id: int, operation: str) -> bool:
        """Take the tenant's lock for ``operation`` (session advisory lock, released by
        :meth:`unlock_tenant` or when the connection ends). ``False`` if anyone holds it,
        this adapter included."""
        _check_tenant_id(tenant_id)
        if not isinstance(operation, str) or not operation:
            raise ValueError(f"operation must be a non-empty string, got {operation!r}")
        if (operation, tenant_id) in self._locks | self._lost_locks:
            # Advisory locks are re-entrant per session; ours are not. A lost lock stays fenced
            # until its holder releases it (unlock_tenant).
            return False
        got = bool(await self._scalar(q.TRY_LOCK, (q.lock_key(operation, tenant_id),)))
        if got:
            self._locks.add((operation, tenant_id))
        return got

    @contextlib.asynccontextmanager
    async def tenant_lock(self, tenant_id: int, operation: str) -> AsyncIterator[None]:
        """Hold the tenant's ``operation`` lock for the body of an ``async with``.

        Raises :class:`TenantBusyError` at once when another worker holds it (two uploaders
        never send the same reading at the same time); releases it however the body ends, and
        a release on a lost connection never masks the body's own error.
        """
        if not await self.try_lock_tenant(tenant_id, operation):
            raise TenantBusyError(
                f"tenant {tenant_id}: another worker holds the {operation} lock; cycle skipped"
            )
        try:
            yield
        finally:
            await self.unlock_tenant(tenant_id, operation)

    async def unlock_tenant(self, tenant_id: int, operation: str) -> bool:
        """Release a lock taken by :meth:`try_lock_tenant`; ``False`` if it was not held.

        Never reconnects and never raises for a lost connection (``False``): the lock ended
        with its session, and the caller's own error (often that same lost connection) must
        not be masked by one from its cleanup. Releasing a lost lock ends its fence."""
        key = (operation, tenant_id)
        if key in self._lost_locks:
            self._lost_locks.discard(key)
            return False
        if key not in self._locks:
            return False
        async with self._use.hold():
            self._locks.discard(key)
            if self._closed or self._conn.closed:
                return False
            try:
                return bool(await self._scalar(q.UNLOCK, (q.lock_key(operation, tenant_id),)))
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                if not self._connection_lost(exc):
                    raise
                log.debug("tenant %s: %s lock ended with the lost connection", tenant_id, operation)
                return False

    # -- bookkeeping ---------------------------------------------------------------------------

    @_operation
    async def write_sync_log(
        self,
        tenant_id: int,
        operation: str,
        batches: int,
        records: int,
        statements: int,
        duration_s: float,
        success: bool,
        error: str | None = None,
    ) -> None:
        """Append one cycle to ``sync_log``."""
        await self._execute(
            q.WRITE_SYNC_LOG,
            (
                _check_tenant_id(tenant_id),
                operation,
                float(duration_s),
                batches,
                records,
                statements,
                float(duration_s),
                bool(success),
                None if error is None else _clean_text(error),
            ),
        )

    @_operation
    async def write_sync_logs(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Append many cycles to ``sync_log`` in ONE round trip (a pipeline); each row has the
        keyword arguments of :meth:`write_sync_log`. Many tenants' bookkeeping, batched."""
        params = [
            (
                _check_tenant_id(r["tenant_id"]),
                r["operation"],
                float(r["duration_s"]),
                r["batches"],
                r["records"],
                r["statements"],
                float(r["duration_s"]),
                bool(r["success"]),
                None if r.get("error") is None else _clean_text(r["error"]),
            )
            for r in rows
        ]
        if not params:
            return
        self.statements += 1
        async with self._conn.cursor() as cur:
            await cur.executemany(q.WRITE_SYNC_LOG, params)

    @_operation
    async def recent_cycles(self, tenant_id: int, limit: int = 10) -> list[CycleRow]:
        """The tenant's last ``limit`` cycles, newest first."""
        cur = await self._execute(q.RECENT_CYCLES, (_check_tenant_id(tenant_id), limit))
        return [CycleRow(*row) for row in await cur.fetchall()]

    @_operation
    async def queue_status(
        self, tenant_id: int | None = None, max_retries: int = 5
    ) -> list[QueueStatus]:
        """Queue counts per tenant (one tenant, or every tenant of table ``tenant``)."""
        if tenant_id is None:
            cur = await self._execute(q.QUEUE_STATUS_ALL, {"r": max_retries})
        else:
            cur = await self._execute(
                q.QUEUE_STATUS_ONE, {"r": max_retries, "t": _check_tenant_id(tenant_id)}
            )
        return [QueueStatus(*row) for row in await cur.fetchall()]


class CompanionReader:
    """A second, synchronous session that reads the upload queue for a :class:`SyncDatabase`
    (its *holder*) in a worker thread, while the holder's own session marks.

    Synchronous on purpose: psycopg's async COPY costs an event-loop wait per row (100,000 wide
    rows in 1000-row pages: 0.28 s of client CPU), the sync one in a thread 0.11 s
    (upload-speed notes) — and the rows are decoded in that thread too.

    Reads only, fenced by the holder's ``operation`` lock: :meth:`fetch_unsynchronized` raises
    :class:`TenantLockLostError` when the holder already knows its lock is lost, and its COPY
    runs only while the holder's session holds the lock — PostgreSQL checks ``pg_locks`` in the
    same statement (``queue_select(held_by=...)``), so a lock lost without the holder noticing
    yet is caught too (and then fences the holder). Writes (marks, claims) stay on the session
    holding the lock. A lost companion session raises :class:`DatabaseUnavailableError`; it is
    never reopened (the cycle ends; the next one opens a new companion).
    """

    def __init__(self, holder: SyncDatabase, conn: psycopg.Connection[Any], operation: str) -> None:
        self._holder = holder
        self._conn = conn
        self._operation = operation
        self._lock = threading.Lock()  # the read and close() never overlap on the connection
        self.statements = 0

    async def fetch_unsynchronized(
        self,
        tenant_id: int,
        limit: int,
        *,
        max_retries: int = 5,
        after: tuple[Any, bytes] | None = None,
    ) -> pa.RecordBatch:
        """As :meth:`SyncDatabase.fetch_unsynchronized`, read by this session. One COPY."""
        holder = self._holder
        holder._fence(tenant_id)
        layout = holder._layout or await holder.layout()
        held_by = (holder._conn.info.backend_pid, q.lock_key(self._operation, tenant_id))
        statement = holder.fetch_statement(
            tenant_id, limit, max_retries=max_retries, layout=layout, after=after, held_by=held_by
        )
        self.statements += 1
        try:
            return await asyncio.to_thread(self._read, statement, layout.upload_schema)
        except psycopg.errors.DivisionByZero:  # the holder's session does not hold the lock
            lock = (self._operation, tenant_id)
            if lock in holder._locks:  # lost without the holder noticing yet: fence it now
                holder._locks.discard(lock)
                holder._lost_locks.add(lock)
            holder._fence(tenant_id)
            raise TenantLockLostError(
                f"tenant {tenant_id}: the {self._operation} lock is not held by the session "
                "this read is for; nothing fetched"
            ) from None
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise DatabaseUnavailableError(
                f"lost the second connection to the sync database {holder._where}: "
                f"{_first_line(exc)}"
            ) from None

    def _read(self, statement: Any, schema: pa.Schema) -> pa.RecordBatch:
        with self._lock, self._conn.cursor() as cur, cur.copy(statement) as copy:
            data = b"".join(copy)
        return codec.from_copy_binary(data, schema)

    async def close(self) -> None:
        """Close the session (after a read in progress, if any)."""

        def close() -> None:
            with self._lock:
                self._conn.close()

        await asyncio.to_thread(close)


# ---------------------------------------------------------------------------------- helpers


def _encode_chunks(batch: pa.RecordBatch, chunk_rows: int) -> list[bytes]:
    return [codec.copy_binary(chunk) for chunk in codec.slices(batch, chunk_rows)]


async def _read_copy(conn: psycopg.AsyncConnection[Any], copy: Any) -> list[Any]:
    """All rows of a COPY OUT, through psycopg's public API (``async for data in copy``).

    A private per-row generator inside one ``conn.wait`` was measured against it (issue 9 item
    7, docs/store-notes.md): 1.00-1.27x on 100,000 wide rows (median of three runs 1.06x) and
    0.99-1.00x on the 1000-row pages the engine fetches, so the public API it is.
    """
    del conn  # kept in the signature: callers pass the connection the COPY runs on
    return [data async for data in copy]


def _check_chunk_rows(chunk_rows: object) -> None:
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")


def _needs_migrate(exc: BaseException) -> ConfigError:
    """A tenant write on a table ``tenant`` that lacks what it writes (not migrated yet)."""
    return ConfigError(
        f"table tenant is not up to date ({_first_line(exc)}): run `metersync migrate` first"
    )


def _tenant_row(data: dict[str, Any]) -> TenantRow:
    """A :class:`TenantRow` from ``to_jsonb(tenant)``: absent size columns (an old table) show
    their defaults, an absent ``active`` means active; no ``name``/``api_key``: SchemaError."""
    missing = [c for c in ("name", "api_key") if c not in data]
    if missing:
        raise SchemaError(
            f"table tenant has no column {', '.join(missing)}: run `metersync migrate`"
        )
    updated = data.get("updated_at")
    return TenantRow(
        tenant_id=int(data["tenant_id"]),
        name=data["name"],
        api_key=data["api_key"],
        active=bool(data.get("active", True)),
        download_batch_size=_stored_size(data, "download_batch_size"),
        upload_batch_size=_stored_size(data, "upload_batch_size"),
        updated_at=None if updated is None else datetime.fromisoformat(updated),
    )


def _stored_size(data: dict[str, Any], column: str) -> int:
    value = data.get(column)
    return SIZE_DEFAULTS[column] if value is None else int(value)


def _validate_size(tenant_id: int, field: str, value: object) -> None:
    problem = batch_size_problem(value)
    if problem:
        raise ConfigError(
            f"tenant {tenant_id}: {field} {problem} "
            f"(valid range {MIN_BATCH_SIZE}..{MAX_BATCH_SIZE})"
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _params(dsn: str) -> dict[str, Any]:
    try:
        return conninfo_to_dict(dsn)
    except psycopg.Error:
        return {}


def _password(dsn: str) -> str | None:
    return _params(dsn).get("password") or None


def _typed_columns(layout: TableLayout) -> list[tuple[str, pa.DataType]]:
    """The upload columns of ``meter_reading`` with their Arrow types, in table order."""
    return [(c.name, c.arrow_type) for c in layout.columns]

"""The session under :class:`~metersync.store.database.SyncDatabase`: one autocommit psycopg
connection, opened and reopened after a loss, serialized between tasks, counting its
statements; transactions that are never resumed on a new session; the ``_operation`` decorator
every public operation wears; the fence of advisory locks lost with their session; and the
layout of ``meter_reading`` reflected once per adapter (migrate / layout).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, Self, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict

from metersync.errors import (
    ConfigError,
    DatabaseUnavailableError,
    TenantLockLostError,
)
from metersync.store import sql as q
from metersync.store.schema import TableLayout, catalog_columns, migrate, reflect
from metersync.store.values import UuidArray, _UuidArrayDumper

log = logging.getLogger("metersync.store.database")  # one logger for the whole adapter


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


#: Server-side ends of a session: admin shutdown, crash shutdown, cannot connect now.
_SHUTDOWN_STATES = frozenset({"57P01", "57P02", "57P03"})

_P = ParamSpec("_P")
_R = TypeVar("_R")
_C = TypeVar("_C", bound="Connection")


def _operation(
    method: Callable[Concatenate[_C, _P], Awaitable[_R]],
) -> Callable[Concatenate[_C, _P], Coroutine[Any, Any, _R]]:
    """A public operation of :class:`SyncDatabase`: reopen a lost connection before it, and
    turn a connection lost during it into :class:`DatabaseUnavailableError` (the driver error is
    chained as ``__cause__``). Other database errors pass unchanged."""

    @functools.wraps(method)
    async def run(self: _C, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
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


class Connection:
    """The connection and its plumbing, shared by the operation groups composed into
    :class:`~metersync.store.database.SyncDatabase` (which documents the behaviour)."""

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
    async def layout(self, *, refresh: bool = False) -> TableLayout:
        """The reflected layout of ``meter_reading`` (read once, then cached).

        Raises :class:`SchemaError` naming the column and its type for an unsupported column.
        """
        if self._layout is None or refresh:
            self._layout = reflect(await catalog_columns(self._execute, q.READING))
        return self._layout


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

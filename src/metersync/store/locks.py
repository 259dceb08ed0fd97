"""Per-tenant, per-operation session advisory locks (two workers never run the same tenant's
upload or download at once); a lock lost with its session stays fenced until released.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence

import psycopg

from metersync.errors import (
    TenantBusyError,
)
from metersync.store import sql as q
from metersync.store._connection import Connection, _operation
from metersync.store.values import _check_tenant_id

log = logging.getLogger("metersync.store.database")  # one logger for the whole adapter


class LockOps(Connection):
    """The tenant locks of :class:`~metersync.store.database.SyncDatabase`."""

    async def try_lock_tenant(self, tenant_id: int, operation: str) -> bool:
        """Take the tenant's lock for ``operation`` (session advisory lock, released by
        :meth:`unlock_tenant` or when the connection ends). ``False`` if anyone holds it,
        this adapter included."""
        return await self.try_lock_tenants([tenant_id], operation) == [tenant_id]

    @_operation
    async def try_lock_tenants(self, tenant_ids: Sequence[int], operation: str) -> list[int]:
        """Take the ``operation`` lock of several tenants in ONE statement (a group of small
        tenants, issue 12); returns the tenants locked, in the given order. A tenant anyone
        holds (this adapter included, or whose lock it lost) is not locked; release each with
        :meth:`unlock_tenant` or all with :meth:`unlock_tenants`."""
        if not isinstance(operation, str) or not operation:
            raise ValueError(f"operation must be a non-empty string, got {operation!r}")
        for tenant_id in tenant_ids:
            _check_tenant_id(tenant_id)
        if len(set(tenant_ids)) != len(tenant_ids):
            raise ValueError(f"tenant_ids must not repeat a tenant, got {list(tenant_ids)!r}")
        # Advisory locks are re-entrant per session; ours are not. A lost lock stays fenced
        # until its holder releases it (unlock_tenant).
        mine = self._locks | self._lost_locks
        todo = [t for t in tenant_ids if (operation, t) not in mine]
        if not todo:
            return []
        cur = await self._execute(q.TRY_LOCKS, ([q.lock_key(operation, t) for t in todo],))
        got = [t for t, (ok,) in zip(todo, await cur.fetchall(), strict=True) if ok]
        self._locks.update((operation, t) for t in got)
        return got

    def holds_lock(self, tenant_id: int, operation: str) -> bool:
        """Whether this adapter holds the tenant's ``operation`` lock (and has not lost it)."""
        key = (operation, tenant_id)
        return key in self._locks and key not in self._lost_locks

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
        return await self.unlock_tenants([tenant_id], operation) == 1

    async def unlock_tenants(self, tenant_ids: Sequence[int], operation: str) -> int:
        """Release the ``operation`` locks of several tenants in ONE statement, as
        :meth:`unlock_tenant` does one (those not held are skipped, a lost connection never
        raises); returns how many the server released."""
        held = []
        for tenant_id in tenant_ids:
            key = (operation, tenant_id)
            if key in self._lost_locks:
                self._lost_locks.discard(key)
            elif key in self._locks:
                held.append(tenant_id)
        if not held:
            return 0
        async with self._use.hold():
            self._locks.difference_update((operation, t) for t in held)
            if self._closed or self._conn.closed:
                return 0
            try:
                cur = await self._execute(q.UNLOCKS, ([q.lock_key(operation, t) for t in held],))
                return sum(1 for (released,) in await cur.fetchall() if released)
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                if not self._connection_lost(exc):
                    raise
                log.debug("%s locks of %s ended with the lost connection", operation, held)
                return 0

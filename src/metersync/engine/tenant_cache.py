"""Tenant cache: each tenant's batch sizes and API key, kept in memory between cycles (spec §3).

An entry is loaded from the sync database on first use and served from memory afterwards, until
one of three things drops it:

* :meth:`TenantCache.invalidate` (the library call that changes a tenant does this in-process);
* a ``NOTIFY metersync_tenant, '<tenant id>'`` from any process, heard by :meth:`listen` on its
  own connection (``SyncDatabase.set_tenant_batch_sizes`` sends it in the same transaction as
  the UPDATE, so a change reaches every running sync process before its next cycle);
* the time-to-live, the safety net for a lost listener connection or a change made by hand in
  SQL without a NOTIFY.

The upload and download managers read the cache once at the start of each cycle, so a change
applies from the next cycle on, without a restart and never in the middle of a batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import psycopg

from metersync.batch_sizes import BatchSizes
from metersync.errors import DatabaseUnavailableError
from metersync.store.database import describe_dsn

__all__ = ["NOTIFY_CHANNEL", "TenantCache", "TenantSettings"]

log = logging.getLogger(__name__)

#: The channel ``set_tenant_batch_sizes`` notifies; the payload is the tenant id.
NOTIFY_CHANNEL = "metersync_tenant"

# Reconnect delays of the listener after its connection fails (seconds, doubling, capped).
_LISTEN_RETRY_FIRST = 0.5
_LISTEN_RETRY_MAX = 30.0


class _TenantSource(Protocol):
    """What the cache needs from the database adapter (``SyncDatabase`` provides it)."""

    async def get_tenant_batch_config(self, tenant_id: int) -> BatchSizes: ...

    async def get_tenant(self, tenant_id: int) -> object | None: ...


@dataclass(frozen=True, slots=True)
class TenantSettings:
    """What a sync cycle needs to know about its tenant. ``repr`` never shows the API key."""

    tenant_id: int
    api_key: str | None = field(repr=False)
    batch: BatchSizes

    def __repr__(self) -> str:
        key = "<set>" if self.api_key else None
        return f"TenantSettings(tenant_id={self.tenant_id}, api_key={key}, batch={self.batch!r})"


@dataclass(slots=True)
class _Entry:
    settings: TenantSettings
    loaded_at: float


class TenantCache:
    """Per-tenant settings served from memory, invalidated by call, NOTIFY or time-to-live.

    ``db`` is the :class:`~metersync.store.database.SyncDatabase` the entries are loaded from;
    ``ttl_seconds`` bounds how long an entry lives without any invalidation (``0`` disables
    caching, useful for tests that want every call to reach the database).
    """

    def __init__(self, db: _TenantSource, *, ttl_seconds: float = 60.0) -> None:
        if ttl_seconds < 0:
            raise ValueError(f"ttl_seconds must be >= 0, got {ttl_seconds}")
        self._db = db
        self._ttl = ttl_seconds
        self._entries: dict[int, _Entry] = {}
        # Bumped by every invalidation; a load that raced with one is not cached (it may have
        # read the row just before the change was committed).
        self._generation = 0
        self._lock = asyncio.Lock()
        self._listener: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self.loads = 0  # database loads so far (tests and status use it)
        self.notifications = 0  # NOTIFY messages received

    async def get(self, tenant_id: int) -> TenantSettings:
        """Return the tenant's settings, from memory when fresh, else loaded from the database.

        A missing tenant row or unreadable sizes give the default sizes (the database adapter
        logs the WARNING or ERROR of spec §3) and ``api_key=None``.
        """
        entry = self._entries.get(tenant_id)
        if entry is not None and time.monotonic() - entry.loaded_at < self._ttl:
            return entry.settings
        async with self._lock:
            entry = self._entries.get(tenant_id)
            if entry is not None and time.monotonic() - entry.loaded_at < self._ttl:
                return entry.settings
            generation = self._generation
            batch = await self._db.get_tenant_batch_config(tenant_id)
            row = await self._db.get_tenant(tenant_id)
            api_key = getattr(row, "api_key", None) if row is not None else None
            settings = TenantSettings(tenant_id=tenant_id, api_key=api_key, batch=batch)
            self.loads += 1
            if generation == self._generation:
                self._entries[tenant_id] = _Entry(settings, time.monotonic())
            log.debug(
                "tenant %s loaded: download_batch_size=%d upload_batch_size=%d (source: %s)",
                tenant_id,
                batch.download_batch_size,
                batch.upload_batch_size,
                batch.source,
            )
            return settings

    async def prime(self, load: Callable[[], Awaitable[Iterable[TenantSettings]]]) -> int:
        """Store many tenants' settings from ONE call of ``load`` (e.g. one query for every
        tenant a scheduler runs) instead of one load per tenant; returns how many were stored.

        Nothing is stored when an invalidation (NOTIFY, :meth:`invalidate`) came while ``load``
        ran: it may have read rows from before the change.
        """
        async with self._lock:
            generation = self._generation
            loaded = list(await load())
            self.loads += 1
            if generation != self._generation:
                return 0
            now = time.monotonic()
            for settings in loaded:
                self._entries[settings.tenant_id] = _Entry(settings, now)
            return len(loaded)

    def invalidate(self, tenant_id: int | None = None) -> None:
        """Drop one tenant's entry (or all with ``None``); the next :meth:`get` reloads it."""
        self._generation += 1
        if tenant_id is None:
            self._entries.clear()
        else:
            self._entries.pop(tenant_id, None)

    def cached(self, tenant_id: int) -> bool:
        """True when a fresh entry for the tenant is in memory (no database trip needed)."""
        entry = self._entries.get(tenant_id)
        return entry is not None and time.monotonic() - entry.loaded_at < self._ttl

    @property
    def listening(self) -> bool:
        """True while the LISTEN connection is up."""
        return self._listening.is_set()

    async def listen(self, dsn: str, *, timeout: float = 10.0) -> None:
        """Start invalidating on ``NOTIFY metersync_tenant`` heard on a separate connection.

        Returns once ``LISTEN`` is active (or raises if the first connection fails within
        ``timeout``); afterwards a background task keeps listening and reconnects with backoff
        when the connection drops, invalidating everything on reconnect because notifications
        sent meanwhile were lost. Calling it again while listening does nothing.
        """
        if self._listener is not None and not self._listener.done():
            return
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._listener = asyncio.create_task(self._listen_loop(dsn, ready), name="tenant-listen")
        try:
            await asyncio.wait_for(asyncio.shield(ready), timeout)
        except BaseException:
            await self.stop_listening()
            raise

    async def stop_listening(self) -> None:
        """Stop the listener task and close its connection (safe to call when not listening)."""
        task, self._listener = self._listener, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _listen_loop(self, dsn: str, ready: asyncio.Future[None]) -> None:
        delay = _LISTEN_RETRY_FIRST
        first = True
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self._listening.set()
                    if first:
                        first = False
                        if not ready.done():
                            ready.set_result(None)
                    else:
                        # Notifications sent while we were away are lost: start over.
                        self.invalidate()
                        log.info("tenant cache listener reconnected; all entries invalidated")
                    delay = _LISTEN_RETRY_FIRST
                    async for notify in conn.notifies():
                        self._on_notify(notify.payload)
            except asyncio.CancelledError:
                self._listening.clear()
                raise
            except (psycopg.Error, OSError) as exc:
                self._listening.clear()
                if first:
                    if not ready.done():
                        # A clear error naming the database (never its password), like every
                        # other connection failure of the sync database.
                        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                        ready.set_exception(
                            DatabaseUnavailableError(
                                f"tenant cache listener cannot connect to the sync database "
                                f"{describe_dsn(dsn)}: {type(exc).__name__}: {first_line}"
                            )
                        )
                    return
                log.warning(
                    "tenant cache listener lost its connection (%s); retrying in %.1f s, "
                    "time-to-live invalidation still applies",
                    type(exc).__name__,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _LISTEN_RETRY_MAX)

    def _on_notify(self, payload: str) -> None:
        self.notifications += 1
        try:
            tenant_id = int(payload)
        except ValueError:
            log.warning(
                "tenant cache: NOTIFY %s with payload %r is not a tenant id; invalidating all",
                NOTIFY_CHANNEL,
                payload[:40],
            )
            self.invalidate()
            return
        log.info("tenant %s changed (NOTIFY); its settings reload on the next cycle", tenant_id)
        self.invalidate(tenant_id)

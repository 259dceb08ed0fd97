"""The endpoint's own view of the sync database: one connection, on one private thread.

The sync loop's connection is not shared: a scrape must neither add statements to a running
cycle's count nor wait behind its transaction. The probe opens its own
:class:`~metersync.store.database.SyncDatabase` (lazily, reconnecting like any other) on an event
loop in a daemon thread; the HTTP handler threads call it synchronously, one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["DatabaseProbe"]

T = TypeVar("T")


class DatabaseProbe:
    """Synchronous access to two cheap questions: is the database reachable, what is the queue.

    ``timeout`` bounds each call (connecting included), so a hung database makes ``/healthz``
    answer 503 in time instead of hanging the supervisor's check.
    """

    def __init__(self, dsn: str, *, max_retries: int = 5, timeout: float = 5.0) -> None:
        self._dsn = dsn  # never shown: it may hold the password
        self.max_retries = max_retries
        self.timeout = timeout
        self._db: Any = None
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="metersync-observe-db", daemon=True
        )
        self._thread.start()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(self.timeout)
        except TimeoutError:
            future.cancel()
            raise TimeoutError(
                f"the sync database did not answer within {self.timeout:g} s"
            ) from None

    async def _database(self) -> Any:
        if self._db is None:
            from metersync.store.database import SyncDatabase

            self._db = await SyncDatabase.connect(self._dsn, connect_timeout=self.timeout)
        return self._db

    async def _ping(self) -> int:
        db = await self._database()
        # The tenant table is small: a cheap statement that proves the schema is there too.
        return len(await db.list_tenants())

    async def _queue(self) -> list[Any]:
        db = await self._database()
        return list(await db.queue_status(None, max_retries=self.max_retries))

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        with self._lock:
            try:
                return self._run(coro)
            except BaseException:
                # A timed-out or failed call may leave the session mid-statement: start the
                # next call on a new connection (the old one is closed in the background).
                db, self._db = self._db, None
                if db is not None:
                    self._loop.call_soon_threadsafe(lambda: self._loop.create_task(db.close()))
                raise

    def ping(self) -> int:
        """Run one cheap statement; return the number of tenants. Raises when unreachable."""
        return self._call(self._ping())

    def queue_status(self) -> list[Any]:
        """``queue_status()`` of every tenant (``QueueStatus`` rows)."""
        return self._call(self._queue())

    def close(self) -> None:
        """Close the connection and stop the thread."""
        with self._lock:
            if self._db is not None:
                db, self._db = self._db, None
                # Closing a lost connection may fail: nothing is left to release then.
                with contextlib.suppress(Exception):
                    self._run(db.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(self.timeout)
            if not self._thread.is_alive():
                self._loop.close()

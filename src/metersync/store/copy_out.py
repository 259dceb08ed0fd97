"""Reading a COPY OUT's rows straight from libpq's input buffer (issue 12: many tenants).

psycopg hands out a COPY's rows one ``read()`` at a time, and each one goes through its wait
machinery: on an async connection a coroutine, a generator and a ``conn.wait`` per row, about
6 µs of the event loop's CPU, and more in a busy loop (every row is a chance to switch tasks).
The engine's group fetch reads 30,000 rows for 300 small tenants on the event loop, where that
was a third of the scheduler's own time. Here the rows libpq already holds are taken in one
tight loop of ``PGconn.get_copy_data`` calls (one C call each); the loop waits only when the
buffer is empty, once per network read instead of once per row. Measured with
``benchmarks/copy_read_api.py`` (figures in docs/store-notes.md).

Only public psycopg API: the connection's :attr:`~psycopg.AsyncConnection.pgconn` (``pq``'s
documented wrapper of libpq) and :func:`psycopg.errors.error_from_result`. The COPY itself is
started by psycopg's ``cursor.copy()`` as before; once its rows and its final result are read
here, the connection is idle and the copy block's exit has nothing left to do. How each way
out leaves the session:

* **every row read**: the final result is read too (an error result raises as psycopg would
  raise it, with its SQLSTATE), so the session is idle for the next statement;
* **cancelled while rows are still coming**: libpq is still in the COPY, so the copy block's
  exit cancels the statement and reads what is left, as it does for psycopg's own reads;
* **cancelled after the last row**: the final result, already on its way, is read before the
  cancellation goes on, so psycopg is never left with a result it did not see;
* **the connection fails**: libpq's error (``OperationalError``) propagates, and the adapter
  reports the connection lost.
"""

from __future__ import annotations

import asyncio
import select
from collections.abc import Generator
from typing import Any

import psycopg
from psycopg import pq

__all__ = ["read_copy_out", "read_copy_out_sync"]

#: What the reading generator waits for: rows (the COPY is still in progress), or the end.
_ROWS, _END = "rows", "end"


def _copy_out(pgconn: Any, encoding: str) -> Generator[str, None, list[Any]]:
    """The rows of the COPY in progress on ``pgconn``, then its final result; yields what it
    waits for (:data:`_ROWS` or :data:`_END`) when libpq needs more input from the socket."""
    rows: list[Any] = []
    append = rows.append
    get = pgconn.get_copy_data
    while True:
        size, data = get(1)  # 1: never block; 0 means the buffer holds no complete row
        if size > 0:
            append(data)
        elif size == 0:
            yield _ROWS
            pgconn.consume_input()
        else:  # -1: the COPY is over; its result follows
            break
    error: psycopg.Error | None = None
    while True:
        while pgconn.is_busy():
            yield _END
            pgconn.consume_input()
        result = pgconn.get_result()
        if result is None:
            break
        if result.status == pq.ExecStatus.FATAL_ERROR and error is None:
            error = psycopg.errors.error_from_result(result, encoding=encoding)
    if error is not None:
        raise error
    return rows


async def read_copy_out(conn: psycopg.AsyncConnection[Any]) -> list[Any]:
    """Every row of the COPY OUT ``conn`` is in (started by ``cursor.copy()``), as buffers in
    order (the binary header rides on the first, the trailer is the last); see the module
    docstring for the session each way out leaves."""
    pgconn = conn.pgconn
    reading = _copy_out(pgconn, conn.info.encoding)
    loop = asyncio.get_running_loop()
    cancelled: asyncio.CancelledError | None = None
    try:
        waiting = next(reading)
        while True:
            try:
                await _readable(loop, pgconn.socket)
            except asyncio.CancelledError as exc:
                if waiting != _END or cancelled is not None:
                    raise  # mid-COPY: the copy block's exit cancels and drains it
                cancelled = exc  # the server already sent the result: read it, then go on
                continue
            waiting = reading.send(None)
    except StopIteration as done:
        if cancelled is not None:
            raise cancelled from None
        return done.value  # type: ignore[no-any-return]
    except psycopg.Error:
        if cancelled is not None:
            raise cancelled from None
        raise
    finally:
        reading.close()


def read_copy_out_sync(conn: psycopg.Connection[Any]) -> list[Any]:
    """:func:`read_copy_out` for a synchronous connection (blocking: a worker thread's)."""
    pgconn = conn.pgconn
    reading = _copy_out(pgconn, conn.info.encoding)
    try:
        next(reading)
        while True:
            select.select([pgconn.socket], [], [])
            reading.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    finally:
        reading.close()


async def _readable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    """Until ``fd`` has input (one event-loop wait; the reader is removed whatever happens)."""
    ready = loop.create_future()
    loop.add_reader(fd, _wake, ready)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)

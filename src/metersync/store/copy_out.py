"""Reading a COPY OUT's rows straight from libpq's input buffer (issue 12: many tenants).

psycopg hands out a COPY's rows one ``read()`` at a time, and each one goes through its wait
machinery: on an async connection a coroutine, a generator and a ``conn.wait`` per row, about
6 µs of the event loop's CPU, and more in a busy loop (every row is a chance to switch tasks).
The engine's group fetch reads 30,000 rows for 300 small tenants on the event loop, where that
was a third of the scheduler's own time. Here the rows libpq already holds are taken in one
call (:mod:`metersync.store.copy_rows`: a C loop of libpq's ``PQgetCopyData`` into one buffer,
or its twin, a loop of ``PGconn.get_copy_data``), and the socket is read on while it has
input: the event loop's wait comes only when the socket is empty. Measured with
``benchmarks/copy_read_api.py`` (figures in docs/store-notes.md).

Only public psycopg API: the connection's :attr:`~psycopg.AsyncConnection.pgconn` (``pq``'s
documented wrapper of libpq, and its ``pgconn_ptr``) and
:func:`psycopg.errors.error_from_result`. The COPY itself is
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
import contextlib
import select
import threading
from collections.abc import Callable, Generator
from typing import Any, TypeVar

import psycopg
from psycopg import pq

from metersync.store.copy_rows import new_copy_rows

__all__ = ["read_copy_out", "read_copy_out_in_thread", "read_copy_out_sync"]

T = TypeVar("T")

#: What the reading generator waits for: rows (the COPY is still in progress), or the end.
_ROWS, _END = "rows", "end"
#: A thread's read that saw its stop before the COPY's end.
_STOPPED = object()

#: Socket reads (16 KB each at most) taken without the caller's wait while input is ready.
_READS_PER_WAIT = 64


def _poller(fd: int) -> Callable[[float | None], bool]:
    """``has_input(timeout)``: whether ``fd`` has input within ``timeout`` seconds (0: now,
    ``None``: wait for it). ``poll``, which has no fd limit; ``select`` where there is none."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return lambda timeout: bool(poller.poll(None if timeout is None else timeout * 1000))
    return lambda timeout: bool(select.select([fd], [], [], timeout)[0])


def _copy_out(
    pgconn: Any, encoding: str, has_input: Callable[[float | None], bool]
) -> Generator[str, None, bytes | memoryview]:
    """The rows of the COPY in progress on ``pgconn`` (as one buffer), then its final result;
    yields what it waits for (:data:`_ROWS` or :data:`_END`) when libpq needs more input.
    ``has_input``: its socket's :func:`_poller`."""
    rows = new_copy_rows()
    reads = 0  # socket reads since the last trip through the caller's wait
    while True:
        status = rows.drain(pgconn)  # every complete row libpq holds, without blocking
        if status == 0:  # no complete row buffered: read more
            # libpq reads at most its input buffer (16 KB: ~20 wide rows) per consume_input.
            # When the socket already holds more (the server is ahead of us, the usual case
            # in a busy loop), read on at once: a wait per 16 KB cost the event loop a
            # reader, a future and a task switch each, 1,400 of them for 300 small tenants.
            # Every _READS_PER_WAIT reads the caller's wait runs anyway, so one long COPY
            # does not hold the event loop for more than about a megabyte at a time.
            reads += 1
            if reads >= _READS_PER_WAIT or not has_input(0):
                reads = 0
                yield _ROWS
            pgconn.consume_input()
        elif status == -1:  # the COPY is over; its result follows
            break
        else:  # -2: libpq failed (psycopg's own reads raise the same)
            raise _copy_failed(pgconn, encoding)
    yield from _copy_result(pgconn, encoding)
    return rows.data()


def _copy_failed(pgconn: Any, encoding: str) -> psycopg.OperationalError:
    message = (pgconn.error_message or b"the connection is closed").decode(encoding, "replace")
    return psycopg.OperationalError(f"receiving copy data failed: {message.strip()}")


def _copy_result(pgconn: Any, encoding: str) -> Generator[str, None, None]:
    """The final result of a COPY whose rows are all read (an error result raises as psycopg
    would raise it); yields :data:`_END` when libpq needs more input."""
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


async def read_copy_out(conn: psycopg.AsyncConnection[Any]) -> bytes | memoryview:
    """Every row of the COPY OUT ``conn`` is in (started by ``cursor.copy()``), in order, as
    one buffer (the binary header rides on the first row, the trailer is the last); see the
    module docstring for the session each way out leaves."""
    pgconn = conn.pgconn
    reading = _copy_out(pgconn, conn.info.encoding, _poller(pgconn.socket))
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


def read_copy_out_sync(conn: psycopg.Connection[Any]) -> bytes | memoryview:
    """:func:`read_copy_out` for a synchronous connection (blocking: a worker thread's)."""
    pgconn = conn.pgconn
    has_input = _poller(pgconn.socket)
    reading = _copy_out(pgconn, conn.info.encoding, has_input)
    try:
        next(reading)
        while True:
            has_input(None)
            reading.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    finally:
        reading.close()


async def read_copy_out_in_thread(
    conn: psycopg.AsyncConnection[Any], then: Callable[[bytes | memoryview], T]
) -> T:
    """:func:`read_copy_out`, then ``then(rows)``, in a worker thread: for a large read in a
    busy event loop. The compiled reader waits on the socket and gathers the rows without the
    GIL (:meth:`~metersync.store._copy_rows.CopyRows.read_to_end`), and ``then`` (the codec's
    decode, whose loops release the GIL too) runs there as well, so the event loop and the
    read share the process's cores instead of its one thread.

    The session each way out leaves is :func:`read_copy_out`'s: cancelled while rows are
    still coming, the thread stops at its next silent slice (libpq is left in the COPY, and
    the copy block's exit cancels and drains it); the cancellation goes on only once the
    thread let go of the connection, so the two never use it at once.
    """
    pgconn = conn.pgconn
    stop = threading.Event()
    loop = asyncio.get_running_loop()
    work = loop.run_in_executor(None, _read_in_thread, pgconn, conn.info.encoding, stop, then)
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        stop.set()
        while not work.done():  # until the thread let go of the connection (stopped, or
            with contextlib.suppress(asyncio.CancelledError):  # read to the end: idle)
                await asyncio.wait([work])
        raise


def _read_in_thread(
    pgconn: Any, encoding: str, stop: threading.Event, then: Callable[[bytes | memoryview], T]
) -> T | object:
    rows = new_copy_rows()
    status = rows.read_to_end(pgconn, pgconn.socket, stop)
    if status == -3:
        return _STOPPED
    if status == -2:
        raise _copy_failed(pgconn, encoding)
    has_input = _poller(pgconn.socket)
    result = _copy_result(pgconn, encoding)
    for _ in result:  # the result is on its way: wait for it
        has_input(None)
    return then(rows.data())


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

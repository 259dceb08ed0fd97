"""Reading COPY OUT rows from libpq's buffer (store/copy_out.py), against real PostgreSQL.

Each read is checked against psycopg's own per-row API on the same statement, and each way out
(every row, an error after some rows, a cancellation mid-COPY, a killed session) is checked to
leave the connection as the adapter needs it, with each twin gathering the rows
(store/copy_rows.py: the compiled ``CopyRows`` and ``PyCopyRows``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from metersync.store import copy_out, copy_rows
from metersync.store.copy_out import read_copy_out, read_copy_out_in_thread, read_copy_out_sync

_TWINS = ["c", "python"] if copy_rows.IMPL == "c" else ["python"]


@pytest.fixture(params=_TWINS)
def twin(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each twin in turn gathers the rows ``read_copy_out`` reads."""
    if request.param == "c":
        from metersync.store import _copy_rows

        monkeypatch.setattr(copy_out, "new_copy_rows", _copy_rows.CopyRows)
    else:
        monkeypatch.setattr(copy_out, "new_copy_rows", copy_rows.PyCopyRows)
    return str(request.param)


#: Wide enough that the COPY spans many network reads (libpq's buffer refills several times).
_ROWS = (
    "COPY (SELECT i, md5(i::text) AS h, repeat('x', i % 300) AS pad, "
    "timestamptz '2026-01-01' + i * interval '1 s' AS at "
    "FROM generate_series(1, {n}) AS i) TO STDOUT (FORMAT {fmt})"
)


#: One row every 20 ms, each big enough for the server to send it at once (its output buffer is
#: 8 kB): a read of it is waiting on the socket most of the time.
_SLOW = (
    "COPY (SELECT i, repeat('z', 9000), pg_sleep(0.02) FROM generate_series(1, 500) AS i) "
    "TO STDOUT (FORMAT BINARY)"
)


async def _public(conn: psycopg.AsyncConnection[Any], statement: str) -> list[bytes]:
    async with conn.cursor() as cur, cur.copy(statement) as copy:
        return [bytes(data) async for data in copy]


@pytest.fixture(params=["loop", "thread"])
def way(request: pytest.FixtureRequest) -> str:
    """Each way of reading: on the event loop, or in a worker thread."""
    return str(request.param)


async def _ours(conn: psycopg.AsyncConnection[Any], statement: str, way: str = "loop") -> bytes:
    async with conn.cursor() as cur, cur.copy(statement):
        if way == "thread":
            return await read_copy_out_in_thread(conn, bytes)
        return bytes(await read_copy_out(conn))


@pytest.mark.parametrize("fmt", ["BINARY", "TEXT"])
@pytest.mark.parametrize("n", [0, 1, 2, 5000])
async def test_rows_are_the_ones_psycopg_reads(
    dsn: str, n: int, fmt: str, twin: str, way: str
) -> None:
    statement = _ROWS.format(n=n, fmt=fmt)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        want = await _public(conn, statement)
        got = await _ours(conn, statement, way)
        assert got == b"".join(want)
        assert len(want) == (n + 1 if fmt == "BINARY" else n)
        if fmt == "BINARY":  # the header rides on the first message, the trailer is the last
            assert got.startswith(b"PGCOPY\n\xff\r\n\x00") and got.endswith(b"\xff\xff")
        # The session is idle again: the next statement runs on it.
        assert (await (await conn.execute("SELECT 41 + 1")).fetchone()) == (42,)


@pytest.mark.parametrize("n", [0, 3, 5000])
def test_the_sync_form_reads_the_same_rows(dsn: str, n: int, twin: str) -> None:
    statement = _ROWS.format(n=n, fmt="BINARY")
    with psycopg.Connection.connect(dsn, autocommit=True) as conn:
        with conn.cursor() as cur, cur.copy(statement) as copy:
            want = [bytes(data) for data in copy]
        with conn.cursor() as cur, cur.copy(statement):
            got = bytes(read_copy_out_sync(conn))
        assert got == b"".join(want) and len(want) == n + 1
        assert conn.execute("SELECT 1").fetchone() == (1,)


async def test_an_error_after_some_rows_raises_with_its_sqlstate(
    dsn: str, twin: str, way: str
) -> None:
    # Rows 1..2999 are sent before row 3000 divides by zero.
    statement = (
        "COPY (SELECT 100 / (3000 - i), repeat('y', 200) FROM generate_series(1, 5000) AS i) "
        "TO STDOUT (FORMAT BINARY)"
    )
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero) as caught:
            await _ours(conn, statement, way)
        assert caught.value.sqlstate == "22012"
        assert "division by zero" in str(caught.value)
        assert not conn.closed
        assert (await (await conn.execute("SELECT 2")).fetchone()) == (2,)


def test_the_sync_form_raises_the_error_too(dsn: str, twin: str) -> None:
    statement = "COPY (SELECT 1 / (i - 2) FROM generate_series(1, 3) AS i) TO STDOUT"
    with psycopg.Connection.connect(dsn, autocommit=True) as conn:
        with (
            pytest.raises(psycopg.errors.DivisionByZero),
            conn.cursor() as cur,
            cur.copy(statement),
        ):
            read_copy_out_sync(conn)
        assert conn.execute("SELECT 3").fetchone() == (3,)


async def test_a_cancelled_read_leaves_the_session_usable(dsn: str, twin: str, way: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        task = asyncio.ensure_future(_ours(conn, _SLOW, way))
        await asyncio.sleep(0.15)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The copy block's exit cancelled the statement and drained it: the session is idle.
        assert (await (await conn.execute("SELECT 4")).fetchone()) == (4,)
        want = await _public(conn, _ROWS.format(n=3, fmt="BINARY"))
        assert await _ours(conn, _ROWS.format(n=3, fmt="BINARY"), way) == b"".join(want)


async def test_a_killed_session_raises_operational_error(dsn: str, twin: str, way: str) -> None:
    async with (
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn,
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as killer,
    ):
        pid = conn.info.backend_pid
        task = asyncio.ensure_future(_ours(conn, _SLOW, way))
        await asyncio.sleep(0.1)
        await killer.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(psycopg.OperationalError):
            await asyncio.wait_for(task, 10)
        assert conn.closed  # what the adapter reads as "connection lost"

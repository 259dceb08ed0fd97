"""The two twins that gather a COPY OUT's rows (store/copy_rows.py, store/_copy_rows.pyx).

Against real PostgreSQL: the compiled ``CopyRows`` (libpq's ``PQgetCopyData`` through the
addresses found in the libpq psycopg loaded) and ``PyCopyRows`` (psycopg's per-row API) gather
byte-identical buffers and row counts for the same COPY, rows small and large; the compiled one
refuses what would be unsafe (a closed connection, rows added to an exported buffer, no libpq).
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import pq

from metersync.store import copy_rows

needs_c = pytest.mark.skipif(copy_rows.IMPL != "c", reason="the compiled reader is not in use")


def _gather(conn: psycopg.Connection[Any], statement: str, rows: Any) -> tuple[bytes, int]:
    """Run ``statement`` (a COPY OUT) and gather its rows with ``rows``; (bytes, rows taken)."""
    pgconn = conn.pgconn
    with conn.cursor() as cur, cur.copy(statement):
        while True:
            status = rows.drain(pgconn)
            if status == -1:
                break
            assert status == 0, status
            select.select([pgconn.socket], [], [], 5)
            pgconn.consume_input()
        while pgconn.get_result() is not None:  # the COPY's final result: the session is idle
            pass
    return bytes(rows.data()), rows.rows


class _Never:
    """A stop that is never asked for."""

    def is_set(self) -> bool:
        return False


def _gather_to_end(conn: psycopg.Connection[Any], statement: str, rows: Any) -> tuple[bytes, int]:
    """As :func:`_gather`, with the twin's own blocking ``read_to_end``."""
    pgconn = conn.pgconn
    with conn.cursor() as cur, cur.copy(statement):
        assert rows.read_to_end(pgconn, pgconn.socket, _Never(), 5) == -1
        while pgconn.get_result() is not None:
            pass
    return bytes(rows.data()), rows.rows


@needs_c
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(sizes=st.lists(st.integers(0, 200_000), max_size=12))
def test_the_twins_gather_the_same_bytes(dsn: str, sizes: list[int]) -> None:
    """Rows from empty to 200 kB (the compiled buffer grows past its first 64 kB, libpq's past
    its 16 kB): the same bytes and the same number of rows from both twins."""
    from metersync.store import _copy_rows

    values = ",".join(f"({i}, {n})" for i, n in enumerate(sizes)) or "(0, 0)"
    where = "" if sizes else " WHERE false"
    statement = (
        f"COPY (SELECT i, repeat(chr(65 + i % 26), n) FROM (VALUES {values}) AS v(i, n){where} "
        "ORDER BY i) TO STDOUT (FORMAT BINARY)"
    )
    with psycopg.Connection.connect(dsn, autocommit=True) as conn:
        compiled = _gather(conn, statement, _copy_rows.CopyRows())
        twin = _gather(conn, statement, copy_rows.PyCopyRows())
        compiled_to_end = _gather_to_end(conn, statement, _copy_rows.CopyRows())
        twin_to_end = _gather_to_end(conn, statement, copy_rows.PyCopyRows())
        with conn.cursor() as cur, cur.copy(statement) as copy:
            psycopgs = b"".join(bytes(data) for data in copy)
    assert compiled == twin == compiled_to_end == twin_to_end
    assert compiled[0] == psycopgs
    assert compiled[1] == len(sizes) + 1  # the trailer is a message of its own


@pytest.mark.parametrize("which", ["c", "python"])
def test_read_to_end_stops_when_asked_and_leaves_the_copy_to_its_owner(
    dsn: str, which: str
) -> None:
    """A slow server (a 9 kB row every 20 ms, 4 s in all): asked to stop, ``read_to_end``
    returns
    -3 within its slices and libpq is still in the COPY, which psycopg's copy block then
    cancels; the session is usable after it."""
    if which == "c" and copy_rows.IMPL != "c":
        pytest.skip("the compiled reader is not in use")
    import threading
    import time

    statement = (
        "COPY (SELECT i, repeat('z', 9000), pg_sleep(0.02) FROM generate_series(1, 200) AS i) "
        "TO STDOUT (FORMAT BINARY)"
    )
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    rows: Any = copy_rows.PyCopyRows()
    if which == "c":
        from metersync.store import _copy_rows

        rows = _copy_rows.CopyRows()
    with psycopg.Connection.connect(dsn, autocommit=True) as conn:
        started = time.monotonic()
        with (
            pytest.raises(psycopg.errors.QueryCanceled),
            conn.cursor() as cur,
            cur.copy(statement),
        ):
            assert rows.read_to_end(conn.pgconn, conn.pgconn.socket, stop, 20) == -3
            assert conn.pgconn.transaction_status == pq.TransactionStatus.ACTIVE
            raise psycopg.errors.QueryCanceled("the caller went away")
        assert time.monotonic() - started < 2  # the stop, not the 4 s COPY
        assert 0 < rows.rows < 200  # some rows came before the stop, not all
        assert conn.execute("SELECT 5").fetchone() == (5,)


@needs_c
def test_libpq_is_the_one_psycopg_loaded() -> None:
    get_copy_data, free_mem, consume_input, path = copy_rows.libpq_functions()
    assert len({get_copy_data, free_mem, consume_input} - {0, None}) == 3
    assert Path(path).name.startswith("libpq")
    if pq.__impl__ == "binary":
        assert Path(path).resolve().parent.name in ("psycopg_binary.libs", ".dylibs")
    maps = Path("/proc/self/maps")
    if maps.exists() and os.sep in path:  # Linux: the library is mapped in this process
        assert str(Path(path).resolve()) in maps.read_text()


@needs_c
def test_a_closed_connection_is_refused_not_read(dsn: str) -> None:
    from metersync.store import _copy_rows

    conn = psycopg.Connection.connect(dsn, autocommit=True)
    pgconn = conn.pgconn
    conn.close()
    assert pgconn.pgconn_ptr is None
    rows = _copy_rows.CopyRows()
    assert rows.drain(pgconn) == -2
    assert (rows.rows, len(rows), bytes(rows.data())) == (0, 0, b"")


@needs_c
def test_no_rows_are_added_while_the_buffer_is_exported(dsn: str) -> None:
    from metersync.store import _copy_rows

    rows = _copy_rows.CopyRows()
    with psycopg.Connection.connect(dsn, autocommit=True) as conn:
        view = rows.data()
        assert view.readonly
        with pytest.raises(BufferError, match="exported"):
            rows.drain(conn.pgconn)
        view.release()
        assert rows.drain(conn.pgconn) in (0, -1, -2)  # not in a COPY: libpq says so


@needs_c
def test_bind_refuses_a_null_address() -> None:
    from metersync.store import _copy_rows

    with pytest.raises(ValueError, match="PQgetCopyData"):
        _copy_rows.bind(0, 1, 2)
    with pytest.raises(ValueError, match="PQconsumeInput"):
        _copy_rows.bind(1, 2, 0)
    assert _copy_rows.bound()  # the import bound the real ones; nothing was changed


def _best_available() -> str:
    """What an unset METERSYNC_IMPL picks on this install (whatever this process was told)."""
    try:
        from metersync.store import _copy_rows  # noqa: F401

        copy_rows.libpq_functions()
    except (ImportError, LookupError):
        return "python"
    return "c"


@pytest.mark.parametrize("wanted", ["python", ""])
def test_the_choice_follows_metersync_impl(wanted: str) -> None:
    impl = wanted or _best_available()
    env = {**os.environ, "METERSYNC_IMPL": wanted}
    out = subprocess.run(
        [sys.executable, "-c", "from metersync.store import copy_rows as c; "
         "print(c.IMPL, type(c.new_copy_rows()).__name__)"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    got_impl, got_class = out.stdout.split()
    assert got_impl == impl
    assert got_class == ("CopyRows" if impl == "c" else "PyCopyRows")
    # The compiled reader in use, or the twin asked for: nothing to warn about.
    if impl == "c" or wanted == "python":
        assert "per-row API" not in out.stderr, out.stderr

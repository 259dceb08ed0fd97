"""Where a COPY OUT's rows are gathered while :mod:`metersync.store.copy_out` reads them.

Two twins with one interface, ``drain(pgconn) -> int`` (what libpq holds now) or
``read_to_end(pgconn, fd, stop) -> int`` (blocking, for a worker thread), then ``data()``:

* :class:`metersync.store._copy_rows.CopyRows` (compiled): one C loop of libpq's
  ``PQgetCopyData`` into one growing buffer, no Python object per row; ``read_to_end`` waits
  on the socket and reads it (``PQconsumeInput``) without the GIL;
* :class:`PyCopyRows`: psycopg's ``PGconn.get_copy_data``, one call and one bytes object per row.

The compiled twin calls the libpq that psycopg loaded, found here (:func:`libpq_functions`):
the ``PGconn`` pointer psycopg documents (``PGconn.pgconn_ptr``) may only go to the library
that made it. Chosen once, by the codec's rule (``METERSYNC_IMPL``, :mod:`metersync.codec._impl`):
``python`` takes the twin, ``c`` requires the compiled reader (an ImportError otherwise), unset
takes the compiled one when it is importable and its libpq is found, else the twin with a
warning that says why. :data:`IMPL` records the choice, ``metersync --version`` shows it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import sys
import warnings
from pathlib import Path
from typing import Any, Protocol

import psycopg
from psycopg import pq

from metersync.codec._impl import ENV_VAR

__all__ = ["IMPL", "CopyRowsLike", "PyCopyRows", "libpq_functions", "new_copy_rows"]


class CopyRowsLike(Protocol):
    """What :mod:`metersync.store.copy_out` needs of either twin."""

    rows: int

    def drain(self, pgconn: Any) -> int: ...

    def read_to_end(self, pgconn: Any, fd: int, stop: Any, slice_ms: int = 50) -> int: ...

    def data(self) -> bytes | memoryview: ...


class PyCopyRows:
    """The pure-Python twin of ``CopyRows``: psycopg's per-row API, byte-identical output."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self.rows = 0

    def drain(self, pgconn: Any) -> int:
        """Take every complete row libpq holds: ``0`` read more input and call again, ``-1``
        the COPY is over. A libpq failure raises psycopg's ``OperationalError``."""
        get = pgconn.get_copy_data
        append = self._parts.append
        while True:
            size, row = get(1)  # 1: never block
            if size <= 0:
                return int(size)
            append(bytes(row))
            self.rows += 1

    def read_to_end(self, pgconn: Any, fd: int, stop: Any, slice_ms: int = 50) -> int:
        """Take rows until the COPY is over, waiting for ``fd`` (blocking: a worker thread's);
        ``stop.is_set()`` ends it early (asked at least every ``slice_ms``). ``-1`` the COPY
        is over, ``-2`` libpq failed, ``-3`` stopped (libpq is still in the COPY)."""
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while True:
            status = self.drain(pgconn)
            if status != 0:
                return status
            if stop.is_set():
                return -3
            poller.poll(slice_ms)
            try:  # also after a silent slice: input may wait in the TLS layer
                pgconn.consume_input()
            except psycopg.OperationalError:
                return -2

    def data(self) -> bytes:
        """Every row taken, in order, as one bytes object."""
        return b"".join(self._parts)


#: The libpq handles whose addresses were given out: kept open for the life of the process.
_KEEP: list[Any] = []


def libpq_functions() -> tuple[int, int, int, str]:
    """The addresses of ``PQgetCopyData``, ``PQfreemem`` and ``PQconsumeInput`` in the libpq
    psycopg runs on, and that library's path; ``LookupError`` saying why when it cannot be
    told for sure.

    Only a library already in the process counts (``RTLD_NOLOAD``): never a second copy.
    psycopg's ``binary`` build carries its own libpq next to it (``psycopg_binary.libs`` on
    Linux, ``.dylibs`` on macOS); the ``c`` and ``python`` builds use the system's ``libpq``.
    Its version must be the one psycopg reports.
    """
    noload = getattr(os, "RTLD_NOLOAD", None)
    if noload is None or sys.platform == "win32":
        raise LookupError(f"no RTLD_NOLOAD on {sys.platform}: psycopg's libpq cannot be found")
    if pq.__impl__ == "binary":
        import psycopg_binary

        package = Path(psycopg_binary.__file__).resolve().parent
        folders = [package.parent / "psycopg_binary.libs", package / ".dylibs"]
        candidates = [str(p) for d in folders if d.is_dir() for p in sorted(d.glob("libpq*"))]
    else:
        name = ctypes.util.find_library("pq")
        candidates = [name] if name else []
    loaded = []
    for candidate in candidates:
        try:
            loaded.append((candidate, ctypes.CDLL(candidate, mode=noload | os.RTLD_NOW)))
        except OSError:
            continue  # not in this process
    if len(loaded) != 1:
        raise LookupError(
            f"psycopg ({pq.__impl__} build) runs on {len(loaded)} loaded libpq of "
            f"{candidates or 'none found'}: cannot tell which one it is"
        )
    path, lib = loaded[0]
    lib.PQlibVersion.restype = ctypes.c_int
    if lib.PQlibVersion() != pq.version():
        raise LookupError(
            f"{path} is libpq {lib.PQlibVersion()}, psycopg reports {pq.version()}: not its libpq"
        )
    get_copy_data = ctypes.cast(lib.PQgetCopyData, ctypes.c_void_p).value
    free_mem = ctypes.cast(lib.PQfreemem, ctypes.c_void_p).value
    consume_input = ctypes.cast(lib.PQconsumeInput, ctypes.c_void_p).value
    if not get_copy_data or not free_mem or not consume_input:
        raise LookupError(f"{path} lacks PQgetCopyData, PQfreemem or PQconsumeInput")
    _KEEP.append(lib)  # the handle stays open as long as the process uses the addresses
    return get_copy_data, free_mem, consume_input, path


def _select() -> tuple[Any, str]:
    wanted = os.environ.get(ENV_VAR, "").strip().lower()
    if wanted == "python":
        return PyCopyRows, "python"
    try:
        from metersync.store import _copy_rows

        if not _copy_rows.bound():
            get_copy_data, free_mem, consume_input, _path = libpq_functions()
            _copy_rows.bind(get_copy_data, free_mem, consume_input)
    except (ImportError, LookupError) as exc:
        if wanted == "c":
            raise ImportError(
                f"{ENV_VAR}=c but the compiled COPY reader is not usable: {exc}"
            ) from exc
        warnings.warn(
            f"metersync: COPY rows are read through psycopg's per-row API (slower): {exc} "
            f"(set {ENV_VAR}=python to silence this)",
            RuntimeWarning,
            stacklevel=3,
        )
        return PyCopyRows, "python"
    return _copy_rows.CopyRows, "c"


_new, IMPL = _select()


def new_copy_rows() -> CopyRowsLike:
    """An empty gathering of the chosen twin (:data:`IMPL`), for one COPY."""
    return _new()  # type: ignore[no-any-return]

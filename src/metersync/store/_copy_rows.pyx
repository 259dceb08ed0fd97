# cython: language_level=3
"""The rows of one COPY OUT, taken from libpq's input buffer in C (issue 12: many tenants).

psycopg hands out a COPY's rows one ``PGconn.get_copy_data`` call at a time: each row is a
tuple, a buffer object and a memoryview, then a list entry and a ``b"".join`` copy, about 2 µs
of the event loop's CPU per wide row (12% of a 300-tenant cycle, measured with py-spy). Here
one call takes every complete row libpq holds, with ``PQgetCopyData`` and ``memcpy`` into one
growing buffer: no Python object per row. The buffer is then handed to the codec as it is
(buffer protocol, read-only, no copy).

libpq itself is not linked: :func:`bind` takes the addresses of ``PQgetCopyData`` and
``PQfreemem`` in the libpq that psycopg already loaded (``metersync.store.libpq`` finds them),
so the ``PGconn`` pointer psycopg documents (``PGconn.pgconn_ptr``) is only ever given to the
library that made it. This module knows bytes and a C function pointer; no SQL, no psycopg.
"""

from cpython.buffer cimport PyBuffer_FillInfo
from libc.stdint cimport uintptr_t
from libc.stdlib cimport free, realloc
from libc.string cimport memcpy

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long nfds, int timeout)
    short POLLIN

cdef extern from "<time.h>" nogil:
    struct timespec:
        long tv_sec
        long tv_nsec
    int clock_gettime(int clk_id, timespec *tp)
    int CLOCK_MONOTONIC


cdef inline long long _now_ms() noexcept nogil:
    cdef timespec t
    clock_gettime(CLOCK_MONOTONIC, &t)
    return <long long>t.tv_sec * 1000 + t.tv_nsec // 1000000


ctypedef int (*GetCopyData)(void *conn, char **buffer, int async_) noexcept nogil
ctypedef void (*FreeMem)(void *ptr) noexcept nogil
ctypedef int (*ConsumeInput)(void *conn) noexcept nogil

cdef GetCopyData _get_copy_data = NULL
cdef FreeMem _free_mem = NULL
cdef ConsumeInput _consume_input = NULL
cdef char _EMPTY[1]

# What read_to_end says besides libpq's own 0/-1/-2 (and _take when realloc fails).
cdef enum:
    _STOPPED = -3
    _NO_MEMORY = -4


def bind(uintptr_t get_copy_data, uintptr_t free_mem, uintptr_t consume_input):
    """Use these addresses of libpq's ``PQgetCopyData``, ``PQfreemem`` and ``PQconsumeInput``
    (those of the libpq the connections come from: anything else is undefined behaviour)."""
    global _get_copy_data, _free_mem, _consume_input
    if get_copy_data == 0 or free_mem == 0 or consume_input == 0:
        raise ValueError(
            "bind() needs the addresses of PQgetCopyData, PQfreemem and PQconsumeInput, got 0"
        )
    _get_copy_data = <GetCopyData>get_copy_data
    _free_mem = <FreeMem>free_mem
    _consume_input = <ConsumeInput>consume_input


def bound():
    """Whether :func:`bind` was called (``CopyRows.drain`` refuses to run before)."""
    return _get_copy_data != NULL


cdef class CopyRows:
    """The rows of one COPY OUT, in order, as one contiguous buffer (the binary header rides
    on the first row, the trailer is the last). Read-only buffer protocol; ``len()`` is its
    size in bytes, :attr:`rows` the number of COPY data messages taken."""

    cdef char *buf
    cdef Py_ssize_t size
    cdef Py_ssize_t capacity
    cdef Py_ssize_t count
    cdef int exports

    def __dealloc__(self):
        free(self.buf)

    @property
    def rows(self):
        """How many COPY data messages (rows) were taken."""
        return self.count

    def __len__(self):
        return self.size

    def data(self):
        """Every row taken, in order: a read-only view of the buffer (no copy)."""
        return memoryview(self)

    cdef int _take(self, void *conn) noexcept nogil:
        """Every complete row libpq holds, appended: libpq's verdict after the last one, or
        _NO_MEMORY."""
        cdef char *row = NULL
        cdef char *grown
        cdef int n
        cdef Py_ssize_t want
        while True:
            n = _get_copy_data(conn, &row, 1)
            if n <= 0:
                return n
            if self.size + n > self.capacity:
                want = max(self.capacity * 2, self.size + n, 65536)
                grown = <char*>realloc(self.buf, want)
                if grown == NULL:
                    _free_mem(row)
                    return _NO_MEMORY
                self.buf, self.capacity = grown, want
            memcpy(self.buf + self.size, row, n)
            _free_mem(row)
            self.size += n
            self.count += 1

    cdef void *_conn(self, pgconn) except? NULL:
        if _get_copy_data == NULL:
            raise RuntimeError("metersync.store._copy_rows: bind() was not called")
        if self.exports:
            raise BufferError("the rows are exported: no more can be added")
        ptr = pgconn.pgconn_ptr  # None once closed: never a dangling pointer
        if ptr is None:
            return NULL
        return <void*><uintptr_t>ptr

    def drain(self, pgconn):
        """Take every complete row libpq holds for ``pgconn`` (psycopg's ``PGconn``).

        Returns libpq's verdict after the last row taken: ``0`` no complete row is buffered
        (read more input, then call again), ``-1`` the COPY is over (its result follows),
        ``-2`` libpq failed (its error message says why; also when the connection is closed).
        """
        cdef void *conn = self._conn(pgconn)
        cdef int status
        if conn == NULL:
            return -2
        status = self._take(conn)
        if status == _NO_MEMORY:
            raise MemoryError()
        return status

    def read_to_end(self, pgconn, int fd, stop, int slice_ms=50):
        """Take rows until the COPY is over, waiting for ``fd`` (the connection's socket)
        without the GIL: for a worker thread, whose process's event loop is busy.

        ``stop.is_set()`` is asked every ``slice_ms`` (the only time the GIL is taken back
        before the end): true ends the read early. Returns ``-1`` the COPY is over (its result
        follows), ``-2`` libpq failed, ``-3`` stopped (libpq is still in the COPY). Nothing
        else may use the connection meanwhile.
        """
        cdef void *conn = self._conn(pgconn)
        cdef int status = 0
        cdef int ready
        cdef long long due
        cdef pollfd p
        if conn == NULL:
            return -2
        while True:
            with nogil:
                due = _now_ms() + slice_ms
                while True:
                    status = self._take(conn)
                    if status != 0:
                        break
                    p.fd, p.events, p.revents = fd, POLLIN, 0
                    ready = poll(&p, 1, slice_ms)
                    if ready < 0:  # EINTR: wait again
                        continue
                    # Read even after a silent slice: input may wait in the TLS layer, where
                    # the socket does not show it.
                    if _consume_input(conn) == 0:
                        status = -2
                        break
                    if _now_ms() >= due:  # time to ask about the stop
                        status = self._take(conn)
                        break
            if status == _NO_MEMORY:
                raise MemoryError()
            if status != 0:
                return status
            if stop.is_set():
                return _STOPPED

    def __getbuffer__(self, Py_buffer *buffer, int flags):
        PyBuffer_FillInfo(
            buffer, self, self.buf if self.buf != NULL else _EMPTY, self.size, 1, flags
        )
        self.exports += 1

    def __releasebuffer__(self, Py_buffer *buffer):
        self.exports -= 1

# The output buffer: one bytes object allocated at its upper bound and shrunk at the end, or a
# reused scratch buffer for small outputs (included by _batch.pyx).


cdef class _Out:
    cdef PyObject* obj

    def __cinit__(self, Py_ssize_t size):
        self.obj = _bytes_new(NULL, size)
        if self.obj == NULL:
            raise MemoryError()
        if size >= SCRATCH_MAX:
            ms_hugepage_hint(PyBytes_AS_STRING(<object>self.obj), size)

    cdef uint8_t* ptr(self):
        return <uint8_t*>PyBytes_AS_STRING(<object>self.obj)

    cdef object finish(self, Py_ssize_t used):
        if _PyBytes_Resize(&self.obj, used) < 0:
            self.obj = NULL
            raise MemoryError()
        result = <object>self.obj
        return result

    def __dealloc__(self):
        Py_XDECREF(self.obj)


# Outputs up to SCRATCH_MAX bytes are written into a reused scratch buffer and copied into an
# exact-size bytes object. Why: writing straight into a fresh upper-bound-sized allocation makes
# glibc mmap it (and the kernel fault in every page) on every call, because the final shrunk size
# is what sets malloc's dynamic mmap threshold. Page faults cost ~1 ms per MB here, a memcpy
# ~0.1 ms: for the 1000-row JSON slices this halves the time. At most two scratch buffers are kept.
cdef enum:
    SCRATCH_MAX = 8 * 1024 * 1024
    SCRATCH_MIN = 256 * 1024
    SCRATCH_KEEP = 2

_scratch_pool = []


cdef bytearray _take_scratch(Py_ssize_t size):
    cdef bytearray buf
    while _scratch_pool:
        buf = _scratch_pool.pop()
        if len(buf) >= size:
            return buf
    return PyByteArray_FromStringAndSize(NULL, max(size, SCRATCH_MIN))


cdef _give_scratch(bytearray buf):
    if len(_scratch_pool) < SCRATCH_KEEP:
        _scratch_pool.append(buf)


# The JSON writers copy fixed 32-byte blocks (two vector moves) instead of calling memcpy with a
# small variable length: the output has SLACK spare bytes at its end, and each write is followed
# by the next one, so the bytes written past a value are either overwritten or in the slack.
cdef enum:
    SLACK = 64
    KEY_SLOT = 64  # JSON keys up to this length live in fixed slots (copied in 32-byte blocks)


cdef inline void _copy32(uint8_t* dst, const uint8_t* src) noexcept nogil:
    memcpy(dst, src, 32)

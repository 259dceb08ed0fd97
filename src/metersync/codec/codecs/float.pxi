# float4 / float8 (Arrow float32 / float64): the COPY field (IEEE bits, big-endian), the JSON
# number as Python's shortest round-trip repr (NaN and infinities refused), decoding (included
# by _batch.pyx).


cdef inline uint8_t* _float32_copy(uint8_t* p, const Col* col, int64_t j) noexcept nogil:
    ms_put32(p, 4)
    ms_put32(p + 4, (<const uint32_t*>col.data)[j])
    return p + 8


cdef inline uint8_t* _float64_copy(uint8_t* p, const Col* col, int64_t j) noexcept nogil:
    ms_put32(p, 8)
    ms_put64(p + 4, (<const uint64_t*>col.data)[j])
    return p + 12


cdef bint _float_check_json(const Col* col, int64_t nrows, Py_ssize_t ci,
                            Failure* f) noexcept nogil:
    """The first NaN or infinity of the column (they have no JSON form)."""
    cdef int64_t r, j
    cdef double x
    for r in range(nrows):
        if not _valid(col, r):
            continue
        j = col.offset + r
        x = (<const float*>col.data)[j] if col.kind == KIND_FLOAT32 else (<const double*>col.data)[j]
        if not isfinite(x):
            f.code = ERR_FLOAT
            f.col = ci
            f.row = r
            return False
    return True


cdef uint8_t* _put_float(uint8_t* p, double x) noexcept nogil:
    """Python's repr of the float (shortest round-trip); floats are off the hot path."""
    cdef char* text
    cdef size_t n
    with gil:
        text = PyOS_double_to_string(x, b"r", 0, Py_DTSF_ADD_DOT_0, NULL)
        if text == NULL:  # out of memory: leave an invalid marker, caller checks
            return NULL
        n = strlen(text)
        memcpy(p, text, n)
        PyMem_Free(text)
    return p + n


cdef inline uint8_t* _float32_json(uint8_t* p, const Col* col, int64_t j) noexcept nogil:
    return _put_float(p, (<const float*>col.data)[j])


cdef inline uint8_t* _float64_json(uint8_t* p, const Col* col, int64_t j) noexcept nogil:
    return _put_float(p, (<const double*>col.data)[j])


cdef inline void _float32_decode(DCol* col, int64_t r, const uint8_t* p) noexcept nogil:
    (<uint32_t*>col.data)[r] = ms_get32(p)


cdef inline void _float64_decode(DCol* col, int64_t r, const uint8_t* p) noexcept nogil:
    ms_store64(col.data + 8 * r, ms_get64(p))


cdef inline int64_t _float_json_len(double x) noexcept nogil:
    """Length of _put_float's output (-1: out of memory); floats are off the hot path."""
    cdef uint8_t buf[40]
    cdef uint8_t* end = _put_float(buf, x)
    return -1 if end == NULL else end - buf

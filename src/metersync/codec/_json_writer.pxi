# Canonical JSON writer: validate column by column, size the output from each codec's longest
# value, then write every row in one nogil loop that hands each value to its codec (included by
# _batch.pyx).


cdef int64_t _json_value_max(const Col* col) noexcept nogil:
    """Most bytes one value of this column takes; text columns count ``null`` here and their
    exact escaped size in the validation pass."""
    if col.kind == KIND_DECIMAL:
        return 2 + max(39, col.scale + 1)
    if col.kind == KIND_UUID:
        return 38
    if col.kind == KIND_INT64 or col.kind == KIND_INT32 or col.kind == KIND_INT16:
        return 20
    if col.kind == KIND_FLOAT64 or col.kind == KIND_FLOAT32:
        return 32
    if col.kind == KIND_TIMESTAMP:
        return 29
    if col.kind == KIND_DATE:
        return 12
    if col.kind == KIND_BOOL:
        return 5
    return 4  # text


cdef bint _json_check(const Col* col, int64_t nrows, Py_ssize_t ci, int64_t* text,
                      Failure* f) noexcept nogil:
    """Every value of the column has a canonical JSON form; ``text`` grows by its escaped text."""
    cdef int64_t n
    if col.kind == KIND_STRING or col.kind == KIND_LARGE_STRING:
        n = _check_text(col, nrows, ci, True, f)
        text[0] += n
        return n >= 0
    if col.kind == KIND_FLOAT32 or col.kind == KIND_FLOAT64:
        return _float_check_json(col, nrows, ci, f)
    if col.kind == KIND_DATE:
        return _date_check_json(col, nrows, ci, f)
    if col.kind == KIND_TIMESTAMP:
        return _timestamp_check_json(col, nrows, ci, f)
    return True


cdef Py_ssize_t _json_rows(const Col* cols, Py_ssize_t ncols, int64_t nrows,
                           uint8_t* out) noexcept nogil:
    cdef uint8_t* p = out
    cdef const Col* col
    cdef int64_t r, j
    cdef Py_ssize_t c, k
    p[0] = 91  # '['
    p += 1
    for r in range(nrows):
        if r:
            p[0] = 44
            p += 1
        if ncols == 0:
            p[0] = 123
            p += 1
        for c in range(ncols):
            col = &cols[c]
            # '{"name":' for the first column, ',"name":' for the others
            for k in range(0, col.key_len, 32):
                _copy32(p + k, <const uint8_t*>col.key + k)
            p += col.key_len
            j = col.offset + r
            if col.validity != NULL and not ((col.validity[j >> 3] >> (j & 7)) & 1):
                memcpy(p, b"null", 4)
                p += 4
                continue
            # Most frequent kinds first (the wide readings are mostly numeric).
            if col.kind == KIND_DECIMAL:
                p = _numeric_json(p, col, j)
            elif col.kind == KIND_INT64:
                p = _int64_json(p, col, j)
            elif col.kind == KIND_TIMESTAMP:
                p = _timestamp_json(p, col, j)
            elif col.kind == KIND_UUID:
                p = _uuid_json(p, col, j)
            elif col.kind == KIND_INT32:
                p = _int32_json(p, col, j)
            elif col.kind == KIND_INT16:
                p = _int16_json(p, col, j)
            elif col.kind == KIND_DATE:
                p = _date_json(p, col, j)
            elif col.kind == KIND_BOOL:
                p = _bool_json(p, col, j)
            elif col.kind == KIND_FLOAT64:
                p = _float64_json(p, col, j)
                if p == NULL:
                    return -1
            elif col.kind == KIND_FLOAT32:
                p = _float32_json(p, col, j)
                if p == NULL:
                    return -1
            else:
                p = _text_json(p, col, j)
        p[0] = 125  # '}'
        p += 1
    p[0] = 93  # ']'
    p += 1
    return p - out


def json_rows(batch):
    """JSON array of one object per row, keys in schema order, canonical value forms, no spaces."""
    cdef _Columns c = _open(batch)
    cdef Failure f
    cdef Py_ssize_t i, used
    cdef int64_t size, per_row = 3
    cdef Col* col
    cdef uint8_t* dst
    cdef _Out out
    cdef bytearray scratch
    try:
        f.code = 0
        size = 2
        for i in range(c.ncols):
            col = &c.cols[i]
            with nogil:
                _json_check(col, c.nrows, i, &size, &f)
            if f.code:
                _raise_failure(c, &f)
            per_row += col.key_len + 1 + _json_value_max(col)
        size += per_row * c.nrows + SLACK
        if size <= SCRATCH_MAX:
            scratch = _take_scratch(size)
            dst = <uint8_t*>PyByteArray_AS_STRING(scratch)
            with nogil:
                used = _json_rows(c.cols, c.ncols, c.nrows, dst)
            if used < 0:
                raise MemoryError()
            result = PyBytes_FromStringAndSize(<char*>dst, used)
            _give_scratch(scratch)
            return result
        out = _Out(size)
        dst = out.ptr()
        with nogil:
            used = _json_rows(c.cols, c.ncols, c.nrows, dst)
        if used < 0:
            raise MemoryError()
        return out.finish(used)
    finally:
        c.close()

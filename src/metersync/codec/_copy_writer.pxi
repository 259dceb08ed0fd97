# Binary COPY writer: validate column by column, size the output from each codec's largest field,
# then write every tuple in one nogil loop that hands each field to its codec (included by
# _batch.pyx).


cdef int64_t _copy_field_max(const Col* col) noexcept nogil:
    """Most bytes one field of this column takes in a tuple (its 4-byte length included); text
    columns count 4 here and their exact payload in the validation pass."""
    if col.kind == KIND_DECIMAL:
        return 12 + 2 * col.max_groups
    if col.kind == KIND_UUID:
        return 20
    if col.kind == KIND_INT64 or col.kind == KIND_FLOAT64 or col.kind == KIND_TIMESTAMP:
        return 12
    if col.kind == KIND_INT32 or col.kind == KIND_FLOAT32 or col.kind == KIND_DATE:
        return 8
    if col.kind == KIND_INT16:
        return 6
    if col.kind == KIND_BOOL:
        return 5
    return 4  # text and plain numeric


cdef bint _copy_check(const Col* col, int64_t nrows, Py_ssize_t ci, int64_t* text,
                      Failure* f) noexcept nogil:
    """Every value of the column is one PostgreSQL stores; ``text`` grows by its text bytes."""
    cdef int64_t n
    if col.kind == KIND_STRING or col.kind == KIND_LARGE_STRING:
        n = _check_text(col, nrows, ci, False, f)
        text[0] += n
        return n >= 0
    if col.kind == KIND_DECIMAL:
        return _numeric_check_copy(col, nrows, ci, f)
    if col.kind == KIND_NUMERIC:
        return _plain_numeric_check(col, nrows, ci, False, text, f)
    if col.kind == KIND_DATE:
        return _date_check_copy(col, nrows, ci, f)
    if col.kind == KIND_TIMESTAMP:
        return _timestamp_check_copy(col, nrows, ci, f)
    return True


cdef Py_ssize_t _copy_rows(const Col* cols, Py_ssize_t ncols, int64_t nrows,
                           uint8_t* out) noexcept nogil:
    cdef uint8_t* p = out
    cdef const Col* col
    cdef int64_t r, j
    cdef Py_ssize_t c
    memcpy(p, COPY_HEADER, 19)
    p += 19
    for r in range(nrows):
        ms_put16(p, <uint16_t>ncols)
        p += 2
        for c in range(ncols):
            col = &cols[c]
            j = col.offset + r
            if col.validity != NULL and not ((col.validity[j >> 3] >> (j & 7)) & 1):
                ms_put32(p, 0xFFFFFFFF)
                p += 4
                continue
            # Most frequent kinds first (the wide readings are mostly numeric).
            if col.kind == KIND_DECIMAL:
                p = _numeric_copy(p, col, j)
            elif col.kind == KIND_INT64:
                p = _int64_copy(p, col, j)
            elif col.kind == KIND_TIMESTAMP:
                p = _timestamp_copy(p, col, j)
            elif col.kind == KIND_UUID:
                p = _uuid_copy(p, col, j)
            elif col.kind == KIND_INT32:
                p = _int32_copy(p, col, j)
            elif col.kind == KIND_DATE:
                p = _date_copy(p, col, j)
            elif col.kind == KIND_INT16:
                p = _int16_copy(p, col, j)
            elif col.kind == KIND_FLOAT32:
                p = _float32_copy(p, col, j)
            elif col.kind == KIND_FLOAT64:
                p = _float64_copy(p, col, j)
            elif col.kind == KIND_BOOL:
                p = _bool_copy(p, col, j)
            elif col.kind == KIND_NUMERIC:
                p = _plain_numeric_copy(p, col, j)
            else:
                p = _text_copy(p, col, j)
    ms_put16(p, 0xFFFF)
    p += 2
    return p - out


def copy_binary(batch):
    """Complete PostgreSQL binary COPY stream (header, one tuple per row, trailer)."""
    cdef _Columns c = _open(batch)
    cdef Failure f
    cdef Py_ssize_t i, used
    cdef int64_t size, per_row = 2
    cdef Col* col
    cdef uint8_t* dst
    cdef _Out out
    cdef bytearray scratch
    try:
        f.code = 0
        size = 19 + 2
        for i in range(c.ncols):
            col = &c.cols[i]
            with nogil:
                _copy_check(col, c.nrows, i, &size, &f)
            if f.code:
                _raise_failure(c, &f)
            per_row += _copy_field_max(col)
        size += per_row * c.nrows
        if size <= SCRATCH_MAX:
            scratch = _take_scratch(size)
            dst = <uint8_t*>PyByteArray_AS_STRING(scratch)
            with nogil:
                used = _copy_rows(c.cols, c.ncols, c.nrows, dst)
            result = PyBytes_FromStringAndSize(<char*>dst, used)
            _give_scratch(scratch)
            return result
        out = _Out(size)
        dst = out.ptr()
        with nogil:
            used = _copy_rows(c.cols, c.ncols, c.nrows, dst)
        return out.finish(used)
    finally:
        c.close()

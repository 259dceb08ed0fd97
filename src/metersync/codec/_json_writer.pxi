# JSON writer: validate column by column, size the output from each codec's longest value, then
# write every row in one nogil loop that hands each value to its codec (included by _batch.pyx).
#
# Profiles (see metersync.codec._types.JSON_PROFILES): "metersync" writes a null as ``null`` and a
# decimal as a JSON number; "metertrack" omits a null field (key absent) and writes a decimal as a
# JSON string with the column's scale. json_row_sizes and split_by_body_size measure rows with the
# lengths each codec reports for its values (the twins' tests hold them to the encoded text).


# len(b'{"readings":') + len(b'[') + len(b']') + len(b'}'): the upload body around the rows.
cdef enum:
    BODY_ENVELOPE = 15


cdef int64_t _json_value_max(const Col* col, bint quote_decimals) noexcept nogil:
    """Most bytes one value of this column takes; text columns count ``null`` here and their
    exact escaped size in the validation pass."""
    if col.kind == KIND_DECIMAL:
        return 2 + max(39, col.scale + 1) + (2 if quote_decimals else 0)
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
    return 4  # text and plain numeric


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
    if col.kind == KIND_NUMERIC:
        return _plain_numeric_check(col, nrows, ci, True, text, f)
    if col.kind == KIND_DATE:
        return _date_check_json(col, nrows, ci, f)
    if col.kind == KIND_TIMESTAMP:
        return _timestamp_check_json(col, nrows, ci, f)
    return True


cdef inline Py_ssize_t _json_rows_as(const Col* cols, Py_ssize_t ncols, int64_t nrows,
                                     uint8_t* out, bint omit_nulls,
                                     bint quote_decimals) noexcept nogil:
    """Write the rows as a JSON array into ``out``; return its length (-1: out of memory)."""
    cdef uint8_t* p = out
    cdef uint8_t* row
    cdef const Col* col
    cdef int64_t r, j
    cdef Py_ssize_t c, k
    p[0] = 91  # '['
    p += 1
    for r in range(nrows):
        if r:
            p[0] = 44
            p += 1
        row = p
        for c in range(ncols):
            col = &cols[c]
            j = col.offset + r
            if col.validity != NULL and not ((col.validity[j >> 3] >> (j & 7)) & 1):
                if omit_nulls:
                    continue
                for k in range(0, col.key_len, 32):  # ',"name":'
                    _copy32(p + k, <const uint8_t*>col.key + k)
                p += col.key_len
                memcpy(p, b"null", 4)
                p += 4
                continue
            for k in range(0, col.key_len, 32):
                _copy32(p + k, <const uint8_t*>col.key + k)
            p += col.key_len
            # Most frequent kinds first (the wide readings are mostly numeric).
            if col.kind == KIND_DECIMAL:
                if quote_decimals:
                    p[0] = 34
                    p += 1
                p = _numeric_json(p, col, j)
                if quote_decimals:
                    p[0] = 34
                    p += 1
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
            elif col.kind == KIND_NUMERIC:
                p = _plain_numeric_json(p, col, j, quote_decimals)
            else:
                p = _text_json(p, col, j)
        if p == row:  # no field written: '{}'
            p[0] = 123
            p += 1
        else:  # the first key's comma opens the object
            row[0] = 123
        p[0] = 125  # '}'
        p += 1
    p[0] = 93  # ']'
    p += 1
    return p - out


cdef Py_ssize_t _json_rows(const Col* cols, Py_ssize_t ncols, int64_t nrows, uint8_t* out,
                           bint omit_nulls, bint quote_decimals) noexcept nogil:
    """The row loop compiled once per profile with its flags as constants, so neither profile pays
    for the other's branches (and the compiler inlines every codec into each copy)."""
    if omit_nulls and quote_decimals:
        return _json_rows_as(cols, ncols, nrows, out, True, True)
    if not omit_nulls and not quote_decimals:
        return _json_rows_as(cols, ncols, nrows, out, False, False)
    return _json_rows_as(cols, ncols, nrows, out, omit_nulls, quote_decimals)


cdef bint _json_row_lens(const Col* cols, Py_ssize_t ncols, int64_t nrows, bint omit_nulls,
                         bint quote_decimals, int64_t* sizes) noexcept nogil:
    """Each row's length as _json_rows writes it (without the separating comma), computed from
    each codec's value length without writing the text (False: out of memory). A row is its fields' ',"key":value' runs, the
    first comma turned into '{', and '}'; an empty row is '{}'."""
    cdef const Col* col
    cdef int64_t r, j, n, v
    cdef Py_ssize_t c
    for r in range(nrows):
        n = 0
        for c in range(ncols):
            col = &cols[c]
            j = col.offset + r
            if col.validity != NULL and not ((col.validity[j >> 3] >> (j & 7)) & 1):
                if not omit_nulls:
                    n += col.key_len + 4
                continue
            n += col.key_len
            if col.kind == KIND_DECIMAL:
                n += _numeric_json_len(col, j) + (2 if quote_decimals else 0)
            elif col.kind == KIND_INT64:
                n += _i64_json_len((<const int64_t*>col.data)[j])
            elif col.kind == KIND_TIMESTAMP:
                n += TIMESTAMP_JSON_LEN + (1 if col.tz else 0)
            elif col.kind == KIND_UUID:
                n += UUID_JSON_LEN
            elif col.kind == KIND_INT32:
                n += _i64_json_len((<const int32_t*>col.data)[j])
            elif col.kind == KIND_INT16:
                n += _i64_json_len((<const int16_t*>col.data)[j])
            elif col.kind == KIND_DATE:
                n += DATE_JSON_LEN
            elif col.kind == KIND_BOOL:
                n += _bool_json_len(col, j)
            elif col.kind == KIND_FLOAT64 or col.kind == KIND_FLOAT32:
                if col.kind == KIND_FLOAT64:
                    v = _float_json_len((<const double*>col.data)[j])
                else:
                    v = _float_json_len((<const float*>col.data)[j])
                if v < 0:
                    return False
                n += v
            elif col.kind == KIND_NUMERIC:
                n += _plain_numeric_json_len(col, j, quote_decimals)
            else:
                n += _text_json_len(col, j)
        sizes[r] = n + 1 if n else 2
    return True


cdef int64_t _json_prepare(_Columns c, bint quote_decimals, int64_t* text) except -1:
    """Validate every column (raising the twin's error for the first bad value); return the most
    bytes one row can take apart from its text, and set ``text`` to the escaped text of all rows."""
    cdef Failure f
    cdef Py_ssize_t i
    cdef int64_t per_row = 3
    cdef Col* col
    f.code = 0
    text[0] = 0
    for i in range(c.ncols):
        col = &c.cols[i]
        with nogil:
            _json_check(col, c.nrows, i, text, &f)
        if f.code:
            _raise_failure(c, &f)
        per_row += col.key_len + 1 + _json_value_max(col, quote_decimals)
    return per_row


def json_rows(batch, *, profile="metersync"):
    """JSON array of one object per row, keys in schema order, canonical value forms, no spaces;
    ``profile`` "metertrack" omits null fields and writes decimals as strings."""
    cdef bint omit_nulls, quote_decimals
    omit_nulls, quote_decimals = _types.json_profile(profile)
    cdef _Columns c = _open(batch)
    cdef Py_ssize_t used
    cdef int64_t text, size, per_row
    cdef uint8_t* dst
    cdef _Out out
    cdef bytearray scratch
    try:
        per_row = _json_prepare(c, quote_decimals, &text)
        size = 2 + text + per_row * c.nrows + SLACK
        if size <= SCRATCH_MAX:
            scratch = _take_scratch(size)
            dst = <uint8_t*>PyByteArray_AS_STRING(scratch)
            with nogil:
                used = _json_rows(c.cols, c.ncols, c.nrows, dst, omit_nulls, quote_decimals)
            if used < 0:
                raise MemoryError()
            result = PyBytes_FromStringAndSize(<char*>dst, used)
            _give_scratch(scratch)
            return result
        out = _Out(size)
        dst = out.ptr()
        with nogil:
            used = _json_rows(c.cols, c.ncols, c.nrows, dst, omit_nulls, quote_decimals)
        if used < 0:
            raise MemoryError()
        return out.finish(used)
    finally:
        c.close()


cdef object _row_sizes(_Columns c, bint omit_nulls, bint quote_decimals):
    """Each row's encoded length as an Arrow int64 buffer, from the codecs' value lengths (the
    text itself is never written: about a quarter of the time of encoding the rows)."""
    cdef int64_t text
    cdef int64_t* sizes
    cdef bint ok
    _json_prepare(c, quote_decimals, &text)  # the same validation (and errors) as json_rows
    result = pa.allocate_buffer(8 * c.nrows)
    if c.nrows == 0:
        return result
    sizes = <int64_t*><size_t>result.address
    with nogil:
        ok = _json_row_lens(c.cols, c.ncols, c.nrows, omit_nulls, quote_decimals, sizes)
    if not ok:
        raise MemoryError()
    return result


def json_row_sizes(batch, *, profile="metersync"):
    """Each row's length in bytes as ``json_rows(batch, profile=profile)`` encodes it (without the
    separating comma), as a pyarrow int64 array."""
    cdef bint omit_nulls, quote_decimals
    omit_nulls, quote_decimals = _types.json_profile(profile)
    cdef _Columns c = _open(batch)
    try:
        buf = _row_sizes(c, omit_nulls, quote_decimals)
        return pa.Array.from_buffers(pa.int64(), c.nrows, [None, buf])
    finally:
        c.close()


def split_by_body_size(batch, max_body_bytes, *, profile="metersync"):
    """Zero-copy slices of ``batch``, in order, each as many rows as fit an upload body
    ``{"readings":<json_rows(slice)>}`` of at most ``max_body_bytes`` bytes."""
    cdef bint omit_nulls, quote_decimals
    cdef int64_t cap, r, start = 0, body = BODY_ENVELOPE, add, n
    cdef const int64_t* sizes
    omit_nulls, quote_decimals = _types.json_profile(profile)
    cap = _types.body_cap(max_body_bytes)
    data = batch if type(batch) is pa.RecordBatch else _types.as_batch(batch)
    cdef _Columns c = _open(data)
    try:
        buf = _row_sizes(c, omit_nulls, quote_decimals)
        data = c.batch  # what was encoded (string_view columns come back as large_string)
    finally:
        c.close()
    n = data.num_rows
    sizes = <const int64_t*><size_t>buf.address
    bounds = []
    for r in range(n):
        add = sizes[r] + (1 if r > start else 0)
        if body + add <= cap:
            body += add
            continue
        if BODY_ENVELOPE + sizes[r] > cap:
            raise _types.row_too_large(r, sizes[r], BODY_ENVELOPE, cap)
        bounds.append((start, r))
        start = r
        body = BODY_ENVELOPE + sizes[r]
    if n:
        bounds.append((start, n))
    return [data.slice(a, b - a) for a, b in bounds]

# Binary COPY reader: pass 1 checks the structure and counts rows and text bytes, Arrow buffers are
# allocated at their exact sizes, pass 2 hands each field to its codec in one nogil loop (included
# by _batch.pyx). The DCol/DFail structs and D_* codes are declared in _batch.pxd.


cdef int64_t _scan(const uint8_t* d, int64_t size, DCol* cols, Py_ssize_t ncols,
                   int64_t* body, DFail* f) noexcept nogil:
    """Pass 1: check the structure, count rows and text bytes; -1 on error."""
    cdef int64_t pos = 11, rows = 0, length
    cdef int code
    cdef uint32_t flags
    cdef int32_t ext
    cdef int16_t count
    cdef Py_ssize_t c
    cdef DCol* col
    if size < 11 or memcmp_(d, COPY_HEADER, 11):
        _dfail(f, D_SIGNATURE if size >= 11 else D_TRUNCATED, 0, -1, 11)
        return -1
    if size - pos < 8:
        _dfail(f, D_TRUNCATED, pos, -1, 8)
        return -1
    flags = ms_get32(d + pos)
    if flags & (1 << 16):
        _dfail(f, D_OIDS, pos, -1, flags)
        return -1
    if flags & <uint32_t>0xFFFE0000U:
        _dfail(f, D_FLAGS, pos, -1, flags)
        return -1
    ext = <int32_t>ms_get32(d + pos + 4)
    pos += 8
    if ext < 0:
        _dfail(f, D_EXTENSION, pos - 4, -1, ext)
        return -1
    if size - pos < ext:
        _dfail(f, D_TRUNCATED, pos, -1, ext)
        return -1
    pos += ext
    body[0] = pos
    while True:
        if size - pos < 2:
            _dfail(f, D_TRUNCATED, pos, -1, 2)
            return -1
        count = <int16_t>ms_get16(d + pos)
        if count == -1:
            pos += 2
            break
        if count != ncols:
            _dfail(f, D_FIELD_COUNT, pos, -1, count)
            return -1
        pos += 2
        for c in range(ncols):
            col = &cols[c]
            if size - pos < 4:
                _dfail(f, D_TRUNCATED, pos, c, 4)
                return -1
            length = <int32_t>ms_get32(d + pos)
            pos += 4
            if length == -1:
                continue
            if length < 0:
                _dfail(f, D_NEGATIVE_LENGTH, pos - 4, c, length)
                return -1
            if size - pos < length:
                _dfail(f, D_TRUNCATED, pos, c, length)
                return -1
            if col.width:
                if length != col.width:
                    _dfail(f, D_WIDTH, pos - 4, c, length)
                    return -1
            elif col.kind == KIND_NUMERIC:
                code = _numeric_out_check(d + pos, length)
                if code:
                    _dfail(f, code, pos + length, c, length)
                    return -1
                col.text_bytes += _numeric_out_len(d + pos)
            elif col.kind == KIND_DECIMAL:
                if length < 8 or <int16_t>ms_get16(d + pos) < 0 or \
                        length != 8 + 2 * <int64_t><int16_t>ms_get16(d + pos):
                    _dfail(f, D_NUMERIC_SHAPE, pos, c, length)
                    return -1
            else:
                col.text_bytes += length
            pos += length
        rows += 1
    if pos != size:
        _dfail(f, D_TRAILING, pos, -1, size - pos)
        return -1
    return rows


cdef bint _fill(const uint8_t* d, int64_t pos, DCol* cols, Py_ssize_t ncols, int64_t nrows,
                DFail* f) noexcept nogil:
    """Pass 2: decode every field into the pre-sized Arrow buffers."""
    cdef int64_t r, length, at
    cdef Py_ssize_t c
    cdef DCol* col
    cdef const uint8_t* p
    for r in range(nrows):
        pos += 2
        for c in range(ncols):
            col = &cols[c]
            length = <int32_t>ms_get32(d + pos)
            pos += 4
            p = d + pos
            if length == -1:
                col.nulls += 1
                if col.kind == KIND_STRING or col.kind == KIND_NUMERIC:
                    (<int32_t*>col.data)[r + 1] = (<int32_t*>col.data)[r]
                elif col.kind == KIND_LARGE_STRING:
                    (<int64_t*>col.data)[r + 1] = (<int64_t*>col.data)[r]
                elif col.kind == KIND_DECIMAL:
                    memset(col.data + 16 * r, 0, 16)
                elif col.kind != KIND_BOOL:
                    memset(col.data + col.width * r, 0, col.width)
                continue
            col.validity[r >> 3] |= 1 << (r & 7)
            at = pos
            pos += length
            if col.kind == KIND_DECIMAL:
                if not _numeric_value(p, length, col, col.data + 16 * r, at, c, f):
                    return False
            elif col.kind == KIND_INT64:
                _int64_decode(col, r, p)
            elif col.kind == KIND_FLOAT64:
                _float64_decode(col, r, p)
            elif col.kind == KIND_TIMESTAMP:
                if not _timestamp_decode(col, r, p, at, c, f):
                    return False
            elif col.kind == KIND_UUID:
                _uuid_decode(col, r, p)
            elif col.kind == KIND_INT32:
                _int32_decode(col, r, p)
            elif col.kind == KIND_FLOAT32:
                _float32_decode(col, r, p)
            elif col.kind == KIND_DATE:
                if not _date_decode(col, r, p, at, c, f):
                    return False
            elif col.kind == KIND_INT16:
                _int16_decode(col, r, p)
            elif col.kind == KIND_BOOL:
                _bool_decode(col, r, p)
            elif col.kind == KIND_NUMERIC:
                _plain_numeric_decode(col, r, p)
            elif not _text_decode(col, r, p, length, at, c, f):
                return False
    return True


_WIDTH = {
    KIND_UUID: 16, KIND_INT16: 2, KIND_INT32: 4, KIND_INT64: 8, KIND_FLOAT32: 4,
    KIND_FLOAT64: 8, KIND_BOOL: 1, KIND_DATE: 4, KIND_TIMESTAMP: 8,
}

_DECODE_TEXT = {
    D_TRUNCATED: "truncated (need {value} more bytes)",
    D_SIGNATURE: "missing PGCOPY signature",
    D_OIDS: "OIDs included (flag bit 16): not supported",
    D_FLAGS: "unknown critical header flags {value:#x}",
    D_EXTENSION: "negative header extension length {value}",
    D_FIELD_COUNT: "tuple has {value} fields, schema has {ncols}",
    D_NEGATIVE_LENGTH: "negative field length {value}",
    D_WIDTH: "column {name!r} ({pg_type}): field of {value} bytes, expected {width}",
    D_NUMERIC_SHAPE: "column {name!r}: malformed numeric field of {value} bytes",
    D_NUMERIC_SPECIAL: "column {name!r}: numeric NaN or infinity has no decimal128 form",
    D_NUMERIC_DIGIT: "column {name!r}: numeric digit out of range",
    D_NUMERIC_FIT: "column {name!r}: numeric does not fit {pg_type}",
    D_NUMERIC_FRACTION: "column {name!r}: numeric has more fractional digits than {pg_type}",
    D_DATE: "column {name!r}: date {value} has no date32 form",
    D_TIMESTAMP: "column {name!r}: timestamp {value} has no Arrow form",
    D_TRAILING: "{value} bytes after the trailer",
    D_TEXT_SIZE: "column {name!r}: more text than a string array holds",
    D_TEXT_UTF8: "column {name!r}: text is not valid UTF-8",
    D_NUMERIC_SIGN: "column {name!r}: unknown numeric sign",
    D_NUMERIC_DSCALE: "column {name!r}: numeric display scale out of range",
}


cdef _decode_error(DFail* f, plan):
    spec = plan[f.col] if f.col >= 0 else None
    what = _DECODE_TEXT[f.code].format(
        value=f.value,
        ncols=len(plan),
        name=spec.name if spec else "",
        pg_type=spec.pg_type if spec else "",
        width=_WIDTH.get(spec.kind, 0) if spec else 0,
    )
    return CodecValueError(f"invalid binary COPY data at byte {f.pos}: {what}")


cdef inline uint8_t* _address(object buf):
    return <uint8_t*><size_t>buf.address


def from_copy_binary(data, schema):
    """Decode binary COPY output into a record batch of ``schema`` (fields in COPY order)."""
    cdef const uint8_t[::1] view = memoryview(data).cast("B")
    cdef const uint8_t* d = &view[0] if view.shape[0] else <const uint8_t*>b""
    cdef int64_t size = view.shape[0], nrows, body = 0
    cdef Py_ssize_t ncols, i
    cdef DCol* cols
    cdef DCol* col
    cdef DFail f
    cdef bint ok
    plan = _types.column_plan(schema)
    ncols = len(plan)
    cols = <DCol*>calloc(ncols if ncols else 1, sizeof(DCol))
    if cols == NULL:
        raise MemoryError()
    try:
        for i, spec in enumerate(plan):
            cols[i].kind = spec.kind
            cols[i].scale = spec.scale
            cols[i].width = _WIDTH.get(spec.kind, 0)
            if spec.kind == KIND_DECIMAL:
                cols[i].limit = ms_u128_pow10(spec.precision)
        f.code = 0
        with nogil:
            nrows = _scan(d, size, cols, ncols, &body, &f)
        if nrows < 0:
            raise _decode_error(&f, plan)
        buffers = []
        for i, spec in enumerate(plan):
            col = &cols[i]
            validity = pa.allocate_buffer((nrows + 7) // 8)
            col.validity = _address(validity)
            memset(col.validity, 0, (nrows + 7) // 8)
            if spec.kind in (KIND_STRING, KIND_LARGE_STRING, KIND_NUMERIC):
                if spec.kind != KIND_LARGE_STRING and col.text_bytes > 2147483647:
                    f.code = D_TEXT_SIZE
                    f.col = i
                    f.pos = 0
                    raise _decode_error(&f, plan)
                width = 8 if spec.kind == KIND_LARGE_STRING else 4
                values = pa.allocate_buffer(width * (nrows + 1))
                chars = pa.allocate_buffer(col.text_bytes)
                col.data = _address(values)
                memset(col.data, 0, width)
                col.chars = _address(chars)
                buffers.append([validity, values, chars])
            else:
                if spec.kind == KIND_BOOL:
                    values = pa.allocate_buffer((nrows + 7) // 8)
                    col.data = _address(values)
                    memset(col.data, 0, (nrows + 7) // 8)
                else:
                    values = pa.allocate_buffer((16 if spec.kind == KIND_DECIMAL else col.width) * nrows)
                    col.data = _address(values)
                buffers.append([validity, values])
        with nogil:
            ok = _fill(d, body, cols, ncols, nrows, &f)
        if not ok:
            raise _decode_error(&f, plan)
        arrays = []
        for i, spec in enumerate(plan):
            bufs = buffers[i]
            if cols[i].nulls == 0:
                bufs[0] = None
            arrow_type = spec.arrow_type
            if isinstance(arrow_type, pa.BaseExtensionType):
                storage = pa.Array.from_buffers(arrow_type.storage_type, nrows, bufs,
                                                null_count=cols[i].nulls)
                arrays.append(pa.ExtensionArray.from_storage(arrow_type, storage))
            else:
                arrays.append(pa.Array.from_buffers(arrow_type, nrows, bufs,
                                                    null_count=cols[i].nulls))
        return pa.RecordBatch.from_arrays(arrays, schema=schema)
    finally:
        free(cols)

# Reading Arrow memory through the C data interface: a record batch exported as an array of
# ``Col`` (validity, values/offsets, encoding parameters), the column plan cache, and the error a
# nogil loop reports (included by _batch.pyx).


cdef inline bint _valid(const Col* col, int64_t row) noexcept nogil:
    cdef int64_t j
    if col.validity == NULL:
        return True
    j = col.offset + row
    return (col.validity[j >> 3] >> (j & 7)) & 1


cdef inline int64_t _text_offset(const Col* col, int64_t j) noexcept nogil:
    """Entry ``j`` (absolute index) of a string or plain numeric (int32) or large_string (int64)
    offsets buffer."""
    if col.kind == KIND_LARGE_STRING:
        return (<const int64_t*>col.data)[j]
    return (<const int32_t*>col.data)[j]  # string and plain numeric text


cdef inline int64_t _text_start(const Col* col, int64_t row) noexcept nogil:
    return _text_offset(col, col.offset + row)


cdef inline int64_t _text_end(const Col* col, int64_t row) noexcept nogil:
    return _text_offset(col, col.offset + row + 1)


cdef bint _format_matches(int kind, const char* fmt):
    if kind == KIND_UUID:
        return strcmp(fmt, b"w:16") == 0
    if kind == KIND_INT16:
        return strcmp(fmt, b"s") == 0
    if kind == KIND_INT32:
        return strcmp(fmt, b"i") == 0
    if kind == KIND_INT64:
        return strcmp(fmt, b"l") == 0
    if kind == KIND_FLOAT32:
        return strcmp(fmt, b"f") == 0
    if kind == KIND_FLOAT64:
        return strcmp(fmt, b"g") == 0
    if kind == KIND_BOOL:
        return strcmp(fmt, b"b") == 0
    if kind == KIND_STRING:
        return strcmp(fmt, b"u") == 0
    if kind == KIND_LARGE_STRING:
        return strcmp(fmt, b"U") == 0
    if kind == KIND_DATE:
        return strcmp(fmt, b"tdD") == 0
    if kind == KIND_TIMESTAMP:
        return strncmp(fmt, b"tsu:", 4) == 0
    if kind == KIND_DECIMAL:
        return strncmp(fmt, b"d:", 2) == 0
    if kind == KIND_NUMERIC:
        return strcmp(fmt, b"u") == 0  # the extension's string storage
    return False


cdef class _Columns:
    """A record batch exported through the C data interface, as an array of ``Col``.

    Owns the exported structs and releases them in :meth:`close` (called from ``finally``)
    or, as a last resort, when collected.
    """

    cdef object batch
    cdef object plan
    cdef object capsules
    cdef bytes keys
    cdef ArrowSchema* c_schema
    cdef ArrowArray* c_array
    cdef Col* cols
    cdef Py_ssize_t ncols
    cdef int64_t nrows

    def __cinit__(self):
        self.c_schema = NULL
        self.c_array = NULL
        self.cols = NULL

    cdef close(self):
        if self.c_array != NULL and self.c_array.release != NULL:
            self.c_array.release(self.c_array)
        if self.c_schema != NULL and self.c_schema.release != NULL:
            self.c_schema.release(self.c_schema)
        self.c_array = NULL
        self.c_schema = NULL
        free(self.cols)
        self.cols = NULL

    def __dealloc__(self):
        self.close()


# Column plans by a fingerprint of the exported ArrowSchema (formats, names, metadata, dictionary
# flags). Why: a fresh pa.Schema wrapper comes with every slice, and validating or even hashing
# one costs ~150-300 µs for the 44 wide columns, a third of encoding a 1000-row slice; the
# fingerprint is built in C from the capsule we export anyway, in ~2 µs.
_plans = {}
cdef enum:
    PLAN_ENTRIES = 64


cdef Py_ssize_t _metadata_len(const char* metadata) noexcept:
    """Byte length of a C data interface metadata blob (int32 count, then int32-sized pairs)."""
    cdef int32_t n, k, size
    cdef Py_ssize_t at = 4
    if metadata == NULL:
        return 0
    memcpy(&n, metadata, 4)
    for k in range(2 * n):
        memcpy(&size, metadata + at, 4)
        at += 4 + size
    return at


cdef bytes _fingerprint(ArrowSchema* schema):
    cdef Py_ssize_t i, total = 0, at = 0, n
    cdef ArrowSchema* ch
    cdef char* out
    for i in range(schema.n_children):
        ch = schema.children[i]
        total += strlen(ch.format) + 1 + (strlen(ch.name) if ch.name != NULL else 0) + 1
        total += _metadata_len(ch.metadata) + 1
    fp = PyBytes_FromStringAndSize(NULL, total)
    out = PyBytes_AS_STRING(fp)
    for i in range(schema.n_children):
        ch = schema.children[i]
        n = strlen(ch.format) + 1
        memcpy(out + at, ch.format, n)
        at += n
        n = strlen(ch.name) if ch.name != NULL else 0
        memcpy(out + at, ch.name, n)
        out[at + n] = 0
        at += n + 1
        n = _metadata_len(ch.metadata)
        memcpy(out + at, ch.metadata, n)
        out[at + n] = 2 if ch.dictionary != NULL else 1
        at += n + 1
    return fp


cdef bytes _key_slots(plan):
    """JSON key prefixes (',"a":'), each in a slot padded so that 32-byte block copies never read
    past it. The row writer turns the first written comma into '{' (with nulls omitted, the first
    key of a row is not always the first column's)."""
    slots = []
    for spec in plan:
        prefix = b"," + spec.json_key
        slots.append(prefix.ljust((len(prefix) + 31) // 32 * 32 + 32, b"\0"))
    return b"".join(slots)


cdef _Columns _open(object data):
    """Validate the batch's schema and export its columns; the caller must ``close()`` it."""
    cdef _Columns c = _Columns()
    cdef ArrowArray* child
    cdef Col* col
    cdef Py_ssize_t i, at
    cdef int64_t need
    cdef const char* base
    batch = data if type(data) is pa.RecordBatch else _types.as_batch(data)
    c.batch = batch
    c.nrows = batch.num_rows
    c.capsules = batch.__arrow_c_array__()
    c.c_schema = <ArrowSchema*>PyCapsule_GetPointer(c.capsules[0], b"arrow_schema")
    c.c_array = <ArrowArray*>PyCapsule_GetPointer(c.capsules[1], b"arrow_array")
    fp = _fingerprint(c.c_schema)
    entry = _plans.get(fp)
    if entry is None:
        normal = _types.as_batch(batch)  # string_view -> large_string
        if normal is not batch:
            c.close()
            return _open(normal)
        plan = _types.column_plan(batch.schema)  # CodecTypeError naming an unsupported column
        entry = (plan, _key_slots(plan))
        if len(_plans) >= PLAN_ENTRIES:
            _plans.clear()
        _plans[fp] = entry
    c.plan, c.keys = entry
    c.ncols = len(c.plan)
    if c.c_array.n_children != c.ncols or c.c_schema.n_children != c.ncols:
        raise CodecValueError("exported Arrow array does not match the batch schema")
    if c.c_array.length != c.nrows:
        raise CodecValueError("exported Arrow array length does not match the batch")
    c.cols = <Col*>calloc(c.ncols if c.ncols else 1, sizeof(Col))
    if c.cols == NULL:
        raise MemoryError()
    base = PyBytes_AS_STRING(c.keys)
    at = 0
    for i, spec in enumerate(c.plan):
        col = &c.cols[i]
        child = c.c_array.children[i]
        if not _format_matches(spec.kind, c.c_schema.children[i].format):
            raise CodecTypeError(
                f"column {spec.name!r}: exported Arrow format "
                f"{c.c_schema.children[i].format.decode()!r} does not match {spec.arrow_type}"
            )
        col.kind = spec.kind
        col.scale = spec.scale
        col.precision = spec.precision
        col.tz = spec.tz
        col.offset = child.offset + c.c_array.offset
        need = 3 if spec.kind in (KIND_STRING, KIND_LARGE_STRING, KIND_NUMERIC) else 2
        if child.n_buffers != need:
            raise CodecValueError(
                f"column {spec.name!r}: {child.n_buffers} Arrow buffers, expected {need}"
            )
        if child.length < c.c_array.offset + c.nrows:
            raise CodecValueError(f"column {spec.name!r}: Arrow child shorter than the batch")
        col.validity = NULL
        if child.null_count != 0:
            col.validity = <const uint8_t*>child.buffers[0]
        col.data = <const uint8_t*>child.buffers[1]
        if need == 3:
            col.chars = <const uint8_t*>child.buffers[2]
        if c.nrows and (col.data == NULL or (need == 3 and col.chars == NULL and
                                             _text_end(col, c.nrows - 1) > _text_start(col, 0))):
            raise CodecValueError(f"column {spec.name!r}: Arrow producer gave a NULL data buffer")
        if spec.kind == KIND_DECIMAL:
            col.max_groups = (max(0, spec.precision - spec.scale) + 3) // 4 + (spec.scale + 3) // 4
            col.limit = ms_u128_pow10(spec.precision)
        col.key = base + at
        col.key_len = len(spec.json_key) + 1
        at += ((col.key_len + 31) // 32) * 32 + 32
    return c


cdef _raise_failure(_Columns c, Failure* f):
    spec = c.plan[f.col]
    value = None
    if f.code == ERR_FLOAT:
        value = c.batch.column(f.col)[f.row].as_py()
    elif f.code == ERR_NUMERIC_SYNTAX or f.code == ERR_NUMERIC_RANGE:
        value = c.batch.column(f.col).storage[f.row].as_py()
    raise _types.value_error(spec, f.row, f.code, value)

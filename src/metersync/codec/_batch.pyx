# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Cython core of the metersync codec: Arrow record batches <-> PostgreSQL binary COPY, and the
canonical JSON upload body.

Arrow memory is read through the Arrow C data interface (``__arrow_c_array__`` capsules), so this
module links nothing but libc. Every encoder works in three steps: validate column by column
(the same order as the pure-Python twin, so both report the same first bad value), compute a
tight upper bound of the output size, then write rows with raw pointers in a ``nogil`` loop into
one pre-sized ``bytes`` object that is shrunk to its final length.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_FromStringAndSize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.pycapsule cimport PyCapsule_GetPointer
from cpython.ref cimport PyObject, Py_XDECREF
from libc.math cimport isfinite
from libc.stdint cimport int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memchr, memcpy, memset, strcmp, strncmp

import pyarrow as pa

from metersync.codec import _types

__all__ = ["copy_binary", "from_copy_binary", "json_rows", "uuid_array_binary"]


cdef extern from "Python.h":
    PyObject* _bytes_new "PyBytes_FromStringAndSize"(const char* s, Py_ssize_t n)
    int _PyBytes_Resize(PyObject** b, Py_ssize_t n)
    char* PyOS_double_to_string(double val, char format_code, int precision, int flags,
                                int* ptype)
    void PyMem_Free(void* p)
    int Py_DTSF_ADD_DOT_0


cdef extern from "stdint.h":
    int64_t INT64_MIN_ "INT64_MIN"
    int64_t INT64_MAX_ "INT64_MAX"
    int32_t INT32_MIN_ "INT32_MIN"
    int32_t INT32_MAX_ "INT32_MAX"

cdef extern from "string.h":
    int memcmp_ "memcmp"(const void* a, const void* b, size_t n) nogil
    size_t strlen(const char* s) nogil


# 2000-01-01 (PostgreSQL's epoch) relative to 1970-01-01 (Arrow's).
cdef enum:
    PG_EPOCH_DAYS = 10957
    UUID_OID = 2950
cdef int64_t PG_EPOCH_US = 946684800000000
cdef int64_t US_PER_DAY = 86400000000
# PostgreSQL's accepted ranges relative to its epoch (datatype/timestamp.h).
cdef int64_t PG_MIN_DATE = -2451545
cdef int64_t PG_END_DATE = 2145031949
cdef int64_t PG_MIN_TIMESTAMP = -211813488000000000
# Years 1..9999 (the canonical JSON form), relative to 1970.
cdef int64_t JSON_MIN_DAYS = -719162
cdef int64_t JSON_MAX_DAYS = 2932896
cdef int64_t JSON_MIN_US = -62135596800000000
cdef int64_t JSON_MAX_US = 253402300799999999

cdef const char* COPY_HEADER = b"PGCOPY\n\xff\r\n\x00\x00\x00\x00\x00\x00\x00\x00\x00"
cdef uint32_t POW10[5]
POW10[:] = [1, 10, 100, 1000, 10000]

# "00" .. "99" and "00" .. "ff": two output characters per table lookup.
cdef char DIGITS2[200]
cdef char HEX2[512]
for _i in range(100):
    DIGITS2[2 * _i] = 48 + _i // 10
    DIGITS2[2 * _i + 1] = 48 + _i % 10
for _i in range(256):
    HEX2[2 * _i] = b"0123456789abcdef"[_i >> 4]
    HEX2[2 * _i + 1] = b"0123456789abcdef"[_i & 15]

# JSON string escapes: output length per byte (1 plain, 2 short form, 6 \u00xx).
cdef uint8_t ESC_LEN[256]
for _i in range(256):
    ESC_LEN[_i] = 1
for _i in range(32):
    ESC_LEN[_i] = 6
for _i in (8, 9, 10, 12, 13, 34, 92):
    ESC_LEN[_i] = 2


#: The enum values of _batch.pxd, so a test can hold them to metersync.codec._types.
CODES = {
    "KIND_UUID": KIND_UUID, "KIND_INT16": KIND_INT16, "KIND_INT32": KIND_INT32,
    "KIND_INT64": KIND_INT64, "KIND_FLOAT32": KIND_FLOAT32, "KIND_FLOAT64": KIND_FLOAT64,
    "KIND_BOOL": KIND_BOOL, "KIND_STRING": KIND_STRING, "KIND_LARGE_STRING": KIND_LARGE_STRING,
    "KIND_DATE": KIND_DATE, "KIND_TIMESTAMP": KIND_TIMESTAMP, "KIND_DECIMAL": KIND_DECIMAL,
    "ERR_NUL": ERR_NUL, "ERR_UTF8": ERR_UTF8, "ERR_FLOAT": ERR_FLOAT, "ERR_YEAR": ERR_YEAR,
    "ERR_PRECISION": ERR_PRECISION, "ERR_RANGE": ERR_RANGE,
}


# ---------------------------------------------------------------------------------------------
# Reading Arrow memory through the C data interface


cdef inline bint _valid(const Col* col, int64_t row) noexcept nogil:
    cdef int64_t j
    if col.validity == NULL:
        return True
    j = col.offset + row
    return (col.validity[j >> 3] >> (j & 7)) & 1


cdef inline int64_t _text_start(const Col* col, int64_t row) noexcept nogil:
    if col.kind == KIND_STRING:
        return (<const int32_t*>col.data)[col.offset + row]
    return (<const int64_t*>col.data)[col.offset + row]


cdef inline int64_t _text_end(const Col* col, int64_t row) noexcept nogil:
    if col.kind == KIND_STRING:
        return (<const int32_t*>col.data)[col.offset + row + 1]
    return (<const int64_t*>col.data)[col.offset + row + 1]


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
    """JSON key prefixes ('{"a":' then ',"b":'), each in a slot padded so that 32-byte block
    copies never read past it."""
    slots = []
    for i, spec in enumerate(plan):
        prefix = (b"{" if i == 0 else b",") + spec.json_key
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
        plan = _types.column_plan(batch.schema)  # TypeError naming an unsupported column
        entry = (plan, _key_slots(plan))
        if len(_plans) >= PLAN_ENTRIES:
            _plans.clear()
        _plans[fp] = entry
    c.plan, c.keys = entry
    c.ncols = len(c.plan)
    if c.c_array.n_children != c.ncols or c.c_schema.n_children != c.ncols:
        raise ValueError("exported Arrow array does not match the batch schema")
    if c.c_array.length != c.nrows:
        raise ValueError("exported Arrow array length does not match the batch")
    c.cols = <Col*>calloc(c.ncols if c.ncols else 1, sizeof(Col))
    if c.cols == NULL:
        raise MemoryError()
    base = PyBytes_AS_STRING(c.keys)
    at = 0
    for i, spec in enumerate(c.plan):
        col = &c.cols[i]
        child = c.c_array.children[i]
        if not _format_matches(spec.kind, c.c_schema.children[i].format):
            raise TypeError(
                f"column {spec.name!r}: exported Arrow format "
                f"{c.c_schema.children[i].format.decode()!r} does not match {spec.arrow_type}"
            )
        col.kind = spec.kind
        col.scale = spec.scale
        col.precision = spec.precision
        col.tz = spec.tz
        col.offset = child.offset + c.c_array.offset
        need = 3 if spec.kind == KIND_STRING or spec.kind == KIND_LARGE_STRING else 2
        if child.n_buffers != need:
            raise ValueError(
                f"column {spec.name!r}: {child.n_buffers} Arrow buffers, expected {need}"
            )
        if child.length < c.c_array.offset + c.nrows:
            raise ValueError(f"column {spec.name!r}: Arrow child shorter than the batch")
        col.validity = NULL
        if child.null_count != 0:
            col.validity = <const uint8_t*>child.buffers[0]
        col.data = <const uint8_t*>child.buffers[1]
        if need == 3:
            col.chars = <const uint8_t*>child.buffers[2]
        if c.nrows and (col.data == NULL or (need == 3 and col.chars == NULL and
                                             _text_end(col, c.nrows - 1) > _text_start(col, 0))):
            raise ValueError(f"column {spec.name!r}: Arrow producer gave a NULL data buffer")
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
    raise _types.value_error(spec, f.row, f.code, value)


# ---------------------------------------------------------------------------------------------
# Validation passes (column by column, like the twin) and exact text sizes


cdef bint _utf8_valid(const uint8_t* s, int64_t n) noexcept nogil:
    """Strict UTF-8 as Python decodes it: no overlongs, surrogates or code points > U+10FFFF."""
    cdef int64_t i = 0
    cdef uint8_t c, lo, hi
    cdef int need, k
    while i < n:
        if i + 8 <= n and (ms_load64(s + i) & 0x8080808080808080ULL) == 0:
            i += 8
            continue
        c = s[i]
        if c < 0x80:
            i += 1
            continue
        lo = 0x80
        hi = 0xBF
        if c < 0xC2:
            return False
        elif c < 0xE0:
            need = 1
        elif c < 0xF0:
            need = 2
            if c == 0xE0:
                lo = 0xA0
            elif c == 0xED:
                hi = 0x9F
        elif c < 0xF5:
            need = 3
            if c == 0xF0:
                lo = 0x90
            elif c == 0xF4:
                hi = 0x8F
        else:
            return False
        if i + need >= n:
            return False
        if s[i + 1] < lo or s[i + 1] > hi:
            return False
        for k in range(2, need + 1):
            if s[i + k] < 0x80 or s[i + k] > 0xBF:
                return False
        i += need + 1
    return True


cdef int64_t _check_text(const Col* col, int64_t nrows, Py_ssize_t ci, bint json,
                         Failure* f) noexcept nogil:
    """Validate a text column; return its payload bytes (JSON: escaped, with quotes), -1 on error."""
    cdef int64_t r, a, b, k, total = 0
    cdef const uint8_t* s
    for r in range(nrows):
        if not _valid(col, r):
            continue
        a = _text_start(col, r)
        b = _text_end(col, r)
        s = col.chars + a
        if b < a or not _utf8_valid(s, b - a):
            f.code = ERR_UTF8
            f.col = ci
            f.row = r
            return -1
        if json:
            total += 2
            for k in range(b - a):
                total += ESC_LEN[s[k]]
        else:
            if memchr(s, 0, b - a) != NULL:
                f.code = ERR_NUL
                f.col = ci
                f.row = r
                return -1
            total += b - a
    return total


cdef bint _check_copy_values(const Col* col, int64_t nrows, Py_ssize_t ci,
                             Failure* f) noexcept nogil:
    cdef int64_t r, j
    cdef int neg
    cdef int64_t v
    for r in range(nrows):
        if not _valid(col, r):
            continue
        j = col.offset + r
        if col.kind == KIND_DECIMAL:
            if ms_u128_ge(ms_dec_abs(col.data + 16 * j, &neg), col.limit):
                f.code = ERR_PRECISION
                f.col = ci
                f.row = r
                return False
        elif col.kind == KIND_DATE:
            v = (<const int32_t*>col.data)[j] - PG_EPOCH_DAYS
            if v < PG_MIN_DATE or v >= PG_END_DATE:
                f.code = ERR_RANGE
                f.col = ci
                f.row = r
                return False
        elif col.kind == KIND_TIMESTAMP:
            # The upper bound cannot be exceeded by an int64 shifted down by the epoch.
            if (<const int64_t*>col.data)[j] < PG_MIN_TIMESTAMP + PG_EPOCH_US:
                f.code = ERR_RANGE
                f.col = ci
                f.row = r
                return False
    return True


cdef bint _check_json_values(const Col* col, int64_t nrows, Py_ssize_t ci,
                             Failure* f) noexcept nogil:
    cdef int64_t r, j, v
    cdef double x
    for r in range(nrows):
        if not _valid(col, r):
            continue
        j = col.offset + r
        if col.kind == KIND_FLOAT32 or col.kind == KIND_FLOAT64:
            x = (<const float*>col.data)[j] if col.kind == KIND_FLOAT32 else (<const double*>col.data)[j]
            if not isfinite(x):
                f.code = ERR_FLOAT
                f.col = ci
                f.row = r
                return False
        elif col.kind == KIND_DATE:
            v = (<const int32_t*>col.data)[j]
            if v < JSON_MIN_DAYS or v > JSON_MAX_DAYS:
                f.code = ERR_YEAR
                f.col = ci
                f.row = r
                return False
        elif col.kind == KIND_TIMESTAMP:
            v = (<const int64_t*>col.data)[j]
            if v < JSON_MIN_US or v > JSON_MAX_US:
                f.code = ERR_YEAR
                f.col = ci
                f.row = r
                return False
    return True


# ---------------------------------------------------------------------------------------------
# Output buffer: one bytes object, allocated at its upper bound, shrunk at the end


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
    PREFETCH_ROWS = 16  # rows ahead each decimal column asks the cache for (4 lines of 64 bytes)
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


# ---------------------------------------------------------------------------------------------
# Binary COPY


cdef inline uint8_t* _put_numeric(uint8_t* p, const uint8_t* src, int scale) noexcept nogil:
    """Length + PostgreSQL binary numeric of one decimal128 (point on a base-10000 boundary)."""
    cdef int neg, n = 0, start = 0, r = scale & 3, weight, k
    cdef ms_u128 m = ms_dec_abs(src, &neg)
    cdef uint64_t m64
    cdef uint16_t groups[12]  # least significant first; |value| < 2**127 needs at most 11
    if ms_u128_is0(m):
        ms_put32(p, 8)
        ms_put32(p + 4, 0)  # ndigits 0, weight 0
        ms_put16(p + 8, 0)
        ms_put16(p + 10, <uint16_t>scale)
        return p + 12
    if r:
        groups[0] = <uint16_t>(ms_u128_divmod(&m, POW10[r]) * POW10[4 - r])
        n = 1
    while not ms_u128_fits64(m):
        groups[n] = <uint16_t>ms_u128_divmod(&m, 10000)
        n += 1
    m64 = ms_u128_lo(m)
    while m64:
        groups[n] = <uint16_t>(m64 % 10000)
        m64 //= 10000
        n += 1
    weight = n - 1 - (scale + 3) // 4
    while groups[start] == 0:
        start += 1
    ms_put32(p, <uint32_t>(8 + 2 * (n - start)))
    ms_put16(p + 4, <uint16_t>(n - start))
    ms_put16(p + 6, <uint16_t><int16_t>weight)
    ms_put16(p + 8, 0x4000 if neg else 0)
    ms_put16(p + 10, <uint16_t>scale)
    p += 12
    for k in range(n - 1, start - 1, -1):
        ms_put16(p, groups[k])
        p += 2
    return p


cdef Py_ssize_t _copy_rows(const Col* cols, Py_ssize_t ncols, int64_t nrows,
                           uint8_t* out) noexcept nogil:
    cdef uint8_t* p = out
    cdef const Col* col
    cdef int64_t r, j, a, b
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
            if col.kind == KIND_DECIMAL:
                ms_prefetch(col.data + 16 * (j + PREFETCH_ROWS))
                p = _put_numeric(p, col.data + 16 * j, col.scale)
            elif col.kind == KIND_INT64:
                ms_put32(p, 8)
                ms_put64(p + 4, (<const uint64_t*>col.data)[j])
                p += 12
            elif col.kind == KIND_TIMESTAMP:
                ms_put32(p, 8)
                ms_put64(p + 4, <uint64_t>((<const int64_t*>col.data)[j] - PG_EPOCH_US))
                p += 12
            elif col.kind == KIND_UUID:
                ms_put32(p, 16)
                memcpy(p + 4, col.data + 16 * j, 16)
                p += 20
            elif col.kind == KIND_INT32:
                ms_put32(p, 4)
                ms_put32(p + 4, (<const uint32_t*>col.data)[j])
                p += 8
            elif col.kind == KIND_DATE:
                ms_put32(p, 4)
                ms_put32(p + 4, <uint32_t>((<const int32_t*>col.data)[j] - PG_EPOCH_DAYS))
                p += 8
            elif col.kind == KIND_INT16:
                ms_put32(p, 2)
                ms_put16(p + 4, (<const uint16_t*>col.data)[j])
                p += 6
            elif col.kind == KIND_FLOAT32:
                ms_put32(p, 4)
                ms_put32(p + 4, (<const uint32_t*>col.data)[j])
                p += 8
            elif col.kind == KIND_FLOAT64:
                ms_put32(p, 8)
                ms_put64(p + 4, (<const uint64_t*>col.data)[j])
                p += 12
            elif col.kind == KIND_BOOL:
                ms_put32(p, 1)
                p[4] = (col.data[j >> 3] >> (j & 7)) & 1
                p += 5
            else:  # text
                a = _text_start(col, r)
                b = _text_end(col, r)
                ms_put32(p, <uint32_t>(b - a))
                memcpy(p + 4, col.chars + a, b - a)
                p += 4 + (b - a)
    ms_put16(p, 0xFFFF)
    p += 2
    return p - out


def copy_binary(batch):
    """Complete PostgreSQL binary COPY stream (header, one tuple per row, trailer)."""
    cdef _Columns c = _open(batch)
    cdef Failure f
    cdef Py_ssize_t i, used
    cdef int64_t text, size, per_row = 2
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
                if col.kind == KIND_STRING or col.kind == KIND_LARGE_STRING:
                    text = _check_text(col, c.nrows, i, False, &f)
                    size += text
                    per_row += 4
                elif col.kind in (KIND_DECIMAL, KIND_DATE, KIND_TIMESTAMP):
                    _check_copy_values(col, c.nrows, i, &f)
            if f.code:
                _raise_failure(c, &f)
            if col.kind == KIND_DECIMAL:
                per_row += 12 + 2 * col.max_groups
            elif col.kind == KIND_UUID:
                per_row += 20
            elif col.kind in (KIND_INT64, KIND_FLOAT64, KIND_TIMESTAMP):
                per_row += 12
            elif col.kind in (KIND_INT32, KIND_FLOAT32, KIND_DATE):
                per_row += 8
            elif col.kind == KIND_INT16:
                per_row += 6
            elif col.kind == KIND_BOOL:
                per_row += 5
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


# ---------------------------------------------------------------------------------------------
# Canonical JSON


# The JSON writers copy fixed 32-byte blocks (two vector moves) instead of calling memcpy with a
# small variable length: the output has SLACK spare bytes at its end, and each write is followed
# by the next one, so the bytes written past a value are either overwritten or in the slack.
cdef enum:
    SLACK = 64
    KEY_SLOT = 64  # JSON keys up to this length live in fixed slots (copied in 32-byte blocks)


cdef inline void _copy32(uint8_t* dst, const uint8_t* src) noexcept nogil:
    memcpy(dst, src, 32)


cdef inline uint8_t* _digits_back(uint8_t* end, uint64_t v) noexcept nogil:
    """Write v's digits so that they end at ``end``; return where they start."""
    cdef uint64_t idx
    while v >= 100:
        idx = (v % 100) * 2
        v //= 100
        end -= 2
        end[0] = DIGITS2[idx]
        end[1] = DIGITS2[idx + 1]
    if v >= 10:
        end -= 2
        end[0] = DIGITS2[2 * v]
        end[1] = DIGITS2[2 * v + 1]
    else:
        end -= 1
        end[0] = <uint8_t>(48 + v)
    return end


cdef inline uint8_t* _put_i64(uint8_t* p, int64_t v) noexcept nogil:
    if v < 0:
        p[0] = 45  # '-'
        return ms_put_u64(p + 1, <uint64_t>0 - <uint64_t>v)
    return ms_put_u64(p, <uint64_t>v)


cdef inline uint8_t* _put2(uint8_t* p, int v) noexcept nogil:
    p[0] = DIGITS2[2 * v]
    p[1] = DIGITS2[2 * v + 1]
    return p + 2


cdef inline uint8_t* _put_decimal_text(uint8_t* p, const uint8_t* src, int scale) noexcept nogil:
    """JSON number with exactly ``scale`` fraction digits (e.g. -0.0001, 12.5000, 7)."""
    cdef int neg, nd, whole
    cdef ms_u128 m = ms_dec_abs(src, &neg)
    cdef uint32_t chunk
    cdef uint8_t buf[128]
    cdef uint8_t* end = buf + 48   # digits end here; 32-byte block reads stay inside buf
    cdef uint8_t* q = end
    if ms_u128_fits64(m) and scale <= 19:  # the common case: written in place
        return ms_put_decimal64(p, ms_u128_lo(m), neg, scale)
    while not ms_u128_fits64(m):
        chunk = ms_u128_divmod(&m, 10000)
        q -= 4
        q[0] = DIGITS2[2 * (chunk // 100)]
        q[1] = DIGITS2[2 * (chunk // 100) + 1]
        q[2] = DIGITS2[2 * (chunk % 100)]
        q[3] = DIGITS2[2 * (chunk % 100) + 1]
    q = _digits_back(q, ms_u128_lo(m))
    nd = end - q
    while nd <= scale:  # "0.000ddd": pad to one integer digit plus the scale
        q -= 1
        q[0] = 48
        nd += 1
    if neg:
        p[0] = 45
        p += 1
    whole = nd - scale
    if whole <= 32:
        _copy32(p, q)
    else:
        memcpy(p, q, whole)
    p += whole
    if scale == 0:
        return p
    p[0] = 46  # '.'
    p += 1
    if scale <= 32:
        _copy32(p, end - scale)
    else:
        memcpy(p, end - scale, scale)
    return p + scale


cdef inline void _civil(int64_t days, int* year, int* month, int* day) noexcept nogil:
    """Proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's algorithm)."""
    cdef int64_t z = days + 719468
    cdef int64_t era = (z if z >= 0 else z - 146096) // 146097
    cdef int64_t doe = z - era * 146097
    cdef int64_t yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    cdef int64_t doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    cdef int64_t mp = (5 * doy + 2) // 153
    day[0] = <int>(doy - (153 * mp + 2) // 5 + 1)
    month[0] = <int>(mp + 3 if mp < 10 else mp - 9)
    year[0] = <int>(yoe + era * 400 + (1 if month[0] <= 2 else 0))


cdef inline uint8_t* _put_date(uint8_t* p, int64_t days) noexcept nogil:
    cdef int y, m, d
    _civil(days, &y, &m, &d)
    p = _put2(p, y // 100)
    p = _put2(p, y % 100)
    p[0] = 45
    p = _put2(p + 1, m)
    p[0] = 45
    return _put2(p + 1, d)


cdef inline uint8_t* _put_timestamp(uint8_t* p, int64_t us, bint tz) noexcept nogil:
    cdef int64_t days = us // US_PER_DAY
    cdef int64_t rem = us % US_PER_DAY
    cdef int64_t secs, frac
    if rem < 0:
        rem += US_PER_DAY
        days -= 1
    secs = rem // 1000000
    frac = rem % 1000000
    p[0] = 34
    p = _put_date(p + 1, days)
    p[0] = 84  # 'T'
    p = _put2(p + 1, <int>(secs // 3600))
    p[0] = 58  # ':'
    p = _put2(p + 1, <int>((secs // 60) % 60))
    p[0] = 58
    p = _put2(p + 1, <int>(secs % 60))
    p[0] = 46
    p = _put2(p + 1, <int>(frac // 10000))
    p = _put2(p, <int>((frac // 100) % 100))
    p = _put2(p, <int>(frac % 100))
    if tz:
        p[0] = 90  # 'Z'
        p += 1
    p[0] = 34
    return p + 1


cdef inline uint8_t* _put_uuid(uint8_t* p, const uint8_t* u) noexcept nogil:
    cdef int k
    p[0] = 34
    p += 1
    for k in range(16):
        if k == 4 or k == 6 or k == 8 or k == 10:
            p[0] = 45
            p += 1
        p[0] = HEX2[2 * u[k]]
        p[1] = HEX2[2 * u[k] + 1]
        p += 2
    p[0] = 34
    return p + 1


cdef inline uint8_t* _put_json_text(uint8_t* p, const uint8_t* s, int64_t n) noexcept nogil:
    cdef int64_t k, run = 0
    cdef uint8_t ch
    p[0] = 34
    p += 1
    for k in range(n):
        ch = s[k]
        if ESC_LEN[ch] == 1:
            continue
        memcpy(p, s + run, k - run)
        p += k - run
        run = k + 1
        p[0] = 92  # '\\'
        if ch == 34 or ch == 92:
            p[1] = ch
            p += 2
        elif ch == 8:
            p[1] = 98
            p += 2
        elif ch == 9:
            p[1] = 116
            p += 2
        elif ch == 10:
            p[1] = 110
            p += 2
        elif ch == 12:
            p[1] = 102
            p += 2
        elif ch == 13:
            p[1] = 114
            p += 2
        else:
            p[1] = 117  # u00xx
            p[2] = 48
            p[3] = 48
            p[4] = HEX2[2 * ch]
            p[5] = HEX2[2 * ch + 1]
            p += 6
    memcpy(p, s + run, n - run)
    p += n - run
    p[0] = 34
    return p + 1


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


cdef Py_ssize_t _json_rows(const Col* cols, Py_ssize_t ncols, int64_t nrows,
                           uint8_t* out) noexcept nogil:
    cdef uint8_t* p = out
    cdef const Col* col
    cdef int64_t r, j, a, b
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
            if col.kind == KIND_DECIMAL:
                ms_prefetch(col.data + 16 * (j + PREFETCH_ROWS))
                p = _put_decimal_text(p, col.data + 16 * j, col.scale)
            elif col.kind == KIND_INT64:
                p = _put_i64(p, (<const int64_t*>col.data)[j])
            elif col.kind == KIND_TIMESTAMP:
                p = _put_timestamp(p, (<const int64_t*>col.data)[j], col.tz)
            elif col.kind == KIND_UUID:
                p = _put_uuid(p, col.data + 16 * j)
            elif col.kind == KIND_INT32:
                p = _put_i64(p, (<const int32_t*>col.data)[j])
            elif col.kind == KIND_INT16:
                p = _put_i64(p, (<const int16_t*>col.data)[j])
            elif col.kind == KIND_DATE:
                p[0] = 34
                p = _put_date(p + 1, (<const int32_t*>col.data)[j])
                p[0] = 34
                p += 1
            elif col.kind == KIND_BOOL:
                if (col.data[j >> 3] >> (j & 7)) & 1:
                    memcpy(p, b"true", 4)
                    p += 4
                else:
                    memcpy(p, b"false", 5)
                    p += 5
            elif col.kind == KIND_FLOAT64:
                p = _put_float(p, (<const double*>col.data)[j])
                if p == NULL:
                    return -1
            elif col.kind == KIND_FLOAT32:
                p = _put_float(p, (<const float*>col.data)[j])
                if p == NULL:
                    return -1
            else:  # text
                a = _text_start(col, r)
                b = _text_end(col, r)
                p = _put_json_text(p, col.chars + a, b - a)
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
    cdef int64_t text, size, per_row = 3
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
                if col.kind == KIND_STRING or col.kind == KIND_LARGE_STRING:
                    text = _check_text(col, c.nrows, i, True, &f)
                    size += text
                elif col.kind in (KIND_FLOAT32, KIND_FLOAT64, KIND_DATE, KIND_TIMESTAMP):
                    _check_json_values(col, c.nrows, i, &f)
            if f.code:
                _raise_failure(c, &f)
            per_row += col.key_len + 1
            if col.kind == KIND_DECIMAL:
                per_row += 2 + max(39, col.scale + 1)
            elif col.kind == KIND_UUID:
                per_row += 38
            elif col.kind in (KIND_INT64, KIND_INT32, KIND_INT16):
                per_row += 20
            elif col.kind in (KIND_FLOAT64, KIND_FLOAT32):
                per_row += 32
            elif col.kind == KIND_TIMESTAMP:
                per_row += 29
            elif col.kind == KIND_DATE:
                per_row += 12
            elif col.kind == KIND_BOOL:
                per_row += 5
            else:
                per_row += 4  # text: null, or its exact size counted above
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


# ---------------------------------------------------------------------------------------------
# Decoding binary COPY output


cdef enum:
    D_TRUNCATED = 1
    D_SIGNATURE
    D_OIDS
    D_FLAGS
    D_EXTENSION
    D_FIELD_COUNT
    D_NEGATIVE_LENGTH
    D_WIDTH
    D_NUMERIC_SHAPE
    D_NUMERIC_SPECIAL
    D_NUMERIC_DIGIT
    D_NUMERIC_FIT
    D_NUMERIC_FRACTION
    D_DATE
    D_TIMESTAMP
    D_TRAILING
    D_TEXT_SIZE
    D_TEXT_UTF8


cdef struct DCol:
    int kind
    int scale
    int width             # exact field length of fixed-width kinds, 0 for text/numeric
    ms_u128 limit         # 10**precision
    int64_t text_bytes    # pass 1: total text bytes
    int64_t nulls
    uint8_t* validity
    uint8_t* data         # values, or offsets for text
    uint8_t* chars


cdef struct DFail:
    int code
    int64_t pos
    Py_ssize_t col
    int64_t value


cdef inline bint _dfail(DFail* f, int code, int64_t pos, Py_ssize_t col, int64_t value) noexcept nogil:
    f.code = code
    f.pos = pos
    f.col = col
    f.value = value
    return False


cdef int64_t _scan(const uint8_t* d, int64_t size, DCol* cols, Py_ssize_t ncols,
                   int64_t* body, DFail* f) noexcept nogil:
    """Pass 1: check the structure, count rows and text bytes; -1 on error."""
    cdef int64_t pos = 11, rows = 0, length
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


cdef inline bint _numeric_value(const uint8_t* p, int64_t length, const DCol* col,
                                uint8_t* dst, int64_t pos, Py_ssize_t ci,
                                DFail* f) noexcept nogil:
    """Binary numeric -> decimal128 at the column's scale; False (and ``f``) if it won't fit."""
    cdef int ndigits = <int16_t>ms_get16(p)
    cdef int weight = <int16_t>ms_get16(p + 2)
    cdef uint16_t sign = ms_get16(p + 4)
    cdef int k, n, exp10, last_exp
    cdef uint32_t digit
    cdef ms_u128 acc = ms_u128_from64(0)
    if sign != 0 and sign != 0x4000:
        return _dfail(f, D_NUMERIC_SPECIAL, pos, ci, sign)
    n = ndigits
    while n > 0 and ms_get16(p + 8 + 2 * (n - 1)) == 0:  # trailing zero groups say nothing
        n -= 1
    for k in range(ndigits):
        if ms_get16(p + 8 + 2 * k) >= 10000:
            return _dfail(f, D_NUMERIC_DIGIT, pos, ci, 0)
    # Digit k is worth 10**exp10 units of the column's scale. Accumulate whole groups, a group
    # straddling the scale by its leading part only, and refuse any digit below the scale.
    last_exp = 0
    for k in range(n):
        digit = ms_get16(p + 8 + 2 * k)
        exp10 = 4 * (weight - k) + col.scale
        if exp10 >= 0:
            if not ms_u128_muladd(&acc, 10000, digit):
                return _dfail(f, D_NUMERIC_FIT, pos, ci, 0)
            last_exp = exp10
        elif exp10 > -4:
            if digit % POW10[-exp10]:
                return _dfail(f, D_NUMERIC_FRACTION, pos, ci, 0)
            if not ms_u128_muladd(&acc, POW10[4 + exp10], digit // POW10[-exp10]):
                return _dfail(f, D_NUMERIC_FIT, pos, ci, 0)
            last_exp = 0
        elif digit:
            return _dfail(f, D_NUMERIC_FRACTION, pos, ci, 0)
    if not ms_u128_is0(acc):
        if last_exp > 40:
            return _dfail(f, D_NUMERIC_FIT, pos, ci, 0)
        for k in range(last_exp):
            if not ms_u128_muladd(&acc, 10, 0):
                return _dfail(f, D_NUMERIC_FIT, pos, ci, 0)
        if ms_u128_ge(acc, col.limit):
            return _dfail(f, D_NUMERIC_FIT, pos, ci, 0)
    ms_dec_store(dst, acc, sign == 0x4000)
    return True


cdef bint _fill(const uint8_t* d, int64_t pos, DCol* cols, Py_ssize_t ncols, int64_t nrows,
                DFail* f) noexcept nogil:
    """Pass 2: decode every field into the pre-sized Arrow buffers."""
    cdef int64_t r, length, v
    cdef int32_t v32
    cdef Py_ssize_t c
    cdef DCol* col
    cdef const uint8_t* p
    cdef int64_t* text_at = NULL
    for r in range(nrows):
        pos += 2
        for c in range(ncols):
            col = &cols[c]
            length = <int32_t>ms_get32(d + pos)
            pos += 4
            p = d + pos
            if length == -1:
                col.nulls += 1
                if col.kind == KIND_STRING:
                    (<int32_t*>col.data)[r + 1] = (<int32_t*>col.data)[r]
                elif col.kind == KIND_LARGE_STRING:
                    (<int64_t*>col.data)[r + 1] = (<int64_t*>col.data)[r]
                elif col.kind == KIND_DECIMAL:
                    memset(col.data + 16 * r, 0, 16)
                elif col.kind != KIND_BOOL:
                    memset(col.data + col.width * r, 0, col.width)
                continue
            col.validity[r >> 3] |= 1 << (r & 7)
            pos += length
            if col.kind == KIND_DECIMAL:
                if not _numeric_value(p, length, col, col.data + 16 * r, pos - length, c, f):
                    return False
            elif col.kind == KIND_INT64 or col.kind == KIND_FLOAT64:
                ms_store64(col.data + 8 * r, ms_get64(p))
            elif col.kind == KIND_TIMESTAMP:
                v = <int64_t>ms_get64(p)
                if v == INT64_MIN_ or v == INT64_MAX_ or v > INT64_MAX_ - PG_EPOCH_US:
                    return _dfail(f, D_TIMESTAMP, pos - length, c, v)
                (<int64_t*>col.data)[r] = v + PG_EPOCH_US
            elif col.kind == KIND_UUID:
                memcpy(col.data + 16 * r, p, 16)
            elif col.kind == KIND_INT32 or col.kind == KIND_FLOAT32:
                (<uint32_t*>col.data)[r] = ms_get32(p)
            elif col.kind == KIND_DATE:
                v32 = <int32_t>ms_get32(p)
                if v32 == INT32_MIN_ or v32 == INT32_MAX_ or v32 > INT32_MAX_ - PG_EPOCH_DAYS:
                    return _dfail(f, D_DATE, pos - length, c, v32)
                (<int32_t*>col.data)[r] = v32 + PG_EPOCH_DAYS
            elif col.kind == KIND_INT16:
                (<uint16_t*>col.data)[r] = ms_get16(p)
            elif col.kind == KIND_BOOL:
                if p[0]:
                    col.data[r >> 3] |= 1 << (r & 7)
            elif col.kind == KIND_STRING or col.kind == KIND_LARGE_STRING:
                if not _utf8_valid(p, length):
                    return _dfail(f, D_TEXT_UTF8, pos - length, c, 0)
                if col.kind == KIND_LARGE_STRING:
                    v = (<int64_t*>col.data)[r]
                    memcpy(col.chars + v, p, length)
                    (<int64_t*>col.data)[r + 1] = v + length
                    continue
                v = (<int32_t*>col.data)[r]
                memcpy(col.chars + v, p, length)
                (<int32_t*>col.data)[r + 1] = <int32_t>(v + length)
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
    return ValueError(f"invalid binary COPY data at byte {f.pos}: {what}")


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
            if spec.kind == KIND_STRING or spec.kind == KIND_LARGE_STRING:
                if spec.kind == KIND_STRING and col.text_bytes > 2147483647:
                    f.code = D_TEXT_SIZE
                    f.col = i
                    f.pos = 0
                    raise _decode_error(&f, plan)
                width = 4 if spec.kind == KIND_STRING else 8
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


# ---------------------------------------------------------------------------------------------
# uuid[] for "= ANY($n)"


def uuid_array_binary(ids):
    """PostgreSQL binary ``uuid[]``: ndim, has-null flag, element oid, dimension, lower bound 1."""
    cdef ArrowSchema* c_schema
    cdef ArrowArray* c_array
    cdef int64_t n = len(ids), k, j, done = 0
    cdef const uint8_t* validity
    cdef const uint8_t* values
    cdef uint8_t* p
    cdef _Out out
    if not _types.is_uuid(ids.type):
        raise TypeError(f"expected a fixed_size_binary(16) or uuid array, got {ids.type}")
    if n == 0:
        return b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x0b\x86"
    out = _Out(20 + 20 * n)
    p = out.ptr()
    ms_put32(p, 1)
    ms_put32(p + 4, 0)
    ms_put32(p + 8, UUID_OID)
    ms_put32(p + 12, <uint32_t>n)
    ms_put32(p + 16, 1)
    p += 20
    chunks = ids.chunks if isinstance(ids, pa.ChunkedArray) else [ids]
    for chunk in chunks:
        storage = chunk.storage if isinstance(chunk, pa.ExtensionArray) else chunk
        capsules = storage.__arrow_c_array__()
        c_schema = <ArrowSchema*>PyCapsule_GetPointer(capsules[0], b"arrow_schema")
        c_array = <ArrowArray*>PyCapsule_GetPointer(capsules[1], b"arrow_array")
        try:
            if strcmp(c_schema.format, b"w:16") != 0 or c_array.n_buffers != 2:
                raise TypeError(f"expected a fixed_size_binary(16) array, got {storage.type}")
            validity = <const uint8_t*>c_array.buffers[0] if c_array.null_count else NULL
            values = <const uint8_t*>c_array.buffers[1]
            for k in range(c_array.length):
                j = c_array.offset + k
                if validity != NULL and not ((validity[j >> 3] >> (j & 7)) & 1):
                    raise ValueError(
                        f"uuid array element {done + k} is null: ids must not be null"
                    )
                ms_put32(p, 16)
                memcpy(p + 4, values + 16 * j, 16)
                p += 20
            done += c_array.length
        finally:
            if c_array.release != NULL:
                c_array.release(c_array)
            if c_schema.release != NULL:
                c_schema.release(c_schema)
    return out.finish(p - out.ptr())

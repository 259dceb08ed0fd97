# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled twin of :mod:`metersync.codec._page_py`: a download page's JSON bytes → Arrow.

One ``nogil`` pass over the body writes every value straight into its column's Arrow layout
(decimal128 from the digits, UUID text → 16 bytes, RFC 3339 → µs UTC) while checking it; the
first problem is recorded as (code, reading, column, byte span) and turned into the error by
:func:`metersync.codec._page_py.page_error`, so both twins raise the same message. The walk
mirrors the Python twin step for step: change one, change the other (the twin test compares
them on generated and mutated pages).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp, memcpy, memset

from metersync.codec._batch cimport (
    KIND_BOOL,
    KIND_DATE,
    KIND_DECIMAL,
    KIND_FLOAT32,
    KIND_FLOAT64,
    KIND_INT16,
    KIND_INT32,
    KIND_INT64,
    KIND_LARGE_STRING,
    KIND_NUMERIC,
    KIND_STRING,
    KIND_TIMESTAMP,
    KIND_UUID,
    ms_dec_store,
    ms_load64,
    ms_u128,
    ms_u128_from64,
)

import json

import pyarrow as pa

from metersync.codec import _page_py as T
from metersync.codec import _types

__all__ = ["parse_page"]


cdef extern from *:
    """
    /* ms_u128, ms_dec_store: _batch.pxd's, whose C this module gets through its cimport. */
    static inline ms_u128 pg_u128_muladd(ms_u128 acc, unsigned m, unsigned a) {
        return acc * m + a;
    }
    /* Fast decimal: the token's digits as one integer ``mant`` (at most 18 digits), ``frac``
       of them after the point, no exponent; scale <= 18 and precision <= 38. Stores the
       decimal128 and returns 0, or returns err_scale / err_range. */
    static const uint64_t pg_pow10[19] = {
        1ULL, 10ULL, 100ULL, 1000ULL, 10000ULL, 100000ULL, 1000000ULL, 10000000ULL,
        100000000ULL, 1000000000ULL, 10000000000ULL, 100000000000ULL, 1000000000000ULL,
        10000000000000ULL, 100000000000000ULL, 1000000000000000ULL, 10000000000000000ULL,
        100000000000000000ULL, 1000000000000000000ULL};
    static inline int pg_dec_fast(uint64_t mant, int frac, int scale, int precision, int neg,
                                  unsigned char *dst, int err_scale, int err_range) {
        ms_u128 v, limit;
        if (frac > scale) {
            uint64_t d = pg_pow10[frac - scale];
            if (mant % d) return err_scale;
            v = mant / d;
        } else {
            v = (ms_u128)mant * pg_pow10[scale - frac];
        }
        /* 10^precision from the table (a multiply loop here was most of a page's parse). */
        if (precision <= 18) limit = pg_pow10[precision];
        else if (precision <= 36) limit = (ms_u128)pg_pow10[18] * pg_pow10[precision - 18];
        else limit = (ms_u128)pg_pow10[18] * pg_pow10[18] * pg_pow10[precision - 36];
        if (v >= limit) return err_range;
        ms_dec_store(dst, v, neg);
        return 0;
    }
    """
    ms_u128 pg_u128_muladd(ms_u128 acc, unsigned m, unsigned a) noexcept nogil
    int pg_dec_fast(uint64_t mant, int frac, int scale, int precision, int neg, uint8_t* dst,
                    int err_scale, int err_range) noexcept nogil


# Codes (metersync.codec._page_py), as C constants; the kinds are _batch.pxd's.
cdef enum:
    SX_END = 1
    SX_CHAR = 2
    SX_STRING = 3
    SX_NUMBER = 4
    SX_DEPTH = 5
    P_READINGS_TYPE = 10
    P_NO_READINGS = 11
    P_CURSOR = 12
    P_NO_CURSOR = 13
    P_DUP_TOP = 14
    P_TOO_MANY = 15
    P_NOT_OBJECT = 16
    R_UNKNOWN = 20
    R_MISSING = 21
    R_TENANT = 22
    R_TWICE = 23
    R_NULL = 24
    R_DUP_ID = 25
    V_TYPE = 30
    V_UUID = 31
    V_TS = 32
    V_TS_NOZONE = 33
    V_TS_ZONE = 34
    V_DATE = 35
    V_INT_RANGE = 36
    V_DEC_SCALE = 37
    V_DEC_RANGE = 38
    V_FLOAT_RANGE = 39
    V_NUL = 40
    V_NUMERIC = 41
    EXP_VALUE = 1
    EXP_KEY = 2
    EXP_COLON = 3
    EXP_OBJ_NEXT = 4
    EXP_ARR_NEXT = 5
    EXP_OBJECT = 6
    EXP_EOF = 7
    TENANT_COL = -2
    MAX_DEPTH = 64

cdef int64_t EXP_CLAMP = 1000000000

#: The C constants, so a test can hold them to metersync.codec._page_py and _types.
CODES = {
    "KIND_UUID": KIND_UUID, "KIND_INT16": KIND_INT16, "KIND_INT32": KIND_INT32,
    "KIND_INT64": KIND_INT64, "KIND_FLOAT32": KIND_FLOAT32, "KIND_FLOAT64": KIND_FLOAT64,
    "KIND_BOOL": KIND_BOOL, "KIND_STRING": KIND_STRING, "KIND_LARGE_STRING": KIND_LARGE_STRING,
    "KIND_DATE": KIND_DATE, "KIND_TIMESTAMP": KIND_TIMESTAMP, "KIND_DECIMAL": KIND_DECIMAL,
    "KIND_NUMERIC": KIND_NUMERIC, "V_NUMERIC": V_NUMERIC,
    "SX_END": SX_END, "SX_CHAR": SX_CHAR, "SX_STRING": SX_STRING, "SX_NUMBER": SX_NUMBER,
    "SX_DEPTH": SX_DEPTH, "P_READINGS_TYPE": P_READINGS_TYPE, "P_NO_READINGS": P_NO_READINGS,
    "P_CURSOR": P_CURSOR, "P_NO_CURSOR": P_NO_CURSOR, "P_DUP_TOP": P_DUP_TOP,
    "P_TOO_MANY": P_TOO_MANY, "P_NOT_OBJECT": P_NOT_OBJECT, "R_UNKNOWN": R_UNKNOWN,
    "R_MISSING": R_MISSING, "R_TENANT": R_TENANT, "R_TWICE": R_TWICE, "R_NULL": R_NULL,
    "R_DUP_ID": R_DUP_ID, "V_TYPE": V_TYPE, "V_UUID": V_UUID, "V_TS": V_TS,
    "V_TS_NOZONE": V_TS_NOZONE, "V_TS_ZONE": V_TS_ZONE, "V_DATE": V_DATE,
    "V_INT_RANGE": V_INT_RANGE, "V_DEC_SCALE": V_DEC_SCALE, "V_DEC_RANGE": V_DEC_RANGE,
    "V_FLOAT_RANGE": V_FLOAT_RANGE, "V_NUL": V_NUL, "EXP_VALUE": EXP_VALUE, "EXP_KEY": EXP_KEY,
    "EXP_COLON": EXP_COLON, "EXP_OBJ_NEXT": EXP_OBJ_NEXT, "EXP_ARR_NEXT": EXP_ARR_NEXT,
    "EXP_OBJECT": EXP_OBJECT, "EXP_EOF": EXP_EOF, "TENANT_COL": TENANT_COL,
    "MAX_DEPTH": MAX_DEPTH,
}

# Plain numeric literals: the parser the codec uses too (so both accept the same texts).
include "codecs/numeric_text.pxi"

cdef int DAYS_IN_MONTH[13]
DAYS_IN_MONTH[:] = [0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
cdef signed char HEX[256]
for _i in range(256):
    HEX[_i] = -1
for _i in range(10):
    HEX[48 + _i] = _i
for _i in range(6):
    HEX[65 + _i] = 10 + _i
    HEX[97 + _i] = 10 + _i


cdef struct PCol:
    int kind
    int scale
    int precision
    int width
    bint tz
    bint required
    uint8_t* data        # values (cap rows); int64 offsets (cap + 1) for strings
    uint8_t* valid       # validity bitmap
    uint8_t* chars       # string bytes
    int64_t nchars
    int64_t nulls
    int64_t seen         # the last reading that held this field
    const uint8_t* name
    Py_ssize_t name_len
    bint plain_name      # printable ASCII without quote or backslash: matchable in place
    uint64_t max_pos     # integers: largest magnitude of a positive / negative value
    uint64_t max_neg


cdef struct Fail:
    int code
    int64_t row
    Py_ssize_t col
    int64_t start
    int64_t end
    int64_t aux


cdef struct NumTok:
    bint neg
    int64_t int_start
    int64_t int_len
    int64_t frac_start
    int64_t frac_len
    bint has_exp
    int64_t exp
    uint64_t mant        # the integer and fraction digits as one number (up to 18 digits)


cdef struct Name:
    const uint8_t* p
    Py_ssize_t n


cdef struct P:
    const uint8_t* b
    int64_t n
    int64_t pos
    PCol* cols
    Py_ssize_t ncols
    bint has_plan
    int64_t rows
    int64_t limit
    int64_t cap
    bint check_tenant
    int64_t tenant
    bint drop_all
    Name* drop
    Py_ssize_t ndrop
    Py_ssize_t id_col
    Py_ssize_t guess
    int64_t rid_row      # the reading whose id was read (−1: none)
    uint8_t* scratch     # decoded keys with escapes
    int64_t cursor_start # span of the next_cursor string token (−1: null)
    int64_t cursor_end
    Fail f


# -- tokens ----------------------------------------------------------------------------------


cdef inline void _ws(P* p) noexcept nogil:
    cdef const uint8_t* b = p.b
    cdef int64_t i = p.pos
    while i < p.n and (b[i] == 32 or b[i] == 10 or b[i] == 13 or b[i] == 9):
        i += 1
    p.pos = i


cdef inline int _peek(P* p) noexcept nogil:
    return p.b[p.pos] if p.pos < p.n else -1


cdef inline bint _fail(P* p, int code, int64_t row, Py_ssize_t col, int64_t start, int64_t end,
                       int64_t aux) noexcept nogil:
    p.f.code = code
    p.f.row = row
    p.f.col = col
    p.f.start = start
    p.f.end = end
    p.f.aux = aux
    return False


cdef inline bint _fail_char(P* p, int expected) noexcept nogil:
    if p.pos >= p.n:
        return _fail(p, SX_END, -1, -1, p.n, p.n, 0)
    return _fail(p, SX_CHAR, -1, -1, p.pos, p.pos + 1, expected)


cdef inline bint _colon(P* p) noexcept nogil:
    """After a member's key: the colon and the whitespace around it."""
    _ws(p)
    if _peek(p) != 58:
        return _fail_char(p, EXP_COLON)
    p.pos += 1
    _ws(p)
    return True


cdef inline int _next(P* p, int close, int expected) noexcept nogil:
    """After a member or element: 1 past a comma, 0 past ``close``, −1 (failed) otherwise."""
    cdef int c
    _ws(p)
    c = _peek(p)
    if c == 44:
        p.pos += 1
        _ws(p)
        return 1
    if c == close:
        p.pos += 1
        return 0
    _fail_char(p, expected)
    return -1


cdef inline bint _is_digit(int c) noexcept nogil:
    return 48 <= c <= 57


cdef inline uint8_t* _put_utf8(uint8_t* o, uint32_t cp) noexcept nogil:
    if cp < 0x80:
        o[0] = cp
        return o + 1
    if cp < 0x800:
        o[0] = 0xC0 | (cp >> 6)
        o[1] = 0x80 | (cp & 0x3F)
        return o + 2
    if cp < 0x10000:
        o[0] = 0xE0 | (cp >> 12)
        o[1] = 0x80 | ((cp >> 6) & 0x3F)
        o[2] = 0x80 | (cp & 0x3F)
        return o + 3
    o[0] = 0xF0 | (cp >> 18)
    o[1] = 0x80 | ((cp >> 12) & 0x3F)
    o[2] = 0x80 | ((cp >> 6) & 0x3F)
    o[3] = 0x80 | (cp & 0x3F)
    return o + 4


cdef inline int _hex4(const uint8_t* s) noexcept nogil:
    cdef int a = HEX[s[0]], b = HEX[s[1]], c = HEX[s[2]], d = HEX[s[3]]
    if a < 0 or b < 0 or c < 0 or d < 0:
        return -1
    return (a << 12) | (b << 8) | (c << 4) | d


cdef inline int _utf8_len(const uint8_t* s, int64_t avail) noexcept nogil:
    """Length of the valid UTF-8 sequence at s (lead byte >= 0x80), 0 if invalid."""
    cdef int c = s[0], c1, need, k
    if 0xC2 <= c <= 0xDF:
        need = 1
    elif 0xE0 <= c <= 0xEF:
        need = 2
    elif 0xF0 <= c <= 0xF4:
        need = 3
    else:
        return 0
    if avail < need + 1:
        return 0
    c1 = s[1]
    if c == 0xE0 and c1 < 0xA0:
        return 0
    if c == 0xED and c1 > 0x9F:
        return 0
    if c == 0xF0 and c1 < 0x90:
        return 0
    if c == 0xF4 and c1 > 0x8F:
        return 0
    for k in range(1, need + 1):
        if (s[k] & 0xC0) != 0x80:
            return 0
    return need + 1


cdef bint _string(P* p, uint8_t* out, int64_t* out_len, bint* escaped, bint* nul) noexcept nogil:
    """Validate the string at pos (and decode it into ``out`` unless NULL); pos moves past it."""
    cdef const uint8_t* b = p.b
    cdef int64_t start = p.pos, i = p.pos + 1, n = p.n, o = 0
    cdef int c, k, cp, lo
    escaped[0] = False
    nul[0] = False
    while True:
        # Plain ASCII run (the NUL after the bytes' end stops it too).
        while i < n:
            c = b[i]
            if c < 0x20 or c == 34 or c == 92 or c >= 0x80:
                break
            if out != NULL:
                out[o] = c
            o += 1
            i += 1
        if i >= n:
            return _fail(p, SX_STRING, -1, -1, start, start + 1, 0)
        c = b[i]
        if c == 34:
            p.pos = i + 1
            out_len[0] = o
            return True
        if c < 0x20:
            return _fail(p, SX_STRING, -1, -1, start, start + 1, 0)
        if c >= 0x80:
            k = _utf8_len(b + i, n - i)
            if k == 0:
                return _fail(p, SX_STRING, -1, -1, start, start + 1, 0)
            if out != NULL:
                memcpy(out + o, b + i, k)
            o += k
            i += k
            continue
        # A backslash escape.
        escaped[0] = True
        if i + 1 >= n:
            return _fail(p, SX_STRING, -1, -1, start, start + 1, 0)
        c = b[i + 1]
        if c == 117:  # \uXXXX
            if i + 5 >= n:
                return _fail(p, SX_STRING, -1, -1, start, start + 1, 0)
            cp = _hex4(b + i + 2)
            if cp < 0:
                return _fail(p, SX_STRING, -1, -1, start, start + 1, 0)
            i += 6
            if 0xDC00 <= cp <= 0xDFFF:
                return _fail(p, SX_STRING, -1, -1, start, start + 1, 0)
            if 0xD800 <= cp <= 0xDBFF:
                if i + 5 >= n or b[i] != 92 or b[i + 1] != 117:
                    return _fail(p, SX_STRING, -1, -1, start, start + 1, 0)
                lo = _hex4(b + i + 2)
                if lo < 0xDC00 or lo > 0xDFFF:
                    return _fail(p, SX_STRING, -1, -1, start, start + 1, 0)
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00)
                i += 6
            if cp == 0:
                nul[0] = True
            if out != NULL:
                o = _put_utf8(out + o, cp) - out
            else:
                o += 1 if cp < 0x80 else 2 if cp < 0x800 else 3 if cp < 0x10000 else 4
            continue
        if c == 34 or c == 92 or c == 47:
            cp = c
        elif c == 98:
            cp = 8
        elif c == 102:
            cp = 12
        elif c == 110:
            cp = 10
        elif c == 114:
            cp = 13
        elif c == 116:
            cp = 9
        else:
            return _fail(p, SX_STRING, -1, -1, start, start + 1, 0)
        if out != NULL:
            out[o] = cp
        o += 1
        i += 2


cdef bint _number(P* p, NumTok* t) noexcept nogil:
    cdef const uint8_t* b = p.b
    cdef int64_t start = p.pos, i = p.pos, n = p.n, j, ev
    cdef uint64_t mant
    cdef bint eneg
    t.neg = b[i] == 45
    if t.neg:
        i += 1
    if i >= n or not _is_digit(b[i]):
        return _fail(p, SX_NUMBER, -1, -1, start, start + 1, 0)
    t.int_start = i
    mant = 0
    if b[i] == 48:
        i += 1
    else:
        while i < n and _is_digit(b[i]):
            mant = mant * 10 + (b[i] - 48)
            i += 1
    t.int_len = i - t.int_start
    t.frac_start = i
    t.frac_len = 0
    if i + 1 < n and b[i] == 46 and _is_digit(b[i + 1]):
        i += 1
        t.frac_start = i
        while i < n and _is_digit(b[i]):
            mant = mant * 10 + (b[i] - 48)
            i += 1
        t.frac_len = i - t.frac_start
    t.mant = mant  # meaningful only when int_len + frac_len <= 18 (no overflow)
    t.has_exp = False
    t.exp = 0
    if i < n and (b[i] == 101 or b[i] == 69):
        j = i + 1
        eneg = False
        if j < n and (b[j] == 43 or b[j] == 45):
            eneg = b[j] == 45
            j += 1
        if j < n and _is_digit(b[j]):
            ev = 0
            while j < n and _is_digit(b[j]):
                if ev < EXP_CLAMP:
                    ev = ev * 10 + (b[j] - 48)
                j += 1
            if ev > EXP_CLAMP:
                ev = EXP_CLAMP
            t.has_exp = True
            t.exp = -ev if eneg else ev
            i = j
    p.pos = i
    return True


cdef bint _literal(P* p, const char* word, int64_t size) noexcept nogil:
    if p.pos + size <= p.n and memcmp(p.b + p.pos, word, size) == 0:
        p.pos += size
        return True
    return _fail_char(p, EXP_VALUE)


cdef bint _token(P* p, int depth) noexcept nogil:
    """Skip one value (checked for syntax)."""
    cdef int c = _peek(p)
    cdef int64_t olen
    cdef bint esc, nul
    cdef NumTok t
    if c == 34:
        return _string(p, NULL, &olen, &esc, &nul)
    if c == 45 or _is_digit(c):
        return _number(p, &t)
    if c == 116:
        return _literal(p, b"true", 4)
    if c == 102:
        return _literal(p, b"false", 5)
    if c == 110:
        return _literal(p, b"null", 4)
    if c == 123 or c == 91:
        return _skip_container(p, depth)
    return _fail_char(p, EXP_VALUE)


cdef inline bint _key(P* p, uint8_t* out, int64_t* klen, bint* esc) noexcept nogil:
    """A member's key at pos (decoded into ``out``, or only measured when NULL)."""
    cdef bint nul
    if _peek(p) != 34:
        return _fail_char(p, EXP_KEY)
    return _string(p, out, klen, esc, &nul)


cdef bint _skip_container(P* p, int depth) noexcept nogil:
    cdef int close, c, more
    cdef int64_t olen
    cdef bint esc, nul
    if depth > MAX_DEPTH:
        return _fail(p, SX_DEPTH, -1, -1, p.pos, p.pos + 1, 0)
    close = 125 if _peek(p) == 123 else 93
    p.pos += 1
    _ws(p)
    if _peek(p) == close:
        p.pos += 1
        return True
    while True:
        if close == 125:
            if not _key(p, NULL, &olen, &esc):
                return False
            if not _colon(p):
                return False
        if not _token(p, depth + 1):
            return False
        more = _next(p, close, EXP_OBJ_NEXT if close == 125 else EXP_ARR_NEXT)
        if more < 0:
            return False
        if more == 0:
            return True


# -- values ----------------------------------------------------------------------------------


cdef inline int64_t _days_from_civil(int64_t y, int64_t m, int64_t d) noexcept nogil:
    cdef int64_t era, yoe, doy, doe
    if m <= 2:
        y -= 1
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


cdef inline bint _valid_date(int y, int m, int d) noexcept nogil:
    cdef bint leap
    if y < 1 or m < 1 or m > 12 or d < 1:
        return False
    leap = y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)
    return d <= (29 if m == 2 and leap else DAYS_IN_MONTH[m])


cdef inline int _digits(const uint8_t* s, int count) noexcept nogil:
    """The value of ``count`` ASCII digits at s, −1 if any is not a digit."""
    cdef int v = 0, k
    for k in range(count):
        if not _is_digit(s[k]):
            return -1
        v = v * 10 + (s[k] - 48)
    return v


cdef int _timestamp(const uint8_t* s, int64_t n, bint tz, int64_t* out) noexcept nogil:
    """µs UTC of RFC 3339 text (0) or the error code."""
    cdef int y, mo, d, h, mi, sec = 0, oh, om, k, fd
    cdef int64_t frac = 0, i, offset = 0
    cdef bint zone = False
    if n < 16 or s[4] != 45 or s[7] != 45 or s[13] != 58:
        return V_TS
    if s[10] != 84 and s[10] != 116 and s[10] != 32:
        return V_TS
    y = _digits(s, 4)
    mo = _digits(s + 5, 2)
    d = _digits(s + 8, 2)
    h = _digits(s + 11, 2)
    mi = _digits(s + 14, 2)
    if y < 0 or mo < 0 or d < 0 or h < 0 or mi < 0:
        return V_TS
    i = 16
    if i < n and s[i] == 58:
        if i + 3 > n:
            return V_TS
        sec = _digits(s + i + 1, 2)
        if sec < 0:
            return V_TS
        i += 3
        if i < n and s[i] == 46:
            i += 1
            fd = 0
            while i < n and _is_digit(s[i]) and fd < 9:
                if fd < 6:
                    frac = frac * 10 + (s[i] - 48)
                elif s[i] != 48:
                    sec = 99  # finer than µs: refused below
                fd += 1
                i += 1
            if fd == 0:
                return V_TS
            for k in range(fd, 6):
                frac *= 10
    if i < n:
        if s[i] == 90 or s[i] == 122:
            zone = True
            i += 1
        elif s[i] == 43 or s[i] == 45:
            if i + 6 > n or s[i + 3] != 58:
                return V_TS
            oh = _digits(s + i + 1, 2)
            om = _digits(s + i + 4, 2)
            if oh < 0 or om < 0:
                return V_TS
            offset = (oh * 60 + om) * 60
            if s[i] == 45:
                offset = -offset
            zone = True
            i += 6
            if oh > 23 or om > 59:
                sec = 99
    if i != n:
        return V_TS
    if not _valid_date(y, mo, d) or h > 23 or mi > 59 or sec > 59:
        return V_TS
    if tz and not zone:
        return V_TS_NOZONE
    if not tz and zone:
        return V_TS_ZONE
    out[0] = (
        (_days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec - offset) * 1000000 + frac
    )
    return 0


cdef inline int _digit_at(const uint8_t* b, NumTok* t, int64_t k) noexcept nogil:
    if k < t.int_len:
        return b[t.int_start + k] - 48
    return b[t.frac_start + k - t.int_len] - 48


cdef int _decimal(const uint8_t* b, NumTok* t, PCol* col, uint8_t* dst) noexcept nogil:
    """Store the number as decimal128(precision, scale) at dst (0) or return the error code."""
    cdef int64_t total = t.int_len + t.frac_len, first = 0, last, nd, e, k
    cdef ms_u128 acc
    if total <= 18 and not t.has_exp and col.scale <= 18:
        if t.mant == 0:
            memset(dst, 0, 16)
            return 0
        return pg_dec_fast(t.mant, <int>t.frac_len, col.scale, col.precision, t.neg, dst,
                           V_DEC_SCALE, V_DEC_RANGE)
    while first < total and _digit_at(b, t, first) == 0:
        first += 1
    if first == total:
        memset(dst, 0, 16)
        return 0
    last = total - 1
    while _digit_at(b, t, last) == 0:
        last -= 1
    nd = last - first + 1
    e = t.exp + (total - 1 - last) - t.frac_len
    if e + col.scale < 0:
        return V_DEC_SCALE
    if nd + e + col.scale > col.precision:
        return V_DEC_RANGE
    acc = ms_u128_from64(0)
    for k in range(first, last + 1):
        acc = pg_u128_muladd(acc, 10, _digit_at(b, t, k))
    for k in range(e + col.scale):
        acc = pg_u128_muladd(acc, 10, 0)
    ms_dec_store(dst, acc, t.neg)
    return 0


cdef inline bint _bit_set(uint8_t* bitmap, int64_t r) noexcept nogil:
    bitmap[r >> 3] |= 1 << (r & 7)
    return True


cdef inline void _null(PCol* col, int64_t r) noexcept nogil:
    col.nulls += 1
    if col.kind == KIND_STRING or col.kind == KIND_LARGE_STRING or col.kind == KIND_NUMERIC:
        (<int64_t*>col.data)[r + 1] = (<int64_t*>col.data)[r]


cdef bint _field(P* p, int64_t row, Py_ssize_t ci) noexcept nogil:
    cdef PCol* col = &p.cols[ci]
    cdef const uint8_t* b = p.b
    cdef int c = _peek(p), kind = col.kind, code, k, hi_, lo_
    cdef int64_t start = p.pos, olen, v64, at
    cdef uint64_t mag
    cdef bint esc, nul
    cdef NumTok t
    cdef NumLit lit
    cdef uint8_t* dst
    if kind == KIND_NUMERIC and (c == 34 or c == 45 or _is_digit(c)):
        # Plain numeric: the number's literal, or an unescaped numeric string, kept as text.
        at = (<int64_t*>col.data)[row]
        if c == 34:
            if not _string(p, col.chars + at, &olen, &esc, &nul):
                return False
            if esc:
                return _fail(p, V_NUMERIC, row, ci, start, p.pos, 0)
        else:
            if not _number(p, &t):
                return False
            olen = p.pos - start
            memcpy(col.chars + at, b + start, olen)
        if _numlit_parse(col.chars + at, olen, &lit):
            return _fail(p, V_NUMERIC, row, ci, start, p.pos, 0)
        (<int64_t*>col.data)[row + 1] = at + olen
        col.nchars = at + olen
        return _bit_set(col.valid, row)
    if c == 34 and (kind == KIND_STRING or kind == KIND_LARGE_STRING):
        at = (<int64_t*>col.data)[row]
        if not _string(p, col.chars + at, &olen, &esc, &nul):
            return False
        if nul:
            return _fail(p, V_NUL, row, ci, start, p.pos, 0)
        (<int64_t*>col.data)[row + 1] = at + olen
        col.nchars = at + olen
        return _bit_set(col.valid, row)
    if c == 34:
        if not _string(p, NULL, &olen, &esc, &nul):
            return False
    elif c == 45 or _is_digit(c):
        if not _number(p, &t):
            return False
    elif not _token(p, 4):
        return False
    # The value's span is [start, p.pos); now what it means for this column.
    if c == 110:
        if col.required:
            return _fail(p, R_NULL, row, ci, start, p.pos, 0)
        _null(col, row)
        return True
    if kind == KIND_DECIMAL:
        if not (c == 45 or _is_digit(c)):
            return _fail(p, V_TYPE, row, ci, start, p.pos, 0)
        code = _decimal(b, &t, col, col.data + 16 * row)
        if code:
            return _fail(p, code, row, ci, start, p.pos, 0)
        return _bit_set(col.valid, row)
    if kind == KIND_UUID:
        if c != 34:
            return _fail(p, V_TYPE, row, ci, start, p.pos, 0)
        if esc or p.pos - start != 38:
            return _fail(p, V_UUID, row, ci, start, p.pos, 0)
        dst = col.data + 16 * row
        k = 0
        for at in range(start + 1, start + 37):
            if at == start + 9 or at == start + 14 or at == start + 19 or at == start + 24:
                if b[at] != 45:
                    return _fail(p, V_UUID, row, ci, start, p.pos, 0)
                continue
            hi_ = HEX[b[at]]
            if hi_ < 0:
                return _fail(p, V_UUID, row, ci, start, p.pos, 0)
            if k & 1:
                dst[k >> 1] |= hi_
            else:
                dst[k >> 1] = hi_ << 4
            k += 1
        if ci == p.id_col:
            p.rid_row = row
        return _bit_set(col.valid, row)
    if kind == KIND_TIMESTAMP:
        if c != 34:
            return _fail(p, V_TYPE, row, ci, start, p.pos, 0)
        code = V_TS if esc else _timestamp(b + start + 1, p.pos - start - 2, col.tz, &v64)
        if code:
            return _fail(p, code, row, ci, start, p.pos, 0)
        (<int64_t*>col.data)[row] = v64
        return _bit_set(col.valid, row)
    if kind == KIND_INT16 or kind == KIND_INT32 or kind == KIND_INT64:
        if not (c == 45 or _is_digit(c)) or t.frac_len or t.has_exp:
            return _fail(p, V_TYPE, row, ci, start, p.pos, 0)
        if t.int_len > 19:
            return _fail(p, V_INT_RANGE, row, ci, start, p.pos, 0)
        mag = 0
        for at in range(t.int_start, t.int_start + t.int_len):
            mag = mag * 10 + (b[at] - 48)
        if mag > (col.max_neg if t.neg else col.max_pos):
            return _fail(p, V_INT_RANGE, row, ci, start, p.pos, 0)
        v64 = -<int64_t>mag if t.neg else <int64_t>mag
        if kind == KIND_INT64:
            (<int64_t*>col.data)[row] = v64
        elif kind == KIND_INT32:
            (<int32_t*>col.data)[row] = <int32_t>v64
        else:
            (<short*>col.data)[row] = <short>v64
        return _bit_set(col.valid, row)
    if kind == KIND_FLOAT64 or kind == KIND_FLOAT32:
        if not (c == 45 or _is_digit(c)):
            return _fail(p, V_TYPE, row, ci, start, p.pos, 0)
        with gil:
            code = _float(b, start, p.pos, kind, col.data, row)
        if code:
            return _fail(p, code, row, ci, start, p.pos, 0)
        return _bit_set(col.valid, row)
    if kind == KIND_BOOL:
        if c != 116 and c != 102:
            return _fail(p, V_TYPE, row, ci, start, p.pos, 0)
        if c == 116:
            _bit_set(col.data, row)
        return _bit_set(col.valid, row)
    if kind == KIND_DATE:
        if c != 34:
            return _fail(p, V_TYPE, row, ci, start, p.pos, 0)
        if esc or p.pos - start != 12 or b[start + 5] != 45 or b[start + 8] != 45:
            return _fail(p, V_DATE, row, ci, start, p.pos, 0)
        k = _digits(b + start + 1, 4)
        hi_ = _digits(b + start + 6, 2)
        lo_ = _digits(b + start + 9, 2)
        if k < 0 or hi_ < 0 or lo_ < 0 or not _valid_date(k, hi_, lo_):
            return _fail(p, V_DATE, row, ci, start, p.pos, 0)
        (<int32_t*>col.data)[row] = <int32_t>_days_from_civil(k, hi_, lo_)
        return _bit_set(col.valid, row)
    # text, but not a string
    return _fail(p, V_TYPE, row, ci, start, p.pos, 0)


cdef int _float(const uint8_t* b, int64_t start, int64_t end, int kind, uint8_t* data,
                int64_t row) noexcept:
    """Python's own float() of the token (the twin's conversion, correctly rounded)."""
    cdef double x = float((<const char*>b)[start:end])
    cdef float y
    if x == float("inf") or x == float("-inf"):
        return V_FLOAT_RANGE
    if kind == KIND_FLOAT64:
        (<double*>data)[row] = x
        return 0
    y = <float>x
    if y == float("inf") or y == float("-inf"):
        return V_FLOAT_RANGE
    (<float*>data)[row] = y
    return 0


cdef inline Py_ssize_t _lookup(P* p, const uint8_t* key, int64_t n) noexcept nogil:
    cdef Py_ssize_t k, c = p.guess
    if c < p.ncols and p.cols[c].name_len == n and memcmp(p.cols[c].name, key, n) == 0:
        p.guess = c + 1
        return c
    for k in range(p.ncols):
        if p.cols[k].name_len == n and memcmp(p.cols[k].name, key, n) == 0:
            p.guess = k + 1
            return k
    return -1


cdef inline Py_ssize_t _expected_key(P* p) noexcept nogil:
    """The column whose key is expected next (the one after the last found), when the bytes
    at pos are exactly that key in quotes: pos moves past it. −1 otherwise (pos unchanged;
    the general path scans the key). Writers emit the fields in the same order every time, so
    this is the common case: one comparison instead of a scan and a lookup."""
    cdef Py_ssize_t c = p.guess
    cdef int64_t n, at = p.pos
    if c >= p.ncols:  # after a reading's last column: its next key is the first again
        c = 0
    if c >= p.ncols or not p.cols[c].plain_name:
        return -1
    n = p.cols[c].name_len
    # A plain name holds no quote or backslash, so its bytes followed by '"' are the whole key.
    if (at + n + 1 < p.n and p.b[at] == 34 and p.b[at + n + 1] == 34
            and memcmp(p.b + at + 1, p.cols[c].name, n) == 0):
        p.pos = at + n + 2
        p.guess = c + 1
        return c
    return -1


cdef bint _dropped(P* p, const uint8_t* key, int64_t n) noexcept nogil:
    cdef Py_ssize_t k
    if p.drop_all:
        return True
    for k in range(p.ndrop):
        if p.drop[k].n == n and memcmp(p.drop[k].p, key, n) == 0:
            return True
    return False


cdef bint _tenant(P* p, int64_t row) noexcept nogil:
    cdef int c = _peek(p)
    cdef int64_t start = p.pos, at
    cdef uint64_t mag = 0
    cdef NumTok t
    cdef bint ok
    if c == 45 or _is_digit(c):
        if not _number(p, &t):
            return False
        ok = not t.frac_len and not t.has_exp and t.int_len <= 19
        if ok and p.check_tenant:
            for at in range(t.int_start, t.int_start + t.int_len):
                mag = mag * 10 + (p.b[at] - 48)
            if mag == 0:
                ok = p.tenant == 0
            elif t.neg:
                ok = p.tenant < 0 and <uint64_t>(-(p.tenant + 1)) + 1 == mag
            else:
                ok = p.tenant > 0 and <uint64_t>p.tenant == mag
    else:
        if not _token(p, 4):
            return False
        ok = False
    if not ok:
        return _fail(p, R_TENANT, row, TENANT_COL, start, p.pos, 0)
    return True


cdef bint _reading(P* p) noexcept nogil:
    cdef int64_t row = p.rows, kstart, kend, klen
    cdef int64_t tenant_seen = -1
    cdef const uint8_t* key
    cdef Py_ssize_t ci, k
    cdef bint esc, nul
    cdef int c, more
    p.rid_row = -1
    p.pos += 1
    _ws(p)
    if _peek(p) == 125:
        p.pos += 1
    else:
        while True:
            kstart = p.pos
            ci = _expected_key(p)
            if ci >= 0:
                kend = p.pos
                if not _colon(p):
                    return False
            else:
                if not _key(p, NULL, &klen, &esc):
                    return False
                kend = p.pos
                if esc:
                    p.pos = kstart
                    _string(p, p.scratch, &klen, &esc, &nul)
                    key = p.scratch
                else:
                    key = p.b + kstart + 1
                if not _colon(p):
                    return False
                ci = _lookup(p, key, klen)
            if ci >= 0:
                if p.cols[ci].seen == row:
                    return _fail(p, R_TWICE, row, ci, kstart, kend, 0)
                p.cols[ci].seen = row
                if not _field(p, row, ci):
                    return False
            elif klen == 9 and memcmp(key, b"tenant_id", 9) == 0:
                if tenant_seen == row:
                    return _fail(p, R_TWICE, row, TENANT_COL, kstart, kend, 0)
                tenant_seen = row
                if not _tenant(p, row):
                    return False
            elif _dropped(p, key, klen):
                if not _token(p, 4):
                    return False
            else:
                return _fail(p, R_UNKNOWN, row, -1, kstart, kend, 0)
            more = _next(p, 125, EXP_OBJ_NEXT)
            if more < 0:
                return False
            if more == 0:
                break
    for k in range(p.ncols):
        if p.cols[k].required and p.cols[k].seen != row:
            return _fail(p, R_MISSING, row, -1, 0, 0, 0)
    for k in range(p.ncols):
        if p.cols[k].seen != row:
            _null(&p.cols[k], row)
    return True


cdef int64_t _duplicate(P* p) noexcept nogil:
    """First reading j whose id an earlier reading i holds: sets f.aux = i; −1 if none."""
    cdef int64_t size = 16, mask, j, h, slot
    cdef int64_t* table
    cdef const uint8_t* ids = p.cols[p.id_col].data
    while size < 2 * p.rows:
        size <<= 1
    mask = size - 1
    table = <int64_t*>calloc(size, sizeof(int64_t))
    if table == NULL:
        return -2
    for j in range(p.rows):
        h = <int64_t>((ms_load64(ids + 16 * j) ^ ms_load64(ids + 16 * j + 8)) & <uint64_t>mask)
        while True:
            slot = table[h]
            if slot == 0:
                table[h] = j + 1
                break
            if memcmp(ids + 16 * (slot - 1), ids + 16 * j, 16) == 0:
                p.f.aux = slot - 1
                free(table)
                return j
            h = (h + 1) & mask
    free(table)
    return -1


cdef bint _readings(P* p) noexcept nogil:
    cdef int64_t start
    cdef int c, more
    cdef int64_t dup
    if _peek(p) != 91:
        start = p.pos
        if not _token(p, 2):
            return False
        return _fail(p, P_READINGS_TYPE, -1, -1, start, p.pos, 0)
    p.pos += 1
    _ws(p)
    if _peek(p) == 93:
        p.pos += 1
        return True
    while True:
        if p.rows == p.limit:
            return _fail(p, P_TOO_MANY, -1, -1, p.pos, p.pos, p.limit)
        if _peek(p) != 123 or not p.has_plan:
            start = p.pos
            c = _peek(p)
            if not _token(p, 3):
                return False
            if c != 123:
                return _fail(p, P_NOT_OBJECT, p.rows, -1, start, p.pos, 0)
        elif not _reading(p):
            return False
        p.rows += 1
        more = _next(p, 93, EXP_ARR_NEXT)
        if more < 0:
            return False
        if more == 0:
            break
    if p.has_plan:
        dup = _duplicate(p)
        if dup == -2:
            return _fail(p, -1, -1, -1, 0, 0, 0)
        if dup >= 0:
            return _fail(p, R_DUP_ID, dup, p.id_col, 0, 0, p.f.aux)
    return True


cdef bint _page(P* p) noexcept nogil:
    cdef bint seen_readings = False, seen_cursor = False, esc, nul
    cdef int64_t kstart, kend, klen, start
    cdef int c, more
    _ws(p)
    if _peek(p) != 123:
        return _fail_char(p, EXP_OBJECT)
    p.pos += 1
    _ws(p)
    if _peek(p) == 125:
        p.pos += 1
    else:
        while True:
            kstart = p.pos
            if not _key(p, p.scratch, &klen, &esc):
                return False
            kend = p.pos
            if not _colon(p):
                return False
            if klen == 8 and memcmp(p.scratch, b"readings", 8) == 0:
                if seen_readings:
                    return _fail(p, P_DUP_TOP, -1, -1, kstart, kend, 0)
                seen_readings = True
                if not _readings(p):
                    return False
            elif klen == 11 and memcmp(p.scratch, b"next_cursor", 11) == 0:
                if seen_cursor:
                    return _fail(p, P_DUP_TOP, -1, -1, kstart, kend, 0)
                seen_cursor = True
                start = p.pos
                c = _peek(p)
                if not _token(p, 2):
                    return False
                if c == 34:
                    p.cursor_start = start
                    p.cursor_end = p.pos
                elif c == 110:
                    p.cursor_start = -1
                else:
                    return _fail(p, P_CURSOR, -1, -1, start, p.pos, 0)
            elif not _token(p, 2):
                return False
            more = _next(p, 125, EXP_OBJ_NEXT)
            if more < 0:
                return False
            if more == 0:
                break
    _ws(p)
    if p.pos != p.n:
        return _fail_char(p, EXP_EOF)
    if not seen_readings:
        return _fail(p, P_NO_READINGS, -1, -1, 0, 0, 0)
    if not seen_cursor:
        return _fail(p, P_NO_CURSOR, -1, -1, 0, 0, 0)
    return True


# -- Python entry ----------------------------------------------------------------------------


cdef inline uint8_t* _address(object buf):
    return <uint8_t*><size_t>buf.address


_WIDTH = {
    KIND_UUID: 16, KIND_INT16: 2, KIND_INT32: 4, KIND_INT64: 8, KIND_FLOAT32: 4,
    KIND_FLOAT64: 8, KIND_DATE: 4, KIND_TIMESTAMP: 8, KIND_DECIMAL: 16,
}


cdef _arrow(P* p, plan):
    cdef Py_ssize_t ci
    cdef int64_t n = p.rows, r, nbytes
    cdef PCol* col
    cdef uint8_t* dst
    arrays = []
    for ci, spec in enumerate(plan.specs):
        col = &p.cols[ci]
        validity = None
        if col.nulls:
            validity = pa.allocate_buffer((n + 7) // 8)
            memcpy(_address(validity), col.valid, (n + 7) // 8)
        if col.kind == KIND_STRING or col.kind == KIND_LARGE_STRING or col.kind == KIND_NUMERIC:
            if col.kind != KIND_LARGE_STRING:
                if col.nchars > 2147483647:
                    raise ValueError(f"column {spec.name!r}: more text than a string array holds")
                offsets = pa.allocate_buffer(4 * (n + 1))
                dst = _address(offsets)
                for r in range(n + 1):
                    (<int32_t*>dst)[r] = <int32_t>(<int64_t*>col.data)[r]
            else:
                offsets = pa.allocate_buffer(8 * (n + 1))
                memcpy(_address(offsets), col.data, 8 * (n + 1))
            chars = pa.allocate_buffer(col.nchars)
            if col.nchars:
                memcpy(_address(chars), col.chars, col.nchars)
            bufs = [validity, offsets, chars]
        else:
            nbytes = (n + 7) // 8 if col.kind == KIND_BOOL else col.width * n
            values = pa.allocate_buffer(nbytes)
            if nbytes:
                memcpy(_address(values), col.data, nbytes)
            bufs = [validity, values]
        t = spec.arrow_type
        if isinstance(t, pa.BaseExtensionType):
            storage = pa.Array.from_buffers(t.storage_type, n, bufs, null_count=col.nulls)
            arrays.append(pa.ExtensionArray.from_storage(t, storage))
        else:
            arrays.append(pa.Array.from_buffers(t, n, bufs, null_count=col.nulls))
    return pa.RecordBatch.from_arrays(arrays, schema=plan.schema)


def parse_page(body, schema, *, tenant_id, limit, unknown_fields=None):
    """Parse and validate one download page: ``(readings as a batch of schema, next_cursor)``.

    Same contract as :func:`metersync.codec._page_py.parse_page`.
    """
    cdef P p
    cdef Py_ssize_t ci, k
    cdef PCol* col
    cdef bint ok
    cdef int64_t cap
    if not isinstance(body, bytes):
        body = bytes(body)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"limit must be a non-negative integer, got {limit!r}")
    plan = T.page_plan(schema) if schema is not None else None
    drop_all, drop = T.drop_rule(unknown_fields)
    drop_list = list(drop)
    memset(&p, 0, sizeof(P))
    p.b = <const uint8_t*>PyBytes_AS_STRING(body)
    p.n = PyBytes_GET_SIZE(body)
    p.has_plan = plan is not None
    p.limit = limit
    p.check_tenant = tenant_id is not None
    p.tenant = tenant_id if tenant_id is not None else 0
    p.drop_all = drop_all
    p.cursor_start = -1
    p.rid_row = -1
    p.f.code = 0
    cap = min(<int64_t>limit, p.n // 2 + 1)
    p.cap = cap
    try:
        p.scratch = <uint8_t*>malloc(p.n + 1)
        p.drop = <Name*>calloc(len(drop_list) + 1, sizeof(Name))
        if p.scratch == NULL or p.drop == NULL:
            raise MemoryError()
        for k, name in enumerate(drop_list):
            p.drop[k].p = <const uint8_t*>PyBytes_AS_STRING(name)
            p.drop[k].n = PyBytes_GET_SIZE(name)
        p.ndrop = len(drop_list)
        names = [spec.name.encode("utf-8") for spec in plan.specs] if plan is not None else []
        p.ncols = len(names)
        p.cols = <PCol*>calloc(p.ncols + 1, sizeof(PCol))
        if p.cols == NULL:
            raise MemoryError()
        if plan is not None:
            p.id_col = plan.id_col
            for ci, spec in enumerate(plan.specs):
                col = &p.cols[ci]
                col.kind = spec.kind
                col.scale = spec.scale
                col.precision = spec.precision
                col.tz = spec.tz
                col.required = plan.required[ci]
                col.width = _WIDTH.get(spec.kind, 0)
                col.seen = -1
                col.name = <const uint8_t*>PyBytes_AS_STRING(names[ci])
                col.name_len = PyBytes_GET_SIZE(names[ci])
                col.plain_name = all(
                    0x20 <= ch < 0x7F and ch != 34 and ch != 92 for ch in names[ci]
                )
                if spec.kind in T.INT_RANGES:
                    low, high = T.INT_RANGES[spec.kind]
                    col.max_pos = high
                    col.max_neg = -low
                col.valid = <uint8_t*>calloc((cap + 7) // 8 + 1, 1)
                if spec.kind in (KIND_STRING, KIND_LARGE_STRING, KIND_NUMERIC):
                    col.data = <uint8_t*>calloc(cap + 1, 8)
                    col.chars = <uint8_t*>malloc(p.n + 1)
                    if col.chars == NULL:
                        raise MemoryError()
                elif spec.kind == KIND_BOOL:
                    col.data = <uint8_t*>calloc((cap + 7) // 8 + 1, 1)
                else:
                    col.data = <uint8_t*>calloc(cap + 1, col.width)
                if col.valid == NULL or col.data == NULL:
                    raise MemoryError()
        with nogil:
            ok = _page(&p)
        if not ok:
            if p.f.code == -1:
                raise MemoryError()
            raise _error(&p, body, plan, tenant_id)
        if p.cursor_start < 0:
            cursor = None
        else:
            raw = body[p.cursor_start + 1 : p.cursor_end - 1]
            cursor = json.loads(b'"' + raw + b'"') if b"\\" in raw else raw.decode("utf-8")
        if plan is None:
            return T.shape_only(p.rows), cursor
        return _arrow(&p, plan), cursor
    finally:
        if p.cols != NULL:
            for ci in range(p.ncols):
                free(p.cols[ci].data)
                free(p.cols[ci].valid)
                free(p.cols[ci].chars)
            free(p.cols)
        free(p.scratch)
        free(p.drop)


cdef _error(P* p, bytes body, plan, tenant_id):
    cdef Fail* f = &p.f
    cdef int64_t row = f.row
    cdef Py_ssize_t k
    aux = f.aux
    rid = None
    if f.code >= R_UNKNOWN and p.rid_row == row and row == p.rows:
        rid = (<char*>p.cols[p.id_col].data)[16 * row : 16 * row + 16]
    if f.code == R_DUP_ID:
        rid = (<char*>p.cols[p.id_col].data)[16 * row : 16 * row + 16]
    if f.code == R_MISSING:
        aux = [k for k in range(p.ncols) if p.cols[k].required and p.cols[k].seen != row]
    return T.page_error(body, plan, tenant_id, f.code, row, f.col, f.start, f.end, aux, rid)

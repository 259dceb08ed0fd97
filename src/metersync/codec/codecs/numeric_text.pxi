# Plain numeric text (no typmod): the literal parser shared by the codec (_batch.pyx) and the
# download page parser (_page.pyx), so both accept exactly the same texts. The rules and the
# reference implementation are in metersync.codec._numeric (the Python twins use it); this file
# mirrors its ``parse``. Only libc types, so both modules can include it.


cdef enum:
    NUMLIT_SYNTAX = 7          # metersync.codec._numeric.SYNTAX (= _types.ERR_NUMERIC_SYNTAX)
    NUMLIT_RANGE = 8           # metersync.codec._numeric.RANGE
    NUMLIT_NAN = 0xC000        # sign words of PostgreSQL's special values
    NUMLIT_PINF = 0xD000
    NUMLIT_NINF = 0xF000
    NUMLIT_DSCALE_MAX = 0x3FFF
    NUMLIT_WEIGHT_MAX = 0x7FFF

cdef int64_t NUMLIT_EXP_CLAMP = 1000000000


cdef struct NumLit:
    # A parsed literal. D = integer digits then fraction digits (as written); the decimal point
    # falls after ``point`` of them; ``first``/``last``: the first/last nonzero digit of D
    # (``first == n`` and ``last == -1`` for zero).
    int special
    int neg
    const uint8_t* ip
    int64_t ilen
    const uint8_t* fp
    int64_t flen
    int64_t point
    int64_t dscale
    int64_t first
    int64_t last


cdef inline int64_t _floor4(int64_t x) noexcept nogil:
    """floor(x / 4) (C division truncates towards zero)."""
    return x >> 2


cdef inline int _numlit_digit(const NumLit* v, int64_t k) noexcept nogil:
    """Digit k of D (0 outside it)."""
    if 0 <= k < v.ilen:
        return v.ip[k] - 48
    if v.ilen <= k < v.ilen + v.flen:
        return v.fp[k - v.ilen] - 48
    return 0


cdef inline bint _numlit_is_digit(uint8_t c) noexcept nogil:
    return 48 <= c <= 57


cdef int _numlit_parse(const uint8_t* s, int64_t n, NumLit* v) noexcept nogil:
    """Parse ``s[0:n]``; 0, NUMLIT_SYNTAX or NUMLIT_RANGE (metersync.codec._numeric.parse)."""
    cdef int64_t i = 0, e = 0, total, k
    cdef bint eneg = False
    v.special = 0
    v.neg = 0
    if n == 3 and s[0] == 78 and s[1] == 97 and s[2] == 78:  # NaN
        v.special = NUMLIT_NAN
        return 0
    if (n == 8 and memcmp(s, b"Infinity", 8) == 0) or (
            n == 9 and s[0] == 43 and memcmp(s + 1, b"Infinity", 8) == 0):
        v.special = NUMLIT_PINF
        return 0
    if n == 9 and s[0] == 45 and memcmp(s + 1, b"Infinity", 8) == 0:
        v.special = NUMLIT_NINF
        return 0
    if i < n and (s[i] == 43 or s[i] == 45):
        v.neg = s[i] == 45
        i += 1
    v.ip = s + i
    while i < n and _numlit_is_digit(s[i]):
        i += 1
    v.ilen = (s + i) - v.ip
    v.fp = s + i
    v.flen = 0
    if i < n and s[i] == 46:  # '.'
        i += 1
        v.fp = s + i
        while i < n and _numlit_is_digit(s[i]):
            i += 1
        v.flen = (s + i) - v.fp
    if v.ilen == 0 and v.flen == 0:
        return NUMLIT_SYNTAX
    if i < n and (s[i] == 101 or s[i] == 69):  # e E
        i += 1
        if i < n and (s[i] == 43 or s[i] == 45):
            eneg = s[i] == 45
            i += 1
        if i == n or not _numlit_is_digit(s[i]):
            return NUMLIT_SYNTAX
        while i < n and _numlit_is_digit(s[i]):
            if e <= NUMLIT_EXP_CLAMP:
                e = e * 10 + (s[i] - 48)
            i += 1
        if e > NUMLIT_EXP_CLAMP:
            e = NUMLIT_EXP_CLAMP
        if eneg:
            e = -e
    if i != n:
        return NUMLIT_SYNTAX
    v.point = v.ilen + e
    v.dscale = v.flen - e if v.flen > e else 0
    total = v.ilen + v.flen
    k = 0
    while k < total and _numlit_digit(v, k) == 0:
        k += 1
    v.first = k
    k = total - 1
    while k >= 0 and _numlit_digit(v, k) == 0:
        k -= 1
    v.last = k
    if v.dscale > NUMLIT_DSCALE_MAX:
        return NUMLIT_RANGE
    if v.first < total and _floor4(v.point - 1 - v.first) > NUMLIT_WEIGHT_MAX:
        return NUMLIT_RANGE
    return 0

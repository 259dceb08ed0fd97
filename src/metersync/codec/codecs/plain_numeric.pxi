# Plain numeric (no typmod; Arrow metersync.numeric, its values as decimal text): the checks,
# the COPY field (PostgreSQL binary numeric from the text), the canonical JSON number, and
# decoding binary numeric back to PostgreSQL's text (included by _batch.pyx after
# numeric_text.pxi). The Python reference is metersync.codec._numeric.
#
# Rare next to numeric(p, s), so nothing here is inlined into the row loops: the loops call out.


cdef inline int _numlit_at(const Col* col, int64_t j, NumLit* v) noexcept nogil:
    """Parse value ``j`` (absolute index) of a plain numeric column."""
    cdef int64_t a = _text_offset(col, j)
    return _numlit_parse(col.chars + a, _text_offset(col, j + 1) - a, v)


cdef int64_t _numlit_groups(const NumLit* v) noexcept nogil:
    """Base-10000 digits of a finite nonzero value."""
    return _floor4(v.point - 1 - v.first) - _floor4(v.point - 1 - v.last) + 1


cdef int64_t _numlit_text_len(const NumLit* v) noexcept nogil:
    """Length of the canonical text (_put_numlit_text's output)."""
    cdef int64_t total = v.ilen + v.flen, n
    if v.special == NUMLIT_NAN:
        return 3
    if v.special:
        return 8 if v.special == NUMLIT_PINF else 9
    n = (v.point - v.first) if (v.first < total and v.first < v.point) else 1
    if v.neg and v.first < total:
        n += 1
    if v.dscale > 0:
        n += 1 + v.dscale
    return n


cdef bint _plain_numeric_check(const Col* col, int64_t nrows, Py_ssize_t ci, bint json,
                               int64_t* size, Failure* f) noexcept nogil:
    """Every value parses; ``size`` grows by the COPY payloads or the canonical texts plus
    quotes (written in the metertrack profile, and around NaN and the infinities always)."""
    cdef int64_t r
    cdef int code
    cdef NumLit v
    for r in range(nrows):
        if not _valid(col, r):
            continue
        code = _numlit_at(col, col.offset + r, &v)
        if code:
            f.code = code
            f.col = ci
            f.row = r
            return False
        if json:
            size[0] += 2 + _numlit_text_len(&v)
        elif v.special or v.first == v.ilen + v.flen:
            size[0] += 8
        else:
            size[0] += 8 + 2 * _numlit_groups(&v)
    return True


cdef uint8_t* _plain_numeric_copy(uint8_t* p, const Col* col, int64_t j) noexcept nogil:
    """Length + PostgreSQL binary numeric of a (checked) plain numeric text."""
    cdef NumLit v
    cdef int64_t g, e, weight, lastg, nd, k
    cdef uint32_t value
    _numlit_at(col, j, &v)
    if v.special:
        ms_put32(p, 8)
        ms_put32(p + 4, 0)
        ms_put16(p + 8, <uint16_t>v.special)
        ms_put16(p + 10, <uint16_t>((v.special & 0x1F80) >> 7))  # as PostgreSQL sends it
        return p + 12
    if v.first == v.ilen + v.flen:  # zero: no digits, its display scale
        ms_put32(p, 8)
        ms_put32(p + 4, 0)
        ms_put16(p + 8, 0)
        ms_put16(p + 10, <uint16_t>v.dscale)
        return p + 12
    weight = _floor4(v.point - 1 - v.first)
    lastg = _floor4(v.point - 1 - v.last)
    nd = weight - lastg + 1
    ms_put32(p, <uint32_t>(8 + 2 * nd))
    ms_put16(p + 4, <uint16_t>nd)
    ms_put16(p + 6, <uint16_t><int16_t>weight)
    ms_put16(p + 8, 0x4000 if v.neg else 0)
    ms_put16(p + 10, <uint16_t>v.dscale)
    p += 12
    # Digit k of D is worth 10**(point - 1 - k); group g holds the exponents 4g + 3 .. 4g.
    g = weight
    while g >= lastg:
        value = 0
        e = 4 * g + 3
        while e >= 4 * g:
            k = v.point - 1 - e
            value = value * 10 + _numlit_digit(&v, k)
            e -= 1
        ms_put16(p, <uint16_t>value)
        p += 2
        g -= 1
    return p


cdef uint8_t* _put_numlit_text(uint8_t* p, const NumLit* v) noexcept nogil:
    """PostgreSQL's output text of a parsed finite or special value."""
    cdef int64_t k, total = v.ilen + v.flen
    if v.special == NUMLIT_NAN:
        memcpy(p, b"NaN", 3)
        return p + 3
    if v.special == NUMLIT_PINF:
        memcpy(p, b"Infinity", 8)
        return p + 8
    if v.special:
        memcpy(p, b"-Infinity", 9)
        return p + 9
    if v.neg and v.first < total:
        p[0] = 45
        p += 1
    if v.first < total and v.first < v.point:
        if v.point <= v.ilen:  # the integer digits as written (no exponent moved the point)
            memcpy(p, v.ip + v.first, v.point - v.first)
            p += v.point - v.first
        else:
            for k in range(v.first, v.point):
                p[0] = <uint8_t>(48 + _numlit_digit(v, k))
                p += 1
    else:
        p[0] = 48
        p += 1
    if v.dscale > 0:
        p[0] = 46
        p += 1
        if v.point == v.ilen:  # the fraction digits as written
            memcpy(p, v.fp, v.flen)
            p += v.flen
        else:
            for k in range(v.point, total):  # exactly dscale digits (total - point == dscale)
                p[0] = <uint8_t>(48 + _numlit_digit(v, k))
                p += 1
    return p


cdef uint8_t* _plain_numeric_json(uint8_t* p, const Col* col, int64_t j,
                                  bint quote) noexcept nogil:
    """The canonical text: a JSON number, or a string when ``quote`` (metertrack profile) or
    for NaN and the infinities (JSON numbers have no form for them)."""
    cdef NumLit v
    _numlit_at(col, j, &v)
    quote = quote or v.special != 0
    if quote:
        p[0] = 34
        p += 1
    p = _put_numlit_text(p, &v)
    if quote:
        p[0] = 34
        p += 1
    return p


cdef int64_t _plain_numeric_json_len(const Col* col, int64_t j, bint quote) noexcept nogil:
    cdef NumLit v
    _numlit_at(col, j, &v)
    return _numlit_text_len(&v) + (2 if quote or v.special != 0 else 0)


# ---- decoding: binary numeric -> PostgreSQL's text (numeric_out)


cdef int64_t _numeric_out_len(const uint8_t* p) noexcept nogil:
    """Length of the text of a checked binary numeric."""
    cdef int ndigits = ms_get16(p)
    cdef int weight = <int16_t>ms_get16(p + 2)
    cdef uint16_t sign = ms_get16(p + 4)
    cdef int dscale = ms_get16(p + 6)
    cdef int64_t n = 0
    cdef uint32_t first
    if sign == NUMLIT_NAN:
        return 3
    if sign == NUMLIT_PINF:
        return 8
    if sign == NUMLIT_NINF:
        return 9
    if sign == 0x4000:
        n = 1
    if weight < 0:
        n += 1
    else:
        first = ms_get16(p + 8) if ndigits > 0 else 0
        n += (4 if first >= 1000 else 3 if first >= 100 else 2 if first >= 10 else 1)
        n += 4 * weight
    if dscale > 0:
        n += 1 + dscale
    return n


cdef int _numeric_out_check(const uint8_t* p, int64_t length) noexcept nogil:
    """0, or the D_* code of what PostgreSQL's numeric_recv would refuse."""
    cdef int ndigits, k
    cdef uint16_t sign
    if length < 8 or length != 8 + 2 * <int64_t>ms_get16(p):
        return D_NUMERIC_SHAPE
    ndigits = ms_get16(p)
    sign = ms_get16(p + 4)
    if sign == NUMLIT_NAN or sign == NUMLIT_PINF or sign == NUMLIT_NINF:
        return 0
    if sign != 0 and sign != 0x4000:
        return D_NUMERIC_SIGN
    for k in range(ndigits):
        if ms_get16(p + 8 + 2 * k) >= 10000:
            return D_NUMERIC_DIGIT
    if ms_get16(p + 6) > NUMLIT_DSCALE_MAX:
        return D_NUMERIC_DSCALE
    return 0


cdef inline uint8_t* _put4(uint8_t* q, uint32_t d) noexcept nogil:
    q[0] = DIGITS2[2 * (d // 100)]
    q[1] = DIGITS2[2 * (d // 100) + 1]
    q[2] = DIGITS2[2 * (d % 100)]
    q[3] = DIGITS2[2 * (d % 100) + 1]
    return q + 4


cdef uint8_t* _put_numeric_out(uint8_t* q, const uint8_t* p) noexcept nogil:
    """PostgreSQL's get_str_from_var: sign, the integer groups (the first without leading
    zeros), then exactly dscale fraction digits (missing groups are zeros)."""
    cdef int ndigits = ms_get16(p)
    cdef int weight = <int16_t>ms_get16(p + 2)
    cdef uint16_t sign = ms_get16(p + 4)
    cdef int dscale = ms_get16(p + 6)
    cdef int d, i
    cdef uint32_t dig
    cdef uint8_t tmp[4]
    if sign == NUMLIT_NAN:
        memcpy(q, b"NaN", 3)
        return q + 3
    if sign == NUMLIT_PINF:
        memcpy(q, b"Infinity", 8)
        return q + 8
    if sign == NUMLIT_NINF:
        memcpy(q, b"-Infinity", 9)
        return q + 9
    if sign == 0x4000:
        q[0] = 45
        q += 1
    if weight < 0:
        q[0] = 48
        q += 1
        d = weight + 1
    else:
        dig = ms_get16(p + 8) if ndigits > 0 else 0
        q = ms_put_u64(q, dig)
        for d in range(1, weight + 1):
            q = _put4(q, ms_get16(p + 8 + 2 * d) if d < ndigits else 0)
        d = weight + 1
    if dscale > 0:
        q[0] = 46
        q += 1
        i = 0
        while i < dscale:
            dig = ms_get16(p + 8 + 2 * d) if 0 <= d < ndigits else 0
            if dscale - i >= 4:
                q = _put4(q, dig)
            else:
                _put4(tmp, dig)
                memcpy(q, tmp, dscale - i)
                q += dscale - i
            i += 4
            d += 1
    return q


cdef inline void _plain_numeric_decode(DCol* col, int64_t r, const uint8_t* p) noexcept nogil:
    """Append the text of one (checked) binary numeric to the column's chars and offsets."""
    cdef int32_t v = (<int32_t*>col.data)[r]
    cdef uint8_t* end = _put_numeric_out(col.chars + v, p)
    (<int32_t*>col.data)[r + 1] = <int32_t>(end - col.chars)

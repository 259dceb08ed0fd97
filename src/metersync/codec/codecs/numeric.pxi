# numeric(p, s) (Arrow decimal128(p, s), s >= 0): the precision check, PostgreSQL's binary numeric
# (base-10000 digits) for COPY, the JSON number with exactly ``s`` fraction digits, and decoding
# back to decimal128 at the column's scale (included by _batch.pyx).


cdef enum:
    PREFETCH_ROWS = 16  # rows ahead each decimal column asks the cache for (4 lines of 64 bytes)


cdef bint _numeric_check_copy(const Col* col, int64_t nrows, Py_ssize_t ci,
                              Failure* f) noexcept nogil:
    """The first value whose magnitude needs more than the column's precision."""
    cdef int64_t r
    cdef int neg
    for r in range(nrows):
        if not _valid(col, r):
            continue
        if ms_u128_ge(ms_dec_abs(col.data + 16 * (col.offset + r), &neg), col.limit):
            f.code = ERR_PRECISION
            f.col = ci
            f.row = r
            return False
    return True


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


cdef inline uint8_t* _numeric_copy(uint8_t* p, const Col* col, int64_t j) noexcept nogil:
    ms_prefetch(col.data + 16 * (j + PREFETCH_ROWS))
    return _put_numeric(p, col.data + 16 * j, col.scale)


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


cdef inline uint8_t* _put_decimal_text(uint8_t* p, const uint8_t* src, int scale) noexcept nogil:
    """JSON number with exactly ``scale`` fraction digits (e.g. -0.0001, 12.5000, 7)."""
    cdef int neg
    cdef ms_u128 m = ms_dec_abs(src, &neg)
    if ms_u128_fits64(m) and scale <= 19:  # the common case: written in place
        return ms_put_decimal64(p, ms_u128_lo(m), neg, scale)
    return _put_decimal_text_wide(p, m, neg, scale)


cdef uint8_t* _put_decimal_text_wide(uint8_t* p, ms_u128 m, int neg, int scale) noexcept nogil:
    """_put_decimal_text for |value| >= 2**64 or scale > 19. Kept out of line (it is rare) so that
    the common case stays small enough to be inlined into every copy of the JSON row loop."""
    cdef int nd, whole
    cdef uint32_t chunk
    cdef uint8_t buf[128]
    cdef uint8_t* end = buf + 48   # digits end here; 32-byte block reads stay inside buf
    cdef uint8_t* q = end
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


cdef inline uint8_t* _numeric_json(uint8_t* p, const Col* col, int64_t j) noexcept nogil:
    ms_prefetch(col.data + 16 * (j + PREFETCH_ROWS))
    return _put_decimal_text(p, col.data + 16 * j, col.scale)


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


cdef inline int64_t _numeric_json_len(const Col* col, int64_t j) noexcept nogil:
    """Length of _put_decimal_text's output for this value, without writing it."""
    cdef int neg
    cdef int64_t nd = 0
    cdef ms_u128 m
    ms_prefetch(col.data + 16 * (j + PREFETCH_ROWS))
    m = ms_dec_abs(col.data + 16 * j, &neg)
    while not ms_u128_fits64(m):  # rare: |value| >= 2**64
        ms_u128_divmod(&m, 10000)
        nd += 4
    nd += ms_u64_len(ms_u128_lo(m))
    if col.scale == 0:
        return neg + nd
    return neg + max(nd, col.scale + 1) + 1  # digits padded to "0.000d", and the point

# text (Arrow string / large_string <-> PostgreSQL text): UTF-8 validation, the COPY field, the
# JSON string with its escapes, and decoding (included by _batch.pyx).
#
# A text column is read through its offsets (int32 for string, int64 for large_string), so every
# function here takes the absolute index ``j`` (row + column offset).


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


cdef inline uint8_t* _text_copy(uint8_t* p, const Col* col, int64_t j) noexcept nogil:
    cdef int64_t a = _text_offset(col, j), b = _text_offset(col, j + 1)
    ms_put32(p, <uint32_t>(b - a))
    memcpy(p + 4, col.chars + a, b - a)
    return p + 4 + (b - a)


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


cdef inline uint8_t* _text_json(uint8_t* p, const Col* col, int64_t j) noexcept nogil:
    cdef int64_t a = _text_offset(col, j)
    return _put_json_text(p, col.chars + a, _text_offset(col, j + 1) - a)


cdef inline bint _text_decode(DCol* col, int64_t r, const uint8_t* p, int64_t length, int64_t at,
                              Py_ssize_t c, DFail* f) noexcept nogil:
    """Append one field to the column's chars and offsets (large_string: int64 offsets)."""
    cdef int64_t v
    if not _utf8_valid(p, length):
        return _dfail(f, D_TEXT_UTF8, at, c, 0)
    if col.kind == KIND_LARGE_STRING:
        v = (<int64_t*>col.data)[r]
        memcpy(col.chars + v, p, length)
        (<int64_t*>col.data)[r + 1] = v + length
        return True
    v = (<int32_t*>col.data)[r]
    memcpy(col.chars + v, p, length)
    (<int32_t*>col.data)[r + 1] = <int32_t>(v + length)
    return True


cdef inline int64_t _text_json_len(const Col* col, int64_t j) noexcept nogil:
    """Length of _text_json's output (quotes and escapes), without writing it."""
    cdef int64_t a = _text_offset(col, j), b = _text_offset(col, j + 1), k, n = 2
    cdef const uint8_t* s = col.chars + a
    for k in range(b - a):
        n += ESC_LEN[s[k]]
    return n

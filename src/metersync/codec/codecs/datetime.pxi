# date and timestamp[tz] (Arrow date32 / timestamp('us'[, tz])): range checks (PostgreSQL's for
# COPY, years 1..9999 for JSON), the COPY field shifted to PostgreSQL's 2000-01-01 epoch, the
# canonical JSON text, decoding (included by _batch.pyx).


cdef bint _date_check_copy(const Col* col, int64_t nrows, Py_ssize_t ci,
                           Failure* f) noexcept nogil:
    """The first date PostgreSQL cannot store."""
    cdef int64_t r, v
    for r in range(nrows):
        if not _valid(col, r):
            continue
        v = (<const int32_t*>col.data)[col.offset + r] - PG_EPOCH_DAYS
        if v < PG_MIN_DATE or v >= PG_END_DATE:
            f.code = ERR_RANGE
            f.col = ci
            f.row = r
            return False
    return True


cdef bint _timestamp_check_copy(const Col* col, int64_t nrows, Py_ssize_t ci,
                                Failure* f) noexcept nogil:
    """The first timestamp PostgreSQL cannot store."""
    cdef int64_t r
    for r in range(nrows):
        if not _valid(col, r):
            continue
        # The upper bound cannot be exceeded by an int64 shifted down by the epoch.
        if (<const int64_t*>col.data)[col.offset + r] < PG_MIN_TIMESTAMP + PG_EPOCH_US:
            f.code = ERR_RANGE
            f.col = ci
            f.row = r
            return False
    return True


cdef bint _date_check_json(const Col* col, int64_t nrows, Py_ssize_t ci,
                           Failure* f) noexcept nogil:
    """The first date outside the years 1..9999 of the canonical JSON form."""
    cdef int64_t r, v
    for r in range(nrows):
        if not _valid(col, r):
            continue
        v = (<const int32_t*>col.data)[col.offset + r]
        if v < JSON_MIN_DAYS or v > JSON_MAX_DAYS:
            f.code = ERR_YEAR
            f.col = ci
            f.row = r
            return False
    return True


cdef bint _timestamp_check_json(const Col* col, int64_t nrows, Py_ssize_t ci,
                                Failure* f) noexcept nogil:
    """The first timestamp outside the years 1..9999 of the canonical JSON form."""
    cdef int64_t r, v
    for r in range(nrows):
        if not _valid(col, r):
            continue
        v = (<const int64_t*>col.data)[col.offset + r]
        if v < JSON_MIN_US or v > JSON_MAX_US:
            f.code = ERR_YEAR
            f.col = ci
            f.row = r
            return False
    return True


cdef inline uint8_t* _date_copy(uint8_t* p, const Col* col, int64_t j) noexcept nogil:
    ms_put32(p, 4)
    ms_put32(p + 4, <uint32_t>((<const int32_t*>col.data)[j] - PG_EPOCH_DAYS))
    return p + 8


cdef inline uint8_t* _timestamp_copy(uint8_t* p, const Col* col, int64_t j) noexcept nogil:
    ms_put32(p, 8)
    ms_put64(p + 4, <uint64_t>((<const int64_t*>col.data)[j] - PG_EPOCH_US))
    return p + 12


cdef inline uint8_t* _put2(uint8_t* p, int v) noexcept nogil:
    p[0] = DIGITS2[2 * v]
    p[1] = DIGITS2[2 * v + 1]
    return p + 2


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


cdef inline uint8_t* _date_json(uint8_t* p, const Col* col, int64_t j) noexcept nogil:
    p[0] = 34
    p = _put_date(p + 1, (<const int32_t*>col.data)[j])
    p[0] = 34
    return p + 1


cdef inline uint8_t* _timestamp_json(uint8_t* p, const Col* col, int64_t j) noexcept nogil:
    return _put_timestamp(p, (<const int64_t*>col.data)[j], col.tz)


cdef inline bint _date_decode(DCol* col, int64_t r, const uint8_t* p, int64_t at, Py_ssize_t c,
                              DFail* f) noexcept nogil:
    cdef int32_t v32 = <int32_t>ms_get32(p)
    if v32 == INT32_MIN_ or v32 == INT32_MAX_ or v32 > INT32_MAX_ - PG_EPOCH_DAYS:
        return _dfail(f, D_DATE, at, c, v32)
    (<int32_t*>col.data)[r] = v32 + PG_EPOCH_DAYS
    return True


cdef inline bint _timestamp_decode(DCol* col, int64_t r, const uint8_t* p, int64_t at,
                                   Py_ssize_t c, DFail* f) noexcept nogil:
    cdef int64_t v = <int64_t>ms_get64(p)
    if v == INT64_MIN_ or v == INT64_MAX_ or v > INT64_MAX_ - PG_EPOCH_US:
        return _dfail(f, D_TIMESTAMP, at, c, v)
    (<int64_t*>col.data)[r] = v + PG_EPOCH_US
    return True


# JSON text lengths: '"YYYY-MM-DD"', '"YYYY-MM-DDTHH:MM:SS.ffffff"' and 'Z' with a zone (the
# validation pass keeps years in 1..9999, so always four digits).
cdef enum:
    DATE_JSON_LEN = 12
    TIMESTAMP_JSON_LEN = 28

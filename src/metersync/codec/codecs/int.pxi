# int2 / int4 / int8 (Arrow int16 / int32 / int64): the COPY field (big-endian), the JSON number,
# decoding (included by _batch.pyx).


cdef inline uint8_t* _int16_copy(uint8_t* p, const Col* col, int64_t j) noexcept nogil:
    ms_put32(p, 2)
    ms_put16(p + 4, (<const uint16_t*>col.data)[j])
    return p + 6


cdef inline uint8_t* _int32_copy(uint8_t* p, const Col* col, int64_t j) noexcept nogil:
    ms_put32(p, 4)
    ms_put32(p + 4, (<const uint32_t*>col.data)[j])
    return p + 8


cdef inline uint8_t* _int64_copy(uint8_t* p, const Col* col, int64_t j) noexcept nogil:
    ms_put32(p, 8)
    ms_put64(p + 4, (<const uint64_t*>col.data)[j])
    return p + 12


cdef inline uint8_t* _put_i64(uint8_t* p, int64_t v) noexcept nogil:
    if v < 0:
        p[0] = 45  # '-'
        return ms_put_u64(p + 1, <uint64_t>0 - <uint64_t>v)
    return ms_put_u64(p, <uint64_t>v)


cdef inline uint8_t* _int16_json(uint8_t* p, const Col* col, int64_t j) noexcept nogil:
    return _put_i64(p, (<const int16_t*>col.data)[j])


cdef inline uint8_t* _int32_json(uint8_t* p, const Col* col, int64_t j) noexcept nogil:
    return _put_i64(p, (<const int32_t*>col.data)[j])


cdef inline uint8_t* _int64_json(uint8_t* p, const Col* col, int64_t j) noexcept nogil:
    return _put_i64(p, (<const int64_t*>col.data)[j])


cdef inline void _int16_decode(DCol* col, int64_t r, const uint8_t* p) noexcept nogil:
    (<uint16_t*>col.data)[r] = ms_get16(p)


cdef inline void _int32_decode(DCol* col, int64_t r, const uint8_t* p) noexcept nogil:
    (<uint32_t*>col.data)[r] = ms_get32(p)


cdef inline void _int64_decode(DCol* col, int64_t r, const uint8_t* p) noexcept nogil:
    ms_store64(col.data + 8 * r, ms_get64(p))


cdef inline int64_t _i64_json_len(int64_t v) noexcept nogil:
    """Length of _put_i64's output, without writing it."""
    if v < 0:
        return 1 + ms_u64_len(<uint64_t>0 - <uint64_t>v)
    return ms_u64_len(<uint64_t>v)

# bool (Arrow bit-packed boolean <-> PostgreSQL bool): the one-byte COPY field, JSON true/false,
# decoding (included by _batch.pyx).


cdef inline uint8_t* _bool_copy(uint8_t* p, const Col* col, int64_t j) noexcept nogil:
    ms_put32(p, 1)
    p[4] = (col.data[j >> 3] >> (j & 7)) & 1
    return p + 5


cdef inline uint8_t* _bool_json(uint8_t* p, const Col* col, int64_t j) noexcept nogil:
    if (col.data[j >> 3] >> (j & 7)) & 1:
        memcpy(p, b"true", 4)
        return p + 4
    memcpy(p, b"false", 5)
    return p + 5


cdef inline void _bool_decode(DCol* col, int64_t r, const uint8_t* p) noexcept nogil:
    if p[0]:
        col.data[r >> 3] |= 1 << (r & 7)


cdef inline int64_t _bool_json_len(const Col* col, int64_t j) noexcept nogil:
    return 4 if (col.data[j >> 3] >> (j & 7)) & 1 else 5

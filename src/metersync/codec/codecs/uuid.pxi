# uuid (Arrow fixed_size_binary(16) / arrow.uuid <-> PostgreSQL uuid): the COPY field, the JSON
# text form, decoding, and the binary uuid[] array used for "= ANY($n)" (included by _batch.pyx).


cdef inline uint8_t* _uuid_copy(uint8_t* p, const Col* col, int64_t j) noexcept nogil:
    ms_put32(p, 16)
    memcpy(p + 4, col.data + 16 * j, 16)
    return p + 20


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


cdef enum:
    UUID_JSON_LEN = 38  # '"8-4-4-4-12"'


cdef inline uint8_t* _uuid_json(uint8_t* p, const Col* col, int64_t j) noexcept nogil:
    return _put_uuid(p, col.data + 16 * j)


cdef inline void _uuid_decode(DCol* col, int64_t r, const uint8_t* p) noexcept nogil:
    memcpy(col.data + 16 * r, p, 16)


cdef uint8_t* _put_uuids(object ids, uint8_t* p, bint with_length) except NULL:
    """Write every value of the uuid array ``ids`` at ``p`` in order: 16 bytes each, after its
    4-byte length when ``with_length`` (an array element); the end of what was written.
    Checks the storage type and rejects a null, naming its index."""
    cdef ArrowSchema* c_schema
    cdef ArrowArray* c_array
    cdef int64_t k, j, done = 0
    cdef const uint8_t* validity
    cdef const uint8_t* values
    chunks = ids.chunks if isinstance(ids, pa.ChunkedArray) else [ids]
    for chunk in chunks:
        storage = chunk.storage if isinstance(chunk, pa.ExtensionArray) else chunk
        capsules = storage.__arrow_c_array__()
        c_schema = <ArrowSchema*>PyCapsule_GetPointer(capsules[0], b"arrow_schema")
        c_array = <ArrowArray*>PyCapsule_GetPointer(capsules[1], b"arrow_array")
        try:
            if strcmp(c_schema.format, b"w:16") != 0 or c_array.n_buffers != 2:
                raise CodecTypeError(f"expected a fixed_size_binary(16) array, got {storage.type}")
            validity = <const uint8_t*>c_array.buffers[0] if c_array.null_count else NULL
            values = <const uint8_t*>c_array.buffers[1]
            for k in range(c_array.length):
                j = c_array.offset + k
                if validity != NULL and not ((validity[j >> 3] >> (j & 7)) & 1):
                    raise CodecValueError(
                        f"uuid array element {done + k} is null: ids must not be null"
                    )
                if with_length:
                    ms_put32(p, 16)
                    p += 4
                memcpy(p, values + 16 * j, 16)
                p += 16
            done += c_array.length
        finally:
            if c_array.release != NULL:
                c_array.release(c_array)
            if c_schema.release != NULL:
                c_schema.release(c_schema)
    return p


def uuid_array_binary(ids):
    """PostgreSQL binary ``uuid[]``: ndim, has-null flag, element oid, dimension, lower bound 1."""
    cdef int64_t n = len(ids)
    cdef uint8_t* p
    cdef _Out out
    if not _types.is_uuid(ids.type):
        raise CodecTypeError(f"expected a fixed_size_binary(16) or uuid array, got {ids.type}")
    if n == 0:
        return b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x0b\x86"
    out = _Out(20 + 20 * n)
    p = out.ptr()
    ms_put32(p, 1)
    ms_put32(p + 4, 0)
    ms_put32(p + 8, UUID_OID)
    ms_put32(p + 12, <uint32_t>n)
    ms_put32(p + 16, 1)
    p = _put_uuids(ids, p + 20, True)
    return out.finish(p - out.ptr())


cdef int _cmp_uuid(const void* a, const void* b) noexcept nogil:
    return memcmp(a, b, 16)


def sorted_uuid_bytes(ids):
    """The 16-byte values of the uuid array ``ids`` in ascending byte order, concatenated (what
    the upload's Idempotency-Key digests): one copy and a C sort, no Python object per id."""
    cdef int64_t n = len(ids)
    cdef uint8_t* p
    cdef _Out out
    if not _types.is_uuid(ids.type):
        raise CodecTypeError(f"expected a fixed_size_binary(16) or uuid array, got {ids.type}")
    if n == 0:
        return b""
    out = _Out(16 * n)
    p = out.ptr()
    _put_uuids(ids, p, False)
    qsort(p, <size_t>n, 16, _cmp_uuid)  # GIL held: µs of work, not worth a switch interval
    return out.finish(16 * n)

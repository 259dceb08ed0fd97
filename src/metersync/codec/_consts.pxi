# Constants and lookup tables shared by the codecs (included by _batch.pyx).


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
    "KIND_NUMERIC": KIND_NUMERIC, "ERR_NUMERIC_SYNTAX": ERR_NUMERIC_SYNTAX,
    "ERR_NUMERIC_RANGE": ERR_NUMERIC_RANGE,
    "ERR_NUL": ERR_NUL, "ERR_UTF8": ERR_UTF8, "ERR_FLOAT": ERR_FLOAT, "ERR_YEAR": ERR_YEAR,
    "ERR_PRECISION": ERR_PRECISION, "ERR_RANGE": ERR_RANGE,
}

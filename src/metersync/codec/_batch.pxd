# cython: language_level=3
"""Declarations of the Cython core: the Arrow C data interface structs (ABI-frozen, declared here
so nothing links libarrow), the per-column descriptor the hot loops walk, and small C helpers
(big-endian stores, 128-bit arithmetic) that Cython cannot spell directly.
"""

from libc.stdint cimport int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t


cdef extern from *:
    """
    #include <string.h>
    #include <stdint.h>

    /* unsigned 128-bit magnitude of a decimal128 value (gcc/clang). */
    typedef unsigned __int128 ms_u128;

    static inline void ms_put16(unsigned char *p, uint16_t v) {
        v = __builtin_bswap16(v); memcpy(p, &v, 2);
    }
    static inline void ms_put32(unsigned char *p, uint32_t v) {
        v = __builtin_bswap32(v); memcpy(p, &v, 4);
    }
    static inline void ms_put64(unsigned char *p, uint64_t v) {
        v = __builtin_bswap64(v); memcpy(p, &v, 8);
    }
    static inline uint16_t ms_get16(const unsigned char *p) {
        uint16_t v; memcpy(&v, p, 2); return __builtin_bswap16(v);
    }
    static inline uint32_t ms_get32(const unsigned char *p) {
        uint32_t v; memcpy(&v, p, 4); return __builtin_bswap32(v);
    }
    static inline uint64_t ms_get64(const unsigned char *p) {
        uint64_t v; memcpy(&v, p, 8); return __builtin_bswap64(v);
    }
    static inline uint64_t ms_load64(const unsigned char *p) {
        uint64_t v; memcpy(&v, p, 8); return v;
    }
    static inline void ms_store64(unsigned char *p, uint64_t v) { memcpy(p, &v, 8); }

    /* |value| of the little-endian two's complement decimal128 at p; *neg tells the sign. */
    static inline ms_u128 ms_dec_abs(const unsigned char *p, int *neg) {
        uint64_t lo, hi;
        memcpy(&lo, p, 8); memcpy(&hi, p + 8, 8);
        ms_u128 v = ((ms_u128)hi << 64) | lo;
        *neg = (int64_t)hi < 0;
        return *neg ? (ms_u128)0 - v : v;
    }
    static inline int ms_u128_fits64(ms_u128 v) { return (v >> 64) == 0; }
    static inline uint64_t ms_u128_lo(ms_u128 v) { return (uint64_t)v; }
    static inline ms_u128 ms_u128_from64(uint64_t v) { return (ms_u128)v; }
    static inline ms_u128 ms_u128_pow10(int n) {
        ms_u128 r = 1; while (n-- > 0) r *= 10; return r;
    }
    /* q = v / d, returns v % d (128-bit by small divisor). */
    static inline uint32_t ms_u128_divmod(ms_u128 *v, uint32_t d) {
        ms_u128 q = *v / d; uint32_t r = (uint32_t)(*v - q * d); *v = q; return r;
    }
    /* Store (neg ? -v : v) as little-endian two's complement decimal128. */
    static inline void ms_dec_store(unsigned char *p, ms_u128 v, int neg) {
        if (neg) v = (ms_u128)0 - v;
        uint64_t lo = (uint64_t)v, hi = (uint64_t)(v >> 64);
        memcpy(p, &lo, 8); memcpy(p + 8, &hi, 8);
    }
    /* acc = acc * m + a, 0 on overflow past 2**127 (no decimal128 holds it). */
    static inline int ms_u128_muladd(ms_u128 *acc, uint32_t m, uint32_t a) {
        const ms_u128 limit = ((ms_u128)1) << 127;
        /* m, a <= 10000 < 2**14: below 2**112 no overflow is possible, skip the 128-bit
           division (a libgcc call) that the exact check needs. */
        if ((*acc >> 112) != 0 && *acc > (limit - a) / m) return 0;
        *acc = *acc * m + a; return 1;
    }
    /* Row-major encoding reads one value from each of ~44 column buffers per row: more streams
       than the hardware prefetchers follow, so each column prefetches a few rows ahead. */
    /* Large outputs: ask for transparent huge pages on the 2 MiB-aligned interior of a fresh
       allocation before the first write, so filling it faults ~512x fewer pages. A hint only:
       ignored where THP is off. */
    #include <sys/mman.h>
    static inline void ms_hugepage_hint(void *p, size_t n) {
    #ifdef MADV_HUGEPAGE
        const uintptr_t huge = (uintptr_t)2 << 20;
        uintptr_t start = ((uintptr_t)p + huge - 1) & ~(huge - 1);
        uintptr_t end = ((uintptr_t)p + n) & ~(huge - 1);
        if (end > start) (void)madvise((void *)start, end - start, MADV_HUGEPAGE);
    #endif
    }
    static inline void ms_prefetch(const void *p) { __builtin_prefetch(p, 0, 0); }
    static inline int ms_u128_ge(ms_u128 a, ms_u128 b) { return a >= b; }
    static inline int ms_u128_is0(ms_u128 a) { return a == 0; }

    /* ---- decimal text, written in place (no temporary buffer: reading back small stores
       from a scratch buffer stalls store-to-load forwarding, which was ~20% of json_rows) */
    static const char ms_digits2[201] =
        "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
        "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
        "8081828384858687888990919293949596979899";
    static const uint64_t ms_pow10_64[20] = {
        1ULL, 10ULL, 100ULL, 1000ULL, 10000ULL, 100000ULL, 1000000ULL, 10000000ULL,
        100000000ULL, 1000000000ULL, 10000000000ULL, 100000000000ULL, 1000000000000ULL,
        10000000000000ULL, 100000000000000ULL, 1000000000000000ULL, 10000000000000000ULL,
        100000000000000000ULL, 1000000000000000000ULL, 10000000000000000000ULL};

    /* Number of decimal digits of v (1 for 0). */
    static inline int ms_u64_len(uint64_t v) {
        int bits = 64 - __builtin_clzll(v | 1);
        int t = (bits * 1233) >> 12;
        int n = t - (v < ms_pow10_64[t]) + 1;
        return n < 1 ? 1 : n;
    }
    /* Exactly n digits of v (v < 10**n), zero padded, into p[0..n). */
    static inline void ms_write_digits(unsigned char *p, uint64_t v, int n) {
        unsigned char *q = p + n;
        while (n >= 2) {
            uint64_t r = v % 100; v /= 100; q -= 2; memcpy(q, ms_digits2 + 2 * r, 2); n -= 2;
        }
        if (n) q[-1] = (unsigned char)('0' + v % 10);
    }
    static inline unsigned char *ms_put_u64(unsigned char *p, uint64_t v) {
        int n = ms_u64_len(v);
        ms_write_digits(p, v, n);
        return p + n;
    }
    /* m split at 10**scale with a constant divisor per case (a multiply, not a divide). */
    #define MS_SPLIT_CASE(k) case k: *ip = m / ms_pow10_64[k]; break;
    static inline void ms_split(uint64_t m, int scale, uint64_t *ip, uint64_t *fp) {
        switch (scale) {
            MS_SPLIT_CASE(1) MS_SPLIT_CASE(2) MS_SPLIT_CASE(3) MS_SPLIT_CASE(4)
            MS_SPLIT_CASE(5) MS_SPLIT_CASE(6) MS_SPLIT_CASE(7) MS_SPLIT_CASE(8)
            MS_SPLIT_CASE(9) MS_SPLIT_CASE(10) MS_SPLIT_CASE(11) MS_SPLIT_CASE(12)
            MS_SPLIT_CASE(13) MS_SPLIT_CASE(14) MS_SPLIT_CASE(15) MS_SPLIT_CASE(16)
            MS_SPLIT_CASE(17) MS_SPLIT_CASE(18) MS_SPLIT_CASE(19)
            default: *ip = m; break;
        }
        *fp = m - *ip * (scale >= 1 && scale <= 19 ? ms_pow10_64[scale] : 1);
    }
    /* |value| < 2**64 and scale <= 19: "[-]int.frac" with exactly `scale` fraction digits. */
    static inline unsigned char *ms_put_decimal64(unsigned char *p, uint64_t m, int neg,
                                                  int scale) {
        uint64_t ip, fp;
        if (neg) *p++ = '-';
        if (scale == 0) return ms_put_u64(p, m);
        ms_split(m, scale, &ip, &fp);
        p = ms_put_u64(p, ip);
        *p++ = '.';
        ms_write_digits(p, fp, scale);
        return p + scale;
    }
    """
    ctypedef struct ms_u128:
        pass
    void ms_put16(uint8_t* p, uint16_t v) noexcept nogil
    void ms_put32(uint8_t* p, uint32_t v) noexcept nogil
    void ms_put64(uint8_t* p, uint64_t v) noexcept nogil
    uint16_t ms_get16(const uint8_t* p) noexcept nogil
    uint32_t ms_get32(const uint8_t* p) noexcept nogil
    uint64_t ms_get64(const uint8_t* p) noexcept nogil
    uint64_t ms_load64(const uint8_t* p) noexcept nogil
    void ms_store64(uint8_t* p, uint64_t v) noexcept nogil
    ms_u128 ms_dec_abs(const uint8_t* p, int* neg) noexcept nogil
    bint ms_u128_fits64(ms_u128 v) noexcept nogil
    uint64_t ms_u128_lo(ms_u128 v) noexcept nogil
    ms_u128 ms_u128_from64(uint64_t v) noexcept nogil
    ms_u128 ms_u128_pow10(int n) noexcept nogil
    uint32_t ms_u128_divmod(ms_u128* v, uint32_t d) noexcept nogil
    void ms_dec_store(uint8_t* p, ms_u128 v, int neg) noexcept nogil
    bint ms_u128_muladd(ms_u128* acc, uint32_t m, uint32_t a) noexcept nogil
    void ms_prefetch(const void* p) noexcept nogil
    void ms_hugepage_hint(void* p, size_t n) noexcept nogil
    bint ms_u128_ge(ms_u128 a, ms_u128 b) noexcept nogil
    bint ms_u128_is0(ms_u128 a) noexcept nogil
    uint8_t* ms_put_u64(uint8_t* p, uint64_t v) noexcept nogil
    int ms_u64_len(uint64_t v) noexcept nogil
    uint8_t* ms_put_decimal64(uint8_t* p, uint64_t m, int neg, int scale) noexcept nogil


# The Arrow C data interface (https://arrow.apache.org/docs/format/CDataInterface.html).
cdef struct ArrowSchema:
    const char* format
    const char* name
    const char* metadata
    int64_t flags
    int64_t n_children
    ArrowSchema** children
    ArrowSchema* dictionary
    void (*release)(ArrowSchema*) noexcept nogil
    void* private_data

cdef struct ArrowArray:
    int64_t length
    int64_t null_count
    int64_t offset
    int64_t n_buffers
    int64_t n_children
    const void** buffers
    ArrowArray** children
    ArrowArray* dictionary
    void (*release)(ArrowArray*) noexcept nogil
    void* private_data


# Column kinds: the same numbers as metersync.codec._types.KIND_*.
cdef enum:
    KIND_UUID = 1
    KIND_INT16 = 2
    KIND_INT32 = 3
    KIND_INT64 = 4
    KIND_FLOAT32 = 5
    KIND_FLOAT64 = 6
    KIND_BOOL = 7
    KIND_STRING = 8
    KIND_LARGE_STRING = 9
    KIND_DATE = 10
    KIND_TIMESTAMP = 11
    KIND_DECIMAL = 12
    KIND_NUMERIC = 13

# Value error codes: the same numbers as metersync.codec._types.ERR_*.
cdef enum:
    ERR_NUL = 1
    ERR_UTF8 = 2
    ERR_FLOAT = 3
    ERR_YEAR = 4
    ERR_PRECISION = 5
    ERR_RANGE = 6
    ERR_NUMERIC_SYNTAX = 7
    ERR_NUMERIC_RANGE = 8


cdef struct Col:
    # One input column as the hot loops see it: raw Arrow pointers and encoding parameters.
    int kind
    int scale
    int precision
    int max_groups          # base-10000 digits a value of this decimal can need
    bint tz
    int64_t offset          # index of row 0 in the child's buffers (child + parent offset)
    const uint8_t* validity # NULL when the column has no nulls
    const uint8_t* data     # values; offsets for strings
    const uint8_t* chars    # string bytes
    const char* key         # JSON '"name":'
    Py_ssize_t key_len
    ms_u128 limit           # 10**precision for decimals


cdef struct Failure:
    # First bad value found by a nogil loop (code 0: none).
    int code
    Py_ssize_t col
    int64_t row


# Decoding binary COPY output: error codes (texts in _copy_reader.pxi's _DECODE_TEXT).
cdef enum:
    D_TRUNCATED = 1
    D_SIGNATURE
    D_OIDS
    D_FLAGS
    D_EXTENSION
    D_FIELD_COUNT
    D_NEGATIVE_LENGTH
    D_WIDTH
    D_NUMERIC_SHAPE
    D_NUMERIC_SPECIAL
    D_NUMERIC_DIGIT
    D_NUMERIC_FIT
    D_NUMERIC_FRACTION
    D_DATE
    D_TIMESTAMP
    D_TRAILING
    D_TEXT_SIZE
    D_TEXT_UTF8
    D_NUMERIC_SIGN
    D_NUMERIC_DSCALE


cdef struct DCol:
    # One output column of the COPY reader: the Arrow buffers it fills.
    int kind
    int scale
    int width             # exact field length of fixed-width kinds, 0 for text/numeric
    ms_u128 limit         # 10**precision
    int64_t text_bytes    # pass 1: total text bytes
    int64_t nulls
    uint8_t* validity
    uint8_t* data         # values, or offsets for text
    uint8_t* chars


cdef struct DFail:
    # First malformed field found by a nogil decode loop (code 0: none).
    int code
    int64_t pos
    Py_ssize_t col
    int64_t value


cdef inline bint _dfail(DFail* f, int code, int64_t pos, Py_ssize_t col, int64_t value) noexcept nogil:
    f.code = code
    f.pos = pos
    f.col = col
    f.value = value
    return False


# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Cython core of the metersync codec: Arrow record batches <-> PostgreSQL binary COPY, and the
canonical JSON upload body.

Arrow memory is read through the Arrow C data interface (``__arrow_c_array__`` capsules), so this
module links nothing but libc. Every encoder works in three steps: validate column by column
(the same order as the pure-Python twin, so both report the same first bad value), compute a
tight upper bound of the output size, then write rows with raw pointers in a ``nogil`` loop into
one pre-sized ``bytes`` object that is shrunk to its final length.

Layout (one extension module, one C translation unit; like asyncpg's pgproto, one file per type
family, textually included so the compiler still inlines every codec into the row loops):

- ``_batch.pxd``: C declarations (Arrow C data interface structs, ``Col``/``DCol``, kind and error
  codes, big-endian and 128-bit helpers);
- ``_consts.pxi``: epochs, ranges, lookup tables;
- ``_arrow.pxi``: exporting a batch through the C data interface, the column plan cache;
- ``_buffer.pxi``: the output buffer and scratch pool;
- ``codecs/{text,uuid,int,float,bool,datetime,numeric}.pxi``: per type family, its validation,
  COPY field, JSON value and COPY decoding; ``codecs/plain_numeric.pxi`` the same for plain
  ``numeric`` text, with ``codecs/numeric_text.pxi`` its literal parser (shared with _page.pyx);
- ``_copy_writer.pxi``, ``_json_writer.pxi``, ``_copy_reader.pxi``: the row loops and the
  public functions.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_FromStringAndSize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.pycapsule cimport PyCapsule_GetPointer
from cpython.ref cimport PyObject, Py_XDECREF
from libc.math cimport isfinite
from libc.stdint cimport int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, qsort
from libc.string cimport memchr, memcmp, memcpy, memset, strcmp, strncmp

import pyarrow as pa

from metersync.codec import _types
from metersync.errors import CodecTypeError, CodecValueError

__all__ = [
    "copy_binary", "from_copy_binary", "json_row_sizes", "json_rows", "split_by_body_size",
    "uuid_array_binary", "sorted_uuid_bytes",
]


cdef extern from "Python.h":
    PyObject* _bytes_new "PyBytes_FromStringAndSize"(const char* s, Py_ssize_t n)
    int _PyBytes_Resize(PyObject** b, Py_ssize_t n)
    char* PyOS_double_to_string(double val, char format_code, int precision, int flags,
                                int* ptype)
    void PyMem_Free(void* p)
    int Py_DTSF_ADD_DOT_0


cdef extern from "stdint.h":
    int64_t INT64_MIN_ "INT64_MIN"
    int64_t INT64_MAX_ "INT64_MAX"
    int32_t INT32_MIN_ "INT32_MIN"
    int32_t INT32_MAX_ "INT32_MAX"

cdef extern from "string.h":
    int memcmp_ "memcmp"(const void* a, const void* b, size_t n) nogil
    size_t strlen(const char* s) nogil




include "_consts.pxi"
include "_arrow.pxi"
include "_buffer.pxi"

include "codecs/text.pxi"
include "codecs/uuid.pxi"
include "codecs/int.pxi"
include "codecs/float.pxi"
include "codecs/bool.pxi"
include "codecs/datetime.pxi"
include "codecs/numeric.pxi"
include "codecs/numeric_text.pxi"
include "codecs/plain_numeric.pxi"

include "_copy_writer.pxi"
include "_json_writer.pxi"
include "_copy_reader.pxi"

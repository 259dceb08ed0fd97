"""Build the Cython core: `metersync.codec._batch` (COPY and JSON encoders) and
`metersync.codec._page` (download page JSON → Arrow), and the store's `metersync.store._copy_rows`
(a COPY OUT's rows from libpq's buffer).

The extension reads Arrow memory through the Arrow C data interface (PyCapsules) and the buffer
protocol, so it links nothing but libc: no libarrow, no pyarrow headers.

Environment switches (like asyncpg's):
- METERSYNC_DEBUG=1   bounds checks, line tracing and an annotated HTML next to the .pyx.
- METERSYNC_NO_EXT=1  skip the extension (pure-Python twin only).
"""

import os

from setuptools import Extension, setup

debug = os.environ.get("METERSYNC_DEBUG") == "1"

ext_modules = []
if os.environ.get("METERSYNC_NO_EXT") != "1":
    from Cython.Build import cythonize

    directives = {
        "language_level": "3",
        "boundscheck": debug,
        "wraparound": debug,
        "cdivision": True,
        "initializedcheck": debug,
        "linetrace": debug,
        "embedsignature": True,
    }
    ext_modules = cythonize(
        [
            Extension(
                "metersync.codec._batch",
                ["src/metersync/codec/_batch.pyx"],
                extra_compile_args=["-O3"] if not debug else ["-O0", "-g"],
                define_macros=[("CYTHON_TRACE_NOGIL", "1")] if debug else [],
            ),
            Extension(
                "metersync.codec._page",
                ["src/metersync/codec/_page.pyx"],
                extra_compile_args=["-O3"] if not debug else ["-O0", "-g"],
                define_macros=[("CYTHON_TRACE_NOGIL", "1")] if debug else [],
            ),
            # The store's COPY OUT row gatherer: calls psycopg's own libpq through addresses
            # found at run time (metersync.store.copy_rows), so it links nothing either.
            Extension(
                "metersync.store._copy_rows",
                ["src/metersync/store/_copy_rows.pyx"],
                extra_compile_args=["-O3"] if not debug else ["-O0", "-g"],
                define_macros=[("CYTHON_TRACE_NOGIL", "1")] if debug else [],
            ),
        ],
        compiler_directives=directives,
        annotate=debug,
    )

setup(ext_modules=ext_modules)

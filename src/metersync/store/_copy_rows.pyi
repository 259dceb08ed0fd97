"""Type stub of the compiled COPY OUT row gatherer (same surface as
metersync.store.copy_rows.PyCopyRows, plus the libpq binding)."""

from typing import Any

def bind(get_copy_data: int, free_mem: int, consume_input: int) -> None:
    """Use these addresses of libpq's ``PQgetCopyData``, ``PQfreemem`` and
    ``PQconsumeInput``."""

def bound() -> bool:
    """Whether :func:`bind` was called."""

class CopyRows:
    """The rows of one COPY OUT, in order, as one contiguous read-only buffer."""

    @property
    def rows(self) -> int:
        """How many COPY data messages (rows) were taken."""

    def __len__(self) -> int: ...
    def drain(self, pgconn: Any) -> int:
        """Take every complete row libpq holds: ``0`` read more, ``-1`` done, ``-2`` failed."""

    def read_to_end(self, pgconn: Any, fd: int, stop: Any, slice_ms: int = 50) -> int:
        """Take rows until the COPY is over, waiting without the GIL: ``-1`` done, ``-2``
        failed, ``-3`` stopped (``stop.is_set()``, asked every ``slice_ms``)."""

    def data(self) -> memoryview:
        """Every row taken, in order: a read-only view of the buffer (no copy)."""

    def __buffer__(self, flags: int, /) -> memoryview: ...

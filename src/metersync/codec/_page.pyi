"""Type stub of the compiled page parser (same surface as metersync.codec._page_py)."""

from collections.abc import Collection

import pyarrow as pa

#: The kind and code constants of _page.pyx (a test holds them to _page_py and _types).
CODES: dict[str, int]

def parse_page(
    body: bytes | bytearray | memoryview,
    schema: pa.Schema | None,
    *,
    tenant_id: int | None,
    limit: int,
    unknown_fields: Collection[str] | str | None = None,
) -> tuple[pa.RecordBatch, str | None]:
    """Parse and validate one download page: ``(readings as a batch of schema, next_cursor)``."""

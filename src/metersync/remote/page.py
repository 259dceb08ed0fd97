"""Download pages: the Client System's JSON page → a validated Arrow record batch, in one pass.

A page is trusted for nothing. Before a single row is written (spec §5) the page must be a JSON
object with a ``readings`` array of at most ``limit`` objects and a ``next_cursor``; every
reading must hold only columns of our ``meter_reading`` (plus an optional ``tenant_id`` that
must be ours), the key fields present and not null, every value of its column's type and range,
and no id twice. Any problem is a :class:`~metersync.errors.MalformedPageError` naming the byte,
or the reading (index and id) and field, and what is wrong; nothing is returned in part.

Unknown fields are an error unless the caller allows dropping them (``unknown_fields``: some
names, or ``"all"``): a field we do not store is data we would silently drop, and a renamed
column on either side should stop the download loudly rather than lose a column.

Numbers arrive exact: the parser builds each ``numeric(p,s)`` value from its digits as a
decimal128 integer (never through a float, which holds 15–17 significant digits against
``numeric(18,4)``'s 18), and refuses a value with more than ``s`` decimal places or out of range.

The work is done by the compiled core ``metersync.codec._page`` or its pure-Python twin
``metersync.codec._page_py`` (same rule as the codec: ``METERSYNC_IMPL``); both return equal
batches and raise the same errors for the same bytes.
"""

from __future__ import annotations

import re
from collections.abc import Collection

import pyarrow as pa

from metersync.codec._impl import page_module
from metersync.codec._page_py import REQUIRED_FIELDS

__all__ = ["REQUIRED_FIELDS", "parse_page", "peek_page"]

#: A page that ends with its cursor: ``..., "next_cursor": "<token>"}`` or ``null``.
_CURSOR_AT_END = re.compile(rb'"next_cursor"\s*:\s*(?:"([A-Za-z0-9_\-.~+/=:]*)"|null)\s*}\s*$')
_ID_KEY = b'"meter_reading_id"'


def parse_page(
    body: bytes,
    schema: pa.Schema | None,
    *,
    tenant_id: int | None,
    limit: int,
    unknown_fields: Collection[str] | str | None = None,
) -> tuple[pa.RecordBatch, str | None]:
    """Parse and validate one download page: ``(readings as a batch of schema, next_cursor)``.

    ``schema``: the layout's upload schema (column order and Arrow types; missing nullable
    fields become null); ``tenant_id``: the tenant whose key fetched the page (None: any);
    ``limit``: the page size asked for (a longer page is refused); ``unknown_fields``: None
    refuses fields that are not columns, ``"all"`` drops them, a collection of names drops
    those. ``schema=None`` checks only the page's shape and returns a batch without columns.

    Raises :class:`~metersync.errors.MalformedPageError`; ``TypeError`` for a schema without
    the key columns or with a type that has no JSON form.
    """
    return page_module.parse_page(
        body, schema, tenant_id=tenant_id, limit=limit, unknown_fields=unknown_fields
    )


def peek_page(body: bytes) -> tuple[str | None, int] | None:
    """A HINT read from a page's bytes without parsing it: ``(next_cursor, readings)`` -- the
    cursor when the page ends with it (a plain token or ``null``), and how many readings it
    seems to hold (occurrences of ``"meter_reading_id"``) -- or ``None`` when the page does
    not end with its cursor. Only :func:`parse_page` decides what a page says; the engine uses
    the hint to ask for the next page early, and drops that request when the parse disagrees.
    """
    match = _CURSOR_AT_END.search(body, max(0, len(body) - 1024))
    if match is None:
        return None
    token = match.group(1)
    return (None if token is None else token.decode("ascii")), body.count(_ID_KEY)

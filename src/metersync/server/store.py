"""PostgreSQL storage of the reference Client System: its schema and every SQL statement it runs.

Readings are stored with their identity columns as columns and every other field in one
``measurements`` text column: the JSON object text the client sent, so what comes down is what
went up (``12.5000`` stays ``12.5000``; no jsonb is built or rebuilt, which cost more than
everything else together). The handler validates the values (orjson-parsed) and hands over the
exact texts; a batch is one COPY into a per-connection temp table and one
``INSERT ... SELECT ... ON CONFLICT DO NOTHING RETURNING``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from psycopg import AsyncConnection
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool

# Serializes schema creation when several servers start on one database at once
# (CREATE TABLE IF NOT EXISTS is not safe against a concurrent twin).
_SCHEMA_LOCK_KEY = 0x6D735F6373  # "ms_cs"

# Above this many stored readings, reset() truncates instead of deleting.
_RESET_TRUNCATE_ROWS = 20_000

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS cs_tenant (
    tenant_id bigint PRIMARY KEY,
    api_key_sha256 text UNIQUE NOT NULL,
    name text
);
CREATE TABLE IF NOT EXISTS cs_meter_reading (
    seq bigserial,
    meter_reading_id uuid PRIMARY KEY,
    tenant_id bigint NOT NULL,
    created_at timestamptz NOT NULL,
    meter_id bigint NOT NULL,
    meter_element_id bigint,
    measurements text NOT NULL,
    received_at timestamptz DEFAULT now(),
    site_id text
);
CREATE INDEX IF NOT EXISTS cs_meter_reading_tenant_seq ON cs_meter_reading (tenant_id, seq);
-- The site (X-Metersync-Site) whose upload stored the reading: downloads may exclude it.
ALTER TABLE cs_meter_reading ADD COLUMN IF NOT EXISTS site_id text;
DO $$
BEGIN
    -- A database made by an older server stored jsonb: its text keeps every number's digits.
    IF (SELECT atttypid = 'jsonb'::regtype FROM pg_attribute
        WHERE attrelid = 'cs_meter_reading'::regclass AND attname = 'measurements') THEN
        ALTER TABLE cs_meter_reading ALTER COLUMN measurements TYPE text USING measurements::text;
    END IF;
END $$;
"""

# Per connection (made once, by the pool's configure hook): the batch's readings are COPYed
# here, then moved into cs_meter_reading by one statement. Emptied by every commit.
STAGING_SQL = """
CREATE TEMP TABLE IF NOT EXISTS cs_staging (
    ord int NOT NULL,
    meter_reading_id uuid NOT NULL,
    created_at timestamptz NOT NULL,
    meter_id bigint NOT NULL,
    meter_element_id bigint,
    measurements text NOT NULL
) ON COMMIT DELETE ROWS
"""

COPY_STAGING_SQL = (
    "COPY cs_staging (ord, meter_reading_id, created_at, meter_id, meter_element_id,"
    " measurements) FROM STDIN (FORMAT binary)"
)

UPSERT_TENANT_SQL = """
INSERT INTO cs_tenant (tenant_id, api_key_sha256, name) VALUES (%s, %s, %s)
ON CONFLICT (tenant_id) DO UPDATE
    SET api_key_sha256 = EXCLUDED.api_key_sha256, name = EXCLUDED.name
"""

TENANT_FOR_KEY_SQL = "SELECT tenant_id FROM cs_tenant WHERE api_key_sha256 = %s"

# One set-based statement per batch, in batch order (seq follows it); duplicates are skipped
# by ON CONFLICT and told apart by what comes back.
INSERT_BATCH_SQL = """
INSERT INTO cs_meter_reading
    (meter_reading_id, tenant_id, created_at, meter_id, meter_element_id, measurements, site_id)
SELECT meter_reading_id, %s, created_at, meter_id, meter_element_id, measurements, %s
FROM cs_staging ORDER BY ord
ON CONFLICT (meter_reading_id) DO NOTHING
RETURNING meter_reading_id::text
"""

# The readings not inserted: who holds them. A later statement of the same transaction sees
# what concurrent batches committed (ON CONFLICT waited for them).
OWNERS_SQL = """
SELECT meter_reading_id::text, tenant_id FROM cs_meter_reading
WHERE meter_reading_id = ANY(%s::uuid[])
"""

# The inner query picks the page first, so the costly text is built for those rows only,
# whatever plan the inner query gets (before ANALYZE, a sort plan would build it for every row).
# Python glues the identity fields in front of the stored measurements' text.
PAGE_SQL = """
SELECT seq, meter_reading_id::text,
       to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
       meter_id, meter_element_id, tenant_id, measurements
FROM (
    SELECT * FROM cs_meter_reading
    WHERE tenant_id = %s AND seq > %s
    ORDER BY seq
    LIMIT %s
) AS page
ORDER BY seq
"""

# With exclude_site: the page of readings stored by other sites (or by none), and, in the same
# snapshot, the highest seq after the cursor whatever its site, so that a short page's cursor
# moves past the excluded readings too (else every download would scan them again).
PAGE_EXCLUDING_SITE_SQL = """
WITH top AS (
    SELECT max(seq) AS top FROM cs_meter_reading WHERE tenant_id = %(tenant)s AND seq > %(after)s
), page AS (
    SELECT * FROM cs_meter_reading
    WHERE tenant_id = %(tenant)s AND seq > %(after)s AND site_id IS DISTINCT FROM %(site)s
    ORDER BY seq
    LIMIT %(limit)s
)
SELECT top.top, page.seq, page.meter_reading_id::text,
       to_char(page.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
       page.meter_id, page.meter_element_id, page.tenant_id, page.measurements
FROM top LEFT JOIN page ON true
ORDER BY page.seq
"""

ROWS_PER_TENANT_SQL = (
    "SELECT tenant_id, count(*) FROM cs_meter_reading GROUP BY tenant_id ORDER BY tenant_id"
)


class StagedReading(NamedTuple):
    """A validated reading ready for the batch insert (``ord`` is its 1-based position)."""

    ord: int
    meter_reading_id: str
    created_at: str  # ISO 8601 with an offset (validated)
    meter_id: int
    meter_element_id: int | None
    measurements: bytes  # JSON object text, numbers as uploaded


# Binary COPY: PostgreSQL reads lengths and fixed-width values instead of scanning every byte
# of the ~1.2 KB text per reading for delimiters and escapes (about half the COPY time).
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8  # signature, flags, no extension
_COPY_TRAILER = b"\xff\xff"
# Field count (6), then length and value of ord, meter_reading_id, created_at, meter_id.
_ROW_HEAD = struct.Struct("!hiii16siqiq")
_INT8_FIELD = struct.Struct("!iq")
_LENGTH = struct.Struct("!i")
_NULL_FIELD = b"\xff\xff\xff\xff"
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def copy_rows(rows: Iterable[StagedReading]) -> bytes:
    """The binary COPY tuples of ``rows`` (no header or trailer)."""
    out = []
    for r in rows:
        created = datetime.fromisoformat(r.created_at.replace("Z", "+00:00"))
        out.append(
            _ROW_HEAD.pack(
                6,
                4,
                r.ord,
                16,
                bytes.fromhex(r.meter_reading_id.replace("-", "")),
                8,
                (created - _PG_EPOCH) // _MICROSECOND,
                8,
                r.meter_id,
            )
        )
        element = r.meter_element_id
        out.append(_NULL_FIELD if element is None else _INT8_FIELD.pack(8, element))
        out.append(_LENGTH.pack(len(r.measurements)))
        out.append(r.measurements)
    return b"".join(out)


def copy_data(rows: Iterable[StagedReading]) -> bytes:
    """The whole binary COPY stream of ``rows`` for :data:`COPY_STAGING_SQL`."""
    return _COPY_HEADER + copy_rows(rows) + _COPY_TRAILER


async def open_with_schema(pool: AsyncConnectionPool, lock_key: int, schema_sql: str) -> None:
    """Open ``pool`` and run ``schema_sql`` (idempotent DDL) under the advisory lock
    ``lock_key``, so that servers starting together over one database take turns."""
    await pool.open(wait=True)
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key,))
        await conn.execute(schema_sql)


async def _configure(conn: AsyncConnection) -> None:
    # This server is a test double: losing the last few hundred ms of commits on a crash of
    # its own PostgreSQL is acceptable, waiting for the WAL flush on every batch is not.
    await conn.execute("SET synchronous_commit = off")
    await conn.execute(STAGING_SQL)
    await conn.commit()


@dataclass(frozen=True)
class RowOutcome:
    """What the batch insert did with one reading (``ord`` is its 1-based position)."""

    ord: int
    inserted: bool
    owner: int | None  # tenant holding the id when not inserted (None: unknown)


def _page_text(
    seq: int,
    rid: str,
    created: str,
    meter: int,
    element: int | None,
    tenant: int,
    measurements: str,
) -> tuple[int, str]:
    """(seq, JSON text) of one stored reading: identity fields glued before its measurements."""
    head = (
        f'{{"meter_reading_id":"{rid}","created_at":"{created}","meter_id":{meter},'
        f'"meter_element_id":{"null" if element is None else element},'
        f'"tenant_id":{tenant}'
    )
    tail = "}" if measurements == "{}" else "," + measurements[1:]
    return int(seq), head + tail


class Store:
    """The reference server's database, through a connection pool."""

    def __init__(self, dsn: str, *, min_size: int = 1, max_size: int = 8) -> None:
        self._pool = AsyncConnectionPool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            open=False,
            name="metersync-cs",
            configure=_configure,
        )

    async def open(self) -> None:
        """Open the pool and create the schema (idempotent)."""
        await open_with_schema(self._pool, _SCHEMA_LOCK_KEY, SCHEMA_SQL)

    async def close(self) -> None:
        """Close every pooled connection."""
        await self._pool.close()

    async def upsert_tenant(self, tenant_id: int, key_sha256: str, name: str | None) -> None:
        """Register or replace a tenant (raises psycopg UniqueViolation if the key is taken)."""
        async with self._pool.connection() as conn:
            await conn.execute(UPSERT_TENANT_SQL, (tenant_id, key_sha256, name))

    async def tenant_for_key(self, key_sha256: str) -> int | None:
        """The tenant whose API key hashes to ``key_sha256``, if any."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(TENANT_FOR_KEY_SQL, (key_sha256,))
            row = await cur.fetchone()
        return None if row is None else int(row[0])

    async def insert_batch(
        self, tenant_id: int, rows: Sequence[StagedReading], site_id: str | None = None
    ) -> list[RowOutcome]:
        """Insert ``rows`` (distinct lowercase ids) for ``tenant_id``, uploaded by ``site_id``:
        one binary COPY into the staging table, then one INSERT ... SELECT ... ON CONFLICT DO
        NOTHING."""
        if not rows:
            return []
        async with self._pool.connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=tuple_row)
            async with cur.copy(COPY_STAGING_SQL) as copy:
                await copy.write(copy_data(rows))
            await cur.execute(INSERT_BATCH_SQL, (tenant_id, site_id))
            inserted = {rid for (rid,) in await cur.fetchall()}
            missed = [r.meter_reading_id for r in rows if r.meter_reading_id not in inserted]
            owners: dict[str, int] = {}
            if missed:
                await cur.execute(OWNERS_SQL, (missed,))
                owners = {rid: int(t) for rid, t in await cur.fetchall()}
        return [
            RowOutcome(r.ord, True, None)
            if r.meter_reading_id in inserted
            else RowOutcome(r.ord, False, owners.get(r.meter_reading_id))
            for r in rows
        ]

    async def page(self, tenant_id: int, after_seq: int, limit: int) -> list[tuple[int, str]]:
        """Up to ``limit`` readings of the tenant after ``after_seq``: (seq, JSON text)."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(PAGE_SQL, (tenant_id, after_seq, limit))
            rows = await cur.fetchall()
        return [_page_text(*row) for row in rows]

    async def page_excluding_site(
        self, tenant_id: int, after_seq: int, limit: int, site_id: str
    ) -> tuple[list[tuple[int, str]], int | None]:
        """Like :meth:`page`, without the readings uploaded by ``site_id``; also the highest
        seq after ``after_seq`` (any site; None when there is none), from the same snapshot."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                PAGE_EXCLUDING_SITE_SQL,
                {"tenant": tenant_id, "after": after_seq, "limit": limit, "site": site_id},
            )
            rows = await cur.fetchall()
        top = rows[0][0] if rows else None
        page = [_page_text(*row[1:]) for row in rows if row[1] is not None]
        return page, None if top is None else int(top)

    async def reset(self) -> None:
        """Delete every tenant and reading (tests: a clean server without a restart)."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT count(*) FROM (SELECT 1 FROM cs_meter_reading LIMIT %s) AS s",
                (_RESET_TRUNCATE_ROWS,),
            )
            row = await cur.fetchone()
            if row is not None and row[0] >= _RESET_TRUNCATE_ROWS:
                await conn.execute("TRUNCATE cs_meter_reading, cs_tenant")
            else:
                # TRUNCATE makes new files and syncs them (~0.3 s here); for the few rows a
                # test leaves behind, DELETE takes milliseconds.
                await conn.execute("DELETE FROM cs_meter_reading")
                await conn.execute("DELETE FROM cs_tenant")

    async def rows_per_tenant(self) -> dict[int, int]:
        """Stored readings per tenant."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(ROWS_PER_TENANT_SQL)
            return {int(t): int(n) for t, n in await cur.fetchall()}

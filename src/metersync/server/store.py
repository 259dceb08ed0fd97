"""PostgreSQL storage of the reference Client System: its schema and every SQL statement it runs.

Readings are stored with their identity columns as columns and every other field in one
``measurements`` jsonb object. jsonb keeps a number's text (``12.5000`` stays ``12.5000``), so
what comes down is what went up. The batch insert works on the request body itself, parsed by
PostgreSQL (never re-serialized by Python, which would turn ``12.5000`` into ``12.5``): the
handler validates the readings and passes the ordinals of the good ones.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    measurements jsonb NOT NULL,
    received_at timestamptz DEFAULT now()
);
CREATE INDEX IF NOT EXISTS cs_meter_reading_tenant_seq ON cs_meter_reading (tenant_id, seq);
"""

UPSERT_TENANT_SQL = """
INSERT INTO cs_tenant (tenant_id, api_key_sha256, name) VALUES (%s, %s, %s)
ON CONFLICT (tenant_id) DO UPDATE
    SET api_key_sha256 = EXCLUDED.api_key_sha256, name = EXCLUDED.name
"""

TENANT_FOR_KEY_SQL = "SELECT tenant_id FROM cs_tenant WHERE api_key_sha256 = %s"

# One statement per batch: the good readings (by ordinal in the body's "readings" array) are
# inserted, duplicates skipped by ON CONFLICT; the outer SELECT reports per reading whether it was
# inserted and, if not, which tenant held the id before (the CTE's snapshot predates the insert).
INSERT_BATCH_SQL = """
WITH input AS (
    SELECT t.ord,
           (t.e->>'meter_reading_id')::uuid AS meter_reading_id,
           (t.e->>'created_at')::timestamptz AS created_at,
           (t.e->>'meter_id')::bigint AS meter_id,
           (t.e->>'meter_element_id')::bigint AS meter_element_id,
           t.e - '{meter_reading_id,created_at,meter_id,meter_element_id,tenant_id}'::text[]
               AS measurements
    FROM jsonb_array_elements(%(body)s::jsonb -> 'readings') WITH ORDINALITY AS t(e, ord)
    JOIN unnest(%(ords)s::bigint[]) AS good(ord) USING (ord)
), ins AS (
    INSERT INTO cs_meter_reading
        (meter_reading_id, tenant_id, created_at, meter_id, meter_element_id, measurements)
    SELECT meter_reading_id, %(tenant_id)s, created_at, meter_id, meter_element_id, measurements
    FROM input ORDER BY ord
    ON CONFLICT (meter_reading_id) DO NOTHING
    RETURNING meter_reading_id
)
SELECT input.ord, ins.meter_reading_id IS NOT NULL, prior.tenant_id
FROM input
LEFT JOIN ins USING (meter_reading_id)
LEFT JOIN cs_meter_reading AS prior USING (meter_reading_id)
"""

# Rare path: a reading neither inserted nor visible before the insert was committed by a
# concurrent request; a fresh snapshot says whose it is.
OWNERS_SQL = """
SELECT meter_reading_id::text, tenant_id FROM cs_meter_reading
WHERE meter_reading_id = ANY(%s::uuid[])
"""

# The inner query picks the page first, so the costly text is built for those rows only,
# whatever plan the inner query gets (before ANALYZE, a sort plan would build it for every row).
# Python glues the identity fields in front of the measurements' text: half the cost of
# re-serializing a merged jsonb per row.
PAGE_SQL = """
SELECT seq, meter_reading_id::text,
       to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
       meter_id, meter_element_id, tenant_id, measurements::text
FROM (
    SELECT * FROM cs_meter_reading
    WHERE tenant_id = %s AND seq > %s
    ORDER BY seq
    LIMIT %s
) AS page
ORDER BY seq
"""

ROWS_PER_TENANT_SQL = (
    "SELECT tenant_id, count(*) FROM cs_meter_reading GROUP BY tenant_id ORDER BY tenant_id"
)


@dataclass(frozen=True)
class RowOutcome:
    """What the batch insert did with one reading (``ord`` is its 1-based position)."""

    ord: int
    inserted: bool
    owner: int | None  # tenant holding the id when not inserted (None: unknown)


class Store:
    """The reference server's database, through a connection pool."""

    def __init__(self, dsn: str, *, min_size: int = 1, max_size: int = 8) -> None:
        self._pool = AsyncConnectionPool(
            dsn, min_size=min_size, max_size=max_size, open=False, name="metersync-cs"
        )

    async def open(self) -> None:
        """Open the pool and create the schema (idempotent)."""
        await self._pool.open(wait=True)
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_KEY,))
            await conn.execute(SCHEMA_SQL)

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

    async def insert_batch(self, tenant_id: int, body: str, ords: list[int]) -> list[RowOutcome]:
        """Insert the readings at ``ords`` of the body's ``readings`` array for ``tenant_id``."""
        if not ords:
            return []
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=tuple_row)
            await cur.execute(
                INSERT_BATCH_SQL, {"body": body, "ords": ords, "tenant_id": tenant_id}
            )
            rows = await cur.fetchall()
            outcomes = [RowOutcome(int(o), bool(ins), owner) for o, ins, owner in rows]
            unknown = [o.ord for o in outcomes if not o.inserted and o.owner is None]
            if unknown:
                outcomes = await self._resolve_owners(cur, body, outcomes, set(unknown))
        return outcomes

    async def _resolve_owners(
        self, cur, body: str, outcomes: list[RowOutcome], unknown: set[int]
    ) -> list[RowOutcome]:
        await cur.execute(
            "SELECT t.ord, (t.e->>'meter_reading_id')::uuid::text"
            " FROM jsonb_array_elements(%s::jsonb -> 'readings') WITH ORDINALITY AS t(e, ord)"
            " WHERE t.ord = ANY(%s::bigint[])",
            (body, sorted(unknown)),
        )
        ids = {int(o): i for o, i in await cur.fetchall()}
        await cur.execute(OWNERS_SQL, (list(ids.values()),))
        owners = {i: int(t) for i, t in await cur.fetchall()}
        return [
            RowOutcome(o.ord, o.inserted, owners.get(ids[o.ord])) if o.ord in unknown else o
            for o in outcomes
        ]

    async def page(self, tenant_id: int, after_seq: int, limit: int) -> list[tuple[int, str]]:
        """Up to ``limit`` readings of the tenant after ``after_seq``: (seq, JSON text)."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(PAGE_SQL, (tenant_id, after_seq, limit))
            rows = await cur.fetchall()
        page = []
        for seq, rid, created, meter, element, tenant, measurements in rows:
            head = (
                f'{{"meter_reading_id":"{rid}","created_at":"{created}","meter_id":{meter},'
                f'"meter_element_id":{"null" if element is None else element},'
                f'"tenant_id":{tenant}'
            )
            tail = "}" if measurements == "{}" else "," + measurements[1:]
            page.append((int(seq), head + tail))
        return page

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

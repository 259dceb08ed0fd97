"""PostgreSQL storage of the MeterTrack emulation: the original's table and its pace.

The original stores a batch in one transaction and, per reading, runs a SAVEPOINT, an
``INSERT ... RETURNING``, a verification SELECT and a RELEASE, each one database round trip
after the other. It generates its own ``meter_reading_id`` and stamps ``created_at`` with the
time of arrival; nothing de-duplicates. This store does exactly that. For verification only, it
also keeps in ``sent_meter_reading_id`` the id each reading was sent with, so that tests and the
demo can count copies (the original has no such column).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from metersync.server.metertrack_rules import NUMERIC_FIELDS, pg_text, sent_id
from metersync.server.store import open_with_schema

_SCHEMA_LOCK_KEY = 0x6D745F6373  # "mt_cs"

_MEASUREMENT_DDL = ",\n    ".join(f"{name} numeric(18,4)" for name in NUMERIC_FIELDS[1:])

SCHEMA_SQL = f"""
CREATE TABLE IF NOT EXISTS mt_tenant (
    tenant_id bigint PRIMARY KEY,
    api_key_sha256 text UNIQUE NOT NULL,
    name text,
    active boolean NOT NULL DEFAULT true
);
CREATE TABLE IF NOT EXISTS mt_meter_reading (
    meter_reading_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now(),
    tenant_id bigint NOT NULL,
    meter_id bigint NOT NULL,
    meter_element_id bigint,
    {_MEASUREMENT_DDL},
    sent_meter_reading_id text
);
CREATE INDEX IF NOT EXISTS mt_meter_reading_sent
    ON mt_meter_reading (tenant_id, sent_meter_reading_id);
-- Fault injection: makes one reading's INSERT fail the way a constraint would.
CREATE OR REPLACE FUNCTION mt_injected_reject(meter text, rule text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION
        'new row for relation "meter_reading" violates check constraint "injected_fault"'
        USING ERRCODE = '23514',
              DETAIL = format('meter_id %s rejected by fault rule %s', meter, rule);
END $$;
"""

_COLUMNS = ("tenant_id", "meter_id", *NUMERIC_FIELDS, "sent_meter_reading_id")
INSERT_SQL = (
    f"INSERT INTO mt_meter_reading ({', '.join(_COLUMNS)}) "
    f"VALUES ({', '.join(['%s'] * len(_COLUMNS))}) RETURNING meter_reading_id"
)
VERIFY_SQL = "SELECT meter_reading_id, created_at FROM mt_meter_reading WHERE meter_reading_id = %s"

UPSERT_TENANT_SQL = """
INSERT INTO mt_tenant (tenant_id, api_key_sha256, name, active) VALUES (%s, %s, %s, %s)
ON CONFLICT (tenant_id) DO UPDATE
    SET api_key_sha256 = EXCLUDED.api_key_sha256, name = EXCLUDED.name, active = EXCLUDED.active
"""

STATS_SQL = """
SELECT tenant_id, count(*), count(sent_meter_reading_id),
       count(DISTINCT sent_meter_reading_id)
FROM mt_meter_reading GROUP BY tenant_id ORDER BY tenant_id
"""

COPIES_SQL = """
SELECT sent_meter_reading_id, count(*) FROM mt_meter_reading
WHERE (%(tenant)s::bigint IS NULL OR tenant_id = %(tenant)s)
  AND sent_meter_reading_id IS NOT NULL
  AND (%(ids)s::text[] IS NULL OR sent_meter_reading_id = ANY(%(ids)s::text[]))
GROUP BY sent_meter_reading_id
HAVING count(*) >= %(min)s
ORDER BY sent_meter_reading_id
"""


@dataclass
class BatchOutcome:
    """What storing one batch did: inserted count and the skipped readings' errors."""

    inserted: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)


class TransactionFailed(Exception):
    """The batch's transaction itself failed: nothing of it is stored."""


async def _configure(conn: psycopg.AsyncConnection) -> None:
    await conn.execute("SET synchronous_commit = off")  # a test double, like the reference
    await conn.commit()


class MeterTrackStore:
    """The emulation's database, through a connection pool."""

    def __init__(self, dsn: str, *, max_size: int = 8) -> None:
        self._pool = AsyncConnectionPool(
            dsn,
            min_size=1,
            max_size=max_size,
            open=False,
            name="metersync-mt",
            configure=_configure,
            # A database that is down fails a request in seconds, not after psycopg's 30 s.
            timeout=3.0,
        )

    async def open(self) -> None:
        """Open the pool and create the schema (idempotent)."""
        await open_with_schema(self._pool, _SCHEMA_LOCK_KEY, SCHEMA_SQL)

    async def close(self) -> None:
        """Close every pooled connection."""
        await self._pool.close()

    async def ping(self) -> bool:
        """True when the database answers (``GET /health`` says "Degraded" otherwise)."""
        try:
            async with self._pool.connection(timeout=2.0) as conn:
                await conn.execute("SELECT 1")
        except Exception:  # any failure is "not healthy", by design of a health check
            return False
        return True

    async def upsert_tenant(
        self, tenant_id: int, key_sha256: str, name: str | None, active: bool
    ) -> None:
        """Register or replace a tenant (psycopg UniqueViolation if the key is taken)."""
        async with self._pool.connection() as conn:
            await conn.execute(UPSERT_TENANT_SQL, (tenant_id, key_sha256, name, active))

    async def tenant_for_key(self, key_sha256: str) -> tuple[int, bool] | None:
        """(tenant_id, active) of the key's tenant, if any."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT tenant_id, active FROM mt_tenant WHERE api_key_sha256 = %s", (key_sha256,)
            )
            row = await cur.fetchone()
        return None if row is None else (int(row[0]), bool(row[1]))

    async def store_batch(
        self,
        tenant_id: int,
        readings: Sequence[dict[str, Any]],
        *,
        reject: Callable[[dict[str, Any]], str | None],
        reading_delay: float = 0.0,
    ) -> BatchOutcome:
        """Store a validated batch the original's way (see the module docstring).

        ``reject(reading)`` names the fault rule that makes a reading's INSERT fail, if any.
        Raises :class:`TransactionFailed` when the transaction itself fails.
        """
        outcome = BatchOutcome()
        try:
            async with self._pool.connection() as conn, conn.transaction():
                for reading in readings:
                    if reading_delay:
                        await asyncio.sleep(reading_delay)
                    await self._store_one(conn, tenant_id, reading, reject, outcome)
        except psycopg.Error as exc:
            raise TransactionFailed(str(exc)) from exc
        return outcome

    async def _store_one(
        self,
        conn: psycopg.AsyncConnection,
        tenant_id: int,
        reading: dict[str, Any],
        reject: Callable[[dict[str, Any]], str | None],
        outcome: BatchOutcome,
    ) -> None:
        await conn.execute("SAVEPOINT reading")
        try:
            rule = reject(reading)
            if rule is not None:
                meter = pg_text(reading.get("meter_id"))
                await conn.execute("SELECT mt_injected_reject(%s, %s)", (meter, rule))
            params = [tenant_id, pg_text(reading.get("meter_id"))]
            params += [pg_text(reading.get(name)) for name in NUMERIC_FIELDS]
            params.append(sent_id(reading))
            cur = await conn.execute(INSERT_SQL, params, prepare=False)
            row = await cur.fetchone()
            assert row is not None
            await conn.execute(VERIFY_SQL, (row[0],), prepare=False)
            await conn.execute("RELEASE SAVEPOINT reading")
            outcome.inserted += 1
        except psycopg.errors.DatabaseError as exc:
            if isinstance(exc, psycopg.OperationalError) or conn.closed:
                raise  # the connection, not the reading: the transaction fails
            await conn.execute("ROLLBACK TO SAVEPOINT reading")
            error: dict[str, Any] = {
                "meter_id": reading.get("meter_id"),
                "data_point": reading.get("meter_element_id"),
                "error": exc.diag.message_primary or str(exc),
                "code": exc.sqlstate,
            }
            if exc.diag.message_detail:  # node-postgres leaves it undefined: JSON omits it
                error["detail"] = exc.diag.message_detail
            outcome.errors.append(error)

    async def stats(self) -> dict[int, tuple[int, int, int]]:
        """Per tenant: (rows, rows with a sent id, distinct sent ids)."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(STATS_SQL)
            return {int(t): (int(n), int(s), int(d)) for t, n, s, d in await cur.fetchall()}

    async def copies(
        self, tenant_id: int | None, ids: list[str] | None, min_copies: int
    ) -> dict[str, int]:
        """Rows per sent id (only ids with at least ``min_copies`` rows)."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                COPIES_SQL, {"tenant": tenant_id, "ids": ids, "min": min_copies}
            )
            return {str(k): int(n) for k, n in await cur.fetchall()}

    async def reset(self) -> None:
        """Delete every tenant and reading."""
        async with self._pool.connection() as conn:
            await conn.execute("DELETE FROM mt_meter_reading")
            await conn.execute("DELETE FROM mt_tenant")

"""The naive baseline: a plain Python port of the old upload (and download) flow, for the
end-to-end and engine groups.

Per batch, as the old system did it:
1. ``SELECT * FROM meter_reading WHERE ... LIMIT B`` with psycopg dict rows;
2. ``json.dumps(rows, default=...)`` of the readings (bookkeeping keys dropped);
3. an httpx POST to the Client System;
4. ``UPDATE ... WHERE meter_reading_id = ANY(%s)`` of the batch's ids, then commit.

Two concessions so the reference Client System accepts the readings (otherwise we would time its
rejection path): numeric values go out as JSON numbers (``float(Decimal)``; the old flow's
``default=str`` made them strings, which the reference server refuses), and the UPDATE carries
``tenant_id`` like every statement of ours. Both cost the baseline nothing noticeable.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import psycopg
from psycopg.rows import dict_row

BOOKKEEPING = frozenset(
    {"tenant_id", "is_synchronized", "sync_status", "retry_count", "last_error", "in_doubt_since"}
)
SELECT = (
    "SELECT * FROM meter_reading WHERE tenant_id = %s AND NOT is_synchronized "
    "ORDER BY created_at LIMIT %s"
)
MARK = (
    "UPDATE meter_reading SET is_synchronized = true, sync_status = 'synchronized' "
    "WHERE tenant_id = %s AND meter_reading_id = ANY(%s)"
)


@dataclass(frozen=True)
class NaiveReport:
    """Readings moved, batches, SQL statements executed and wall-clock seconds."""

    readings: int
    batches: int
    statements: int
    seconds: float


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    return str(value)  # UUID, datetime: the old flow's default=str


def upload(
    dsn: str,
    base_url: str,
    api_key: str,
    tenant_id: int,
    batch_size: int,
    *,
    max_readings: int | None = None,
) -> NaiveReport:
    """Upload the tenant's pending readings the old way; stop after ``max_readings`` if given."""
    started = time.perf_counter()
    readings = batches = statements = 0
    headers = {"X-API-Key": api_key, "Content-Type": "application/json"}
    with (
        psycopg.connect(dsn, row_factory=dict_row) as conn,
        httpx.Client(base_url=base_url, headers=headers, timeout=60.0) as http,
    ):
        while max_readings is None or readings < max_readings:
            limit = batch_size if max_readings is None else min(batch_size, max_readings - readings)
            rows = conn.execute(SELECT, (tenant_id, limit)).fetchall()
            statements += 1
            if not rows:
                conn.commit()
                break
            body = json.dumps(
                {"readings": [{k: v for k, v in r.items() if k not in BOOKKEEPING} for r in rows]},
                default=_default,
            )
            response = http.post("/sync/readings/batch", content=body)
            response.raise_for_status()
            answer = response.json()
            accepted = answer.get("inserted", 0) + answer.get("duplicates", 0)
            if not answer.get("success") or accepted != len(rows):
                raise RuntimeError(f"the Client System did not accept the batch: {answer}")
            conn.execute(MARK, (tenant_id, [r["meter_reading_id"] for r in rows]))
            statements += 1
            conn.commit()
            readings += len(rows)
            batches += 1
    return NaiveReport(readings, batches, statements, time.perf_counter() - started)


NAIVE_INSERT_COLUMNS_SQL = "INSERT INTO meter_reading ({}) VALUES ({}) ON CONFLICT DO NOTHING"
SAVE_CURSOR = (
    "INSERT INTO sync_state (tenant_id, download_cursor, updated_at) VALUES (%s, %s, now()) "
    "ON CONFLICT (tenant_id) DO UPDATE SET download_cursor = EXCLUDED.download_cursor, "
    "updated_at = now()"
)


def download(
    dsn: str,
    base_url: str,
    api_key: str,
    tenant_id: int,
    page_size: int,
    *,
    max_readings: int | None = None,
) -> NaiveReport:
    """Download the tenant's readings the old way: per page ``json.loads`` with ``Decimal``
    numbers, then ``executemany`` of ``INSERT ... ON CONFLICT DO NOTHING`` (rows stored
    synchronized) and the cursor, one commit per page; stop after ``max_readings`` if given."""
    started = time.perf_counter()
    readings = batches = statements = 0
    cursor: str | None = None
    headers = {"X-API-Key": api_key}
    with (
        psycopg.connect(dsn) as conn,
        httpx.Client(base_url=base_url, headers=headers, timeout=60.0) as http,
    ):
        while max_readings is None or readings < max_readings:
            limit = page_size if max_readings is None else min(page_size, max_readings - readings)
            params: dict[str, Any] = {"limit": limit}
            if cursor is not None:
                params["after"] = cursor
            response = http.get("/sync/readings", params=params)
            response.raise_for_status()
            page = json.loads(response.content, parse_float=Decimal)
            rows = page["readings"]
            if not rows:
                break
            columns = [k for k in rows[0] if k != "tenant_id"]
            sql = NAIVE_INSERT_COLUMNS_SQL.format(
                ", ".join(["tenant_id", *columns, "is_synchronized", "sync_status"]),
                ", ".join(["%s"] * (len(columns) + 3)),
            )
            with conn.cursor() as cur:
                cur.executemany(
                    sql,
                    [(tenant_id, *(r.get(c) for c in columns), True, "synchronized") for r in rows],
                )
                statements += len(rows)
                cur.execute(SAVE_CURSOR, (tenant_id, page["next_cursor"]))
                statements += 1
            conn.commit()
            readings += len(rows)
            batches += 1
            cursor = page["next_cursor"]
            if cursor is None or len(rows) < limit:
                break
    return NaiveReport(readings, batches, statements, time.perf_counter() - started)

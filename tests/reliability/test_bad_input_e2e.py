"""Bad download pages end to end: a tiny aiohttp app plays a hostile Client System and serves
crafted bytes to the real ``DownloadManager`` (real client, real sync database).

For every page: a clear error (a metersync error type, one line, no 100 KB echo), no row of it
written, the stored cursor unchanged. A first good page is committed before, so "unchanged" is a
real cursor and real rows, not an empty table.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from test_bad_pages import mutated_pages

from fix_server import json_text
from metersync.engine.download import DownloadManager
from metersync.engine.tenant_cache import TenantCache
from metersync.errors import MeterSyncError
from metersync.remote.client import ClientSystemApiClient
from metersync.store.database import SyncDatabase

TENANT = 7  # the tenant of test_bad_pages' generated pages
KEY = "bad-input-key-0123456789abcdef"
PAGE = 20
GOOD_CURSOR = "good-cursor-1"


def _reading(**overrides: Any) -> dict[str, Any]:
    r: dict[str, Any] = {
        "meter_reading_id": str(uuid.uuid4()),
        "created_at": "2026-01-01T00:00:00.000000Z",
        "meter_id": 1,
        "meter_element_id": None,
        "active_energy": Decimal("12.5000"),
    }
    r.update(overrides)
    return r


def page_bytes(readings: Any, next_cursor: Any = "next-cursor") -> bytes:
    return json_text({"readings": readings, "next_cursor": next_cursor}).encode()


# Each case: (name, body bytes, extra response headers). Every one must be refused.
def _cases() -> list[tuple[str, bytes, dict[str, str]]]:
    dup = _reading()
    big = "9" * 1_000_000
    return [
        ("not-json", b'{"readings": [', {}),
        (
            "invalid-utf8",
            b'{"readings": [{"meter_reading_id": "\xff\xfe\xfd"}], "next_cursor": null}',
            {},
        ),
        ("nan", page_bytes([_reading(active_energy=Decimal("NaN"))]), {}),
        ("infinity", page_bytes([_reading(active_energy=float("inf"))]), {}),
        ("top-level-array", b"[]", {}),
        ("readings-not-list", page_bytes({"a": 1}), {}),
        ("reading-not-object", page_bytes([1, 2]), {}),
        (
            "missing-id",
            page_bytes([{k: v for k, v in _reading().items() if k != "meter_reading_id"}]),
            {},
        ),
        ("wrong-type-meter", page_bytes([_reading(meter_id="one")]), {}),
        ("bool-meter", page_bytes([_reading(meter_id=True)]), {}),
        ("extra-field", page_bytes([_reading(surprise=1)]), {}),
        ("duplicate-ids", page_bytes([dup, dict(dup)]), {}),
        (
            "numeric-too-big",
            page_bytes([_reading(active_energy=Decimal("100000000000000.0000"))]),
            {},
        ),
        ("numeric-too-precise", page_bytes([_reading(active_energy=Decimal("1.00001"))]), {}),
        ("huge-string", page_bytes([_reading(meter_reading_id=big)]), {}),
        ("huge-number", page_bytes([_reading(active_energy=Decimal(big))]), {}),
        ("other-tenant", page_bytes([_reading(tenant_id=TENANT + 1)]), {}),
        ("more-rows-than-asked", page_bytes([_reading() for _ in range(PAGE + 1)]), {}),
        ("bad-uuid", page_bytes([_reading(meter_reading_id="not-a-uuid")]), {}),
        ("naive-timestamp", page_bytes([_reading(created_at="2026-01-01T00:00:00")]), {}),
        ("cursor-wrong-type", page_bytes([_reading()], next_cursor={"x": 1}), {}),
        ("bad-gzip", b"\x1f\x8b garbage", {"Content-Encoding": "gzip"}),
        ("gzip-bomb-ish", gzip.compress(b" " * 5_000_000 + b"["), {"Content-Encoding": "gzip"}),
    ]


CASES = _cases()


@dataclass
class Hostile:
    """What the hostile Client System serves next."""

    body: bytes = b""
    headers: dict[str, str] | None = None
    requests: int = 0


@dataclass
class Rig:
    dsn: str
    db: SyncDatabase
    hostile: Hostile
    url: str

    async def download(self) -> Any:
        client = ClientSystemApiClient(self.url, KEY, max_retries=0, read_timeout=10)
        try:
            manager = DownloadManager(self.db, client, TenantCache(self.db), tenant_id=TENANT)
            return await manager.download()
        finally:
            await client.aclose()

    async def snapshot(self) -> tuple[str | None, int]:
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            cur = await conn.execute(
                "SELECT download_cursor FROM sync_state WHERE tenant_id = %s", (TENANT,)
            )
            row = await cur.fetchone()
            cur = await conn.execute(
                "SELECT count(*) FROM meter_reading WHERE tenant_id = %s", (TENANT,)
            )
            count = (await cur.fetchone())[0]
        return (row[0] if row else None), int(count)


@contextlib.asynccontextmanager
async def make_rig(dsn: str) -> AsyncIterator[Rig]:
    """Hostile server + migrated sync database with one good page already committed."""
    hostile = Hostile()

    async def readings(request: web.Request) -> web.Response:
        hostile.requests += 1
        if request.headers.get("X-API-Key") != KEY:
            return web.json_response({"error": "bad key"}, status=401)
        return web.Response(
            body=hostile.body, content_type="application/json", headers=hostile.headers
        )

    async def health(_: web.Request) -> web.Response:
        # The metersync contract with download (a server that advertises nothing is MeterTrack,
        # which has no download: the engine would not even ask for a page).
        return web.json_response(
            {"status": "ok", "contract": "metersync", "idempotent": True, "download": True}
        )

    app = web.Application()
    app.router.add_get("/api/health", health)
    app.router.add_get("/api/sync/readings", readings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    db = await SyncDatabase.connect(dsn)
    try:
        await db.migrate()
        await db.add_tenant(TENANT, "hostile", KEY, upload_batch_size=7, download_batch_size=PAGE)
        rig = Rig(dsn, db, hostile, f"http://127.0.0.1:{port}/api")
        # One good page first: 5 readings and a real cursor.
        hostile.body = page_bytes([_reading() for _ in range(5)], next_cursor=GOOD_CURSOR)
        report = await rig.download()
        assert report.error is None and report.inserted == 5, report
        assert await rig.snapshot() == (GOOD_CURSOR, 5)
        yield rig
    finally:
        await db.close()
        await runner.cleanup()


@pytest.fixture
async def rig(fresh_dsn: str) -> AsyncIterator[Rig]:
    async with make_rig(fresh_dsn) as r:
        yield r


async def _refused(rig: Rig, body: bytes, headers: dict[str, str] | None, name: str) -> str:
    rig.hostile.body, rig.hostile.headers = body, headers
    before = rig.hostile.requests
    try:
        report = await asyncio.wait_for(rig.download(), 60)
    except MeterSyncError as exc:
        message = str(exc)
    else:
        assert report.error, f"{name}: page accepted: {report}"
        message = report.error
    assert rig.hostile.requests > before, f"{name}: the page was never asked for"
    assert len(message) < 2000, f"{name}: error message of {len(message)} chars"
    assert await rig.snapshot() == (GOOD_CURSOR, 5), f"{name}: rows or cursor changed"
    return message


async def test_hostile_pages_change_nothing(rig: Rig) -> None:
    """Every crafted page of CASES, one after the other against the same committed state."""
    failures = []
    for name, body, headers in CASES:
        try:
            await _refused(rig, body, headers or None, name)
        except AssertionError as exc:
            failures.append(f"{name}: {str(exc)[:300]}")
    assert not failures, "\n".join(failures)


async def test_error_names_the_problem(rig: Rig) -> None:
    message = await _refused(rig, CASES[16][1], None, "other-tenant")
    assert "tenant" in message
    message = await _refused(rig, CASES[17][1], None, "more-rows-than-asked")
    assert str(PAGE) in message


def test_generated_hostile_pages_end_to_end(fresh_dsn: str) -> None:
    """hypothesis pages (test_bad_pages' mutations) through HTTP and the DownloadManager."""

    loop = asyncio.new_event_loop()
    cm = make_rig(fresh_dsn)
    try:
        the_rig = loop.run_until_complete(cm.__aenter__())

        @settings(
            max_examples=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(mutated_pages())
        def check(case: tuple[str, list[Any], int, Any]) -> None:
            kind, page, _limit, huge = case
            if huge is not None:
                row, field, length = huge
                page[row][field] = "7" * length
            if kind == "too_many_rows":  # the manager asks for PAGE rows: send one more
                page = page + [_reading() for _ in range(PAGE + 1 - len(page))]
            loop.run_until_complete(_refused(the_rig, page_bytes(page), None, kind))

        check()
        loop.run_until_complete(cm.__aexit__(None, None, None))
    finally:
        loop.close()

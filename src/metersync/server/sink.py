"""A Client System that costs (almost) nothing: ``metersync serve --sink`` (issue 12).

For benchmarks that measure the engine rather than the reference server's database:

* ``POST /api/sync/readings/batch`` answers from the body without parsing or storing it: the
  readings are counted with one byte scan (occurrences of ``"meter_reading_id"``) and all are
  reported inserted (``duplicates`` 0, ``rejected`` []).
* ``GET /api/sync/readings?limit=N&after=C`` serves pages cut from readings encoded once, when
  the tenant is registered (``sink_download`` synthetic wide readings per tenant, from
  :func:`metersync.tools.synthetic.reading_batch` through the codec's canonical JSON): a page is
  one slice of a pre-built byte string, with the reference server's cursor semantics.
* ``GET /api/health`` advertises the metersync contract (idempotent, download, site filter: a
  sink serves nothing that was uploaded, so ``exclude_site`` holds trivially).

Tenants and their keys come from the admin API (``POST /admin/tenants``, as for the reference
server) or ``serve --import-tenants``. Nothing is stored anywhere: no database is needed.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
from aiohttp import web

from metersync.errors import ConfigError
from metersync.server.admin_auth import admin_json, guard_admin, tenant_fields
from metersync.server.app import (
    DEFAULT_MAX_BODY_BYTES,
    encode_cursor,
    health_document,
    key_digest,
    page_params,
)
from metersync.server.faults import BATCH_PATH

_ID_KEY = b'"meter_reading_id"'
_BUILD_CHUNK = 20_000  # readings encoded per codec call while building pages


@dataclass(frozen=True)
class PrebuiltReadings:
    """One tenant's readings as one JSON text plus where each reading starts and ends."""

    blob: bytes  # the readings' JSON objects, comma separated (no brackets)
    starts: np.ndarray  # int64, per reading
    ends: np.ndarray  # int64, per reading (exclusive)

    def __len__(self) -> int:
        return len(self.starts)

    def page(self, first: int, limit: int) -> tuple[bytes, int]:
        """The text of readings ``first .. first+limit-1`` (comma separated) and the count."""
        last = min(first + limit, len(self))
        if first >= last:
            return b"", 0
        return self.blob[int(self.starts[first]) : int(self.ends[last - 1])], last - first


def build_readings(tenant_id: int, n: int, *, seed: int | None = None) -> PrebuiltReadings:
    """``n`` synthetic wide readings of ``tenant_id`` in the reference server's page order
    (identity fields, ``tenant_id``, measurements), encoded by the codec once."""
    from metersync import codec
    from metersync.tools.synthetic import reading_batch

    parts: list[bytes] = []
    starts: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    offset = 0
    for chunk_no, begin in enumerate(range(0, n, _BUILD_CHUNK)):
        rows = min(_BUILD_CHUNK, n - begin)
        batch = reading_batch(
            rows, seed=(seed if seed is not None else tenant_id) * 100_003 + chunk_no
        )
        batch = batch.add_column(4, "tenant_id", pa.array(np.full(rows, tenant_id, np.int64)))
        text = codec.json_rows(batch)[1:-1]  # without [ ]
        # Readings are flat objects whose strings hold no braces: "},{" separates them.
        cut = np.frombuffer(text, np.uint8)
        boundary = np.flatnonzero(
            (cut[:-2] == ord("}")) & (cut[1:-1] == ord(",")) & (cut[2:] == ord("{"))
        )
        if len(boundary) != rows - 1:
            raise ConfigError(f"sink: cannot split {rows} encoded readings")
        s = np.concatenate(([0], boundary + 2)).astype(np.int64)
        e = np.concatenate((boundary + 1, [len(text)])).astype(np.int64)
        if parts:
            parts.append(b",")
            offset += 1
        starts.append(s + offset)
        ends.append(e + offset)
        parts.append(text)
        offset += len(text)
    if not parts:
        return PrebuiltReadings(b"", np.empty(0, np.int64), np.empty(0, np.int64))
    return PrebuiltReadings(b"".join(parts), np.concatenate(starts), np.concatenate(ends))


@dataclass
class SinkState:
    """Tenants, their pre-built readings and counters."""

    download_readings: int = 0
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    admin_token: str | None = None
    keys: dict[str, int] = field(default_factory=dict)  # key digest -> tenant
    readings: dict[int, PrebuiltReadings] = field(default_factory=dict)
    counters: Counter[str] = field(default_factory=Counter)

    async def register(self, tenant_id: int, api_key: str) -> None:
        """Register (or replace) a tenant's key; build its readings once."""
        digest = key_digest(api_key)
        owner = self.keys.get(digest)
        if owner is not None and owner != tenant_id:
            raise KeyError("this api_key is already registered to another tenant")
        for old in [d for d, t in self.keys.items() if t == tenant_id]:
            del self.keys[old]
        self.keys[digest] = tenant_id
        if tenant_id not in self.readings:
            self.readings[tenant_id] = await asyncio.to_thread(
                build_readings, tenant_id, self.download_readings
            )


SINK_STATE = web.AppKey("sink_state", SinkState)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json({"success": False, "error": message}, status)


@web.middleware
async def _middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    state = request.app[SINK_STATE]
    state.counters["requests"] += 1
    if request.path.startswith("/admin"):
        return await guard_admin(request, handler, state.admin_token, _error)
    return await handler(request)


def _tenant(request: web.Request) -> int | None:
    key = request.headers.get("X-API-Key")
    return request.app[SINK_STATE].keys.get(key_digest(key)) if key else None


async def health(request: web.Request) -> web.Response:
    """``GET /api/health``: the metersync contract (and ``"sink": true``)."""
    return _json({**health_document(request.app[SINK_STATE].max_body_bytes), "sink": True})


async def upload_batch(request: web.Request) -> web.Response:
    """``POST /api/sync/readings/batch``: count, claim all inserted, store nothing."""
    state = request.app[SINK_STATE]
    if _tenant(request) is None:
        return _error(401, "missing or unknown API key")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _error(413, f"request body larger than {state.max_body_bytes} bytes")
    except ConnectionError:
        # The client went away mid-body; this answer goes nowhere (aiohttp ignores the
        # failed write), but no traceback is logged for it.
        response = _error(400, "connection lost while reading the body")
        response.force_close()
        return response
    count = raw.count(_ID_KEY)
    state.counters["batches_received"] += 1
    state.counters["readings_received"] += count
    return web.Response(
        body=b'{"success":true,"inserted":%d,"duplicates":0,"rejected":[]}' % count,
        content_type="application/json",
    )


async def download(request: web.Request) -> web.Response:
    """``GET /api/sync/readings?limit=N&after=C[&exclude_site=S]``: a slice of pre-built text."""
    state = request.app[SINK_STATE]
    tenant_id = _tenant(request)
    if tenant_id is None:
        return _error(401, "missing or unknown API key")
    try:
        limit, after_seq = page_params(request.query)
    except ValueError as exc:
        return _error(400, str(exc))
    # seq of reading i is i + 1, as in the reference server (cursor = seq of the last served).
    text, count = state.readings[tenant_id].page(after_seq, limit)
    cursor = b'"%s"' % encode_cursor(after_seq + count).encode() if count else b"null"
    state.counters["readings_served"] += count
    return web.Response(
        body=b'{"readings":[' + text + b'],"next_cursor":' + cursor + b"}",
        content_type="application/json",
    )


async def admin_tenants(request: web.Request) -> web.Response:
    """``POST /admin/tenants`` ``{tenant_id, api_key, name}``: register; builds its pages."""
    state = request.app[SINK_STATE]
    data = await admin_json(request)
    tenant_id, api_key = tenant_fields(data)
    try:
        await state.register(tenant_id, api_key)
    except KeyError:
        return _error(409, "this api_key is already registered to another tenant")
    return _json({"tenant_id": tenant_id, "name": data.get("name")})


async def admin_stats(request: web.Request) -> web.Response:
    """``GET /admin/stats``: counters (the sink holds no rows)."""
    state = request.app[SINK_STATE]
    return _json(
        {
            "profile": "sink",
            "total_rows": 0,
            "rows_per_tenant": {},
            "tenants": len(state.readings),
            "download_readings_per_tenant": state.download_readings,
            "requests": state.counters["requests"],
            "batches_received": state.counters["batches_received"],
            "readings_received": state.counters["readings_received"],
            "inserted": state.counters["readings_received"],
            "readings_served": state.counters["readings_served"],
        }
    )


async def admin_reset_stats(request: web.Request) -> web.Response:
    """``POST /admin/stats/reset``: zero the counters."""
    request.app[SINK_STATE].counters.clear()
    return _json({"reset": True})


async def admin_reset(request: web.Request) -> web.Response:
    """``POST /admin/reset``: forget every tenant, zero the counters."""
    state = request.app[SINK_STATE]
    state.keys.clear()
    state.readings.clear()
    state.counters.clear()
    return _json({"reset": True})


def create_sink_app(
    *,
    download_readings: int = 0,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    admin_token: str | None = None,
) -> web.Application:
    """Build the sink's aiohttp application (no database)."""
    if download_readings < 0:
        raise ConfigError(f"sink download readings must be >= 0, got {download_readings}")
    state = SinkState(download_readings, max_body_bytes, admin_token)
    app = web.Application(middlewares=[_middleware], client_max_size=max_body_bytes)
    app[SINK_STATE] = state
    app.router.add_get("/api/health", health)
    app.router.add_post(BATCH_PATH, upload_batch)
    app.router.add_get("/api/sync/readings", download)
    app.router.add_post("/admin/tenants", admin_tenants)
    app.router.add_get("/admin/stats", admin_stats)
    app.router.add_post("/admin/stats/reset", admin_reset_stats)
    app.router.add_post("/admin/reset", admin_reset)
    return app

"""HTTP handlers of the reference Client System (aiohttp), with fault injection and stats.

Routes (SPEC §7): ``GET /api/health``, ``POST /api/sync/readings/batch``,
``GET /api/sync/readings``; admin API under ``/admin`` (tenants, faults, stats, bulk load),
guarded by ``X-Admin-Token`` when the server has an admin token.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from psycopg_pool import PoolTimeout

from metersync.errors import ConfigError
from metersync.server.admin_auth import admin_json, guard_admin, tenant_fields, tenant_name
from metersync.server.bodies import BodyError, UploadBody
from metersync.server.faults import BATCH_PATH, FaultInjector, FaultPlan
from metersync.server.store import StagedReading, Store
from metersync.server.validation import reading_label, validate_reading

log = logging.getLogger("metersync.server")

MAX_PAGE = 10_000
DEFAULT_MAX_BATCH = 10_000
# A wide reading is about 1.3 KB of JSON: 10,000 of them fit well within 64 MiB. The limit
# applies after gzip decompression (aiohttp counts the decoded body), so no zip bomb gets in.
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
# How many Idempotency-Keys each server remembers (per tenant, oldest forgotten first).
IDEMPOTENCY_MEMORY = 10_000
BATCH_LOG_SIZE = 2_000
#: Header naming the site an upload comes from (issue 12); ``exclude_site`` on download.
SITE_HEADER = "X-Metersync-Site"
MAX_SITE_ID = 200


def key_digest(api_key: str) -> str:
    """SHA-256 hex digest under which an API key is stored (keys are never stored in clear)."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


@dataclass
class ServerState:
    """Everything the handlers share: storage, limits, faults, counters."""

    store: Store
    max_batch: int = DEFAULT_MAX_BATCH
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    admin_token: str | None = None
    faults_injected: Counter[str] = field(default_factory=Counter)
    counters: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    batch_log: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=BATCH_LOG_SIZE))
    idempotency: OrderedDict[tuple[int, str], int] = field(default_factory=OrderedDict)
    key_cache: dict[str, int] = field(default_factory=dict)
    # Readings newly stored per tenant: with the distinct ids a tenant uploaded, a duplicate
    # count that does not rest on the primary key (the demo's check could fail).
    inserted_by_tenant: Counter[int] = field(default_factory=Counter)
    # Bumped by reset_stats(): a request that started before a reset is not counted after it
    # (a delayed request of one test must not show up in the next test's stats).
    generation: int = 0
    injector: FaultInjector = field(init=False)

    def __post_init__(self) -> None:
        self.set_faults(FaultPlan())

    def set_faults(self, plan: FaultPlan) -> None:
        """Replace the fault plan (its next-N counters start afresh)."""
        self.injector = FaultInjector(plan, self.faults_injected)

    def reset_stats(self) -> None:
        """Zero the counters (not the stored rows, not the fault plan)."""
        self.generation += 1
        self.faults_injected.clear()
        self.counters.clear()
        self.statuses.clear()
        self.batch_log.clear()
        self.idempotency.clear()
        self.inserted_by_tenant.clear()


STATE = web.AppKey("state", ServerState)


class _DropConnection(Exception):
    """Raised by a handler to close the connection without answering (after commit)."""


class _ClientGone(_DropConnection):
    """The client closed the connection while its body was being read: nobody to answer."""


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return _json({"success": False, "error": message}, status, headers)


@web.middleware
async def _middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    state = request.app[STATE]
    path = request.path
    if path.startswith("/admin"):
        return await guard_admin(request, handler, state.admin_token, _error)
    started = time.perf_counter()
    generation = state.generation
    injection = state.injector.before(path)
    status = "500"  # what aiohttp answers if the handler raises something unexpected
    try:
        if injection.delay:
            await asyncio.sleep(injection.delay)
            transport = request.transport
            if transport is None or transport.is_closing():
                # The client gave up while we slept: do nothing, like a server that never got
                # round to the request. (A lost answer after commit is drop_after_commit.)
                status = "abandoned"
                raise _DropConnection
        if injection.status is not None:
            headers = None
            if injection.retry_after is not None:
                headers = {"Retry-After": _format_seconds(injection.retry_after)}
            response: web.StreamResponse = _error(
                injection.status, "injected fault", headers=headers
            )
        else:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                response = _error(exc.status, exc.reason)
            except (psycopg.OperationalError, PoolTimeout) as exc:
                # The database is down or saturated: a transient failure the client retries.
                log.warning("database unavailable: %s", exc)
                response = _error(503, "database unavailable; retry later")
        status = str(response.status)
        return response
    except _DropConnection as exc:
        if isinstance(exc, _ClientGone):
            status = "client_gone"
        elif status != "abandoned":
            status = "dropped"
        if request.transport is not None:
            request.transport.abort()
        # aiohttp writes this into the closed transport, notices, and moves on.
        return web.Response(status=204)
    finally:
        if generation == state.generation:
            state.statuses[status] += 1
            state.counters["requests"] += 1
            if path == BATCH_PATH and request.method == "POST":
                state.batch_log.append(
                    {"idempotency_key": request.headers.get("Idempotency-Key"), "status": status}
                )
        log.debug(
            "%s %s -> %s (%.1f ms)",
            request.method,
            path,
            status,
            (time.perf_counter() - started) * 1000,
        )


def _format_seconds(seconds: float) -> str:
    return str(int(seconds)) if seconds == int(seconds) else f"{seconds:g}"


async def _tenant_of(request: web.Request) -> int | None:
    state = request.app[STATE]
    key = request.headers.get("X-API-Key")
    if not key:
        return None
    digest = key_digest(key)
    tenant = state.key_cache.get(digest)
    if tenant is None:
        tenant = await state.store.tenant_for_key(digest)
        if tenant is not None:
            state.key_cache[digest] = tenant
    return tenant


async def _read_body(request: web.Request) -> bytes | web.Response:
    state = request.app[STATE]
    try:
        return await request.read()
    except ConnectionError:
        # E.g. a client that timed out during an injected delay: not an error of the server,
        # and not worth aiohttp's "Error handling request" traceback.
        raise _ClientGone from None
    except web.HTTPRequestEntityTooLarge:
        return _error(413, f"request body larger than {state.max_body_bytes} bytes")
    except (HttpProcessingError, RequestPayloadError) as exc:  # e.g. gzip that does not inflate
        response = _error(400, f"request body cannot be decoded: {exc}")
        # The rest of the body cannot be read either: mark it finished (else aiohttp tries to
        # drain it after the answer and logs the same error again) and close the connection.
        request.content.feed_eof()
        response.force_close()
        return response


#: Name and version of the contract this server implements (SPEC §7, profile ``metersync``).
CONTRACT = "metersync"
CONTRACT_VERSION = 2


def health_document(max_body_bytes: int) -> dict[str, Any]:
    """What ``GET /health`` advertises: the contract and its capabilities (issue 10, item 1)."""
    return {
        "status": "ok",
        "contract": CONTRACT,
        "contract_version": CONTRACT_VERSION,
        "idempotent": True,
        "download": True,
        "max_body_bytes": max_body_bytes,
        "site_filter": True,
    }


async def health(request: web.Request) -> web.Response:
    """``GET /api/health``: no auth; advertises the contract so clients negotiate a profile."""
    return _json(health_document(request.app[STATE].max_body_bytes))


async def upload_batch(request: web.Request) -> web.Response:
    """``POST /api/sync/readings/batch``."""
    state = request.app[STATE]
    tenant_id = await _tenant_of(request)
    if tenant_id is None:
        return _error(401, "missing or unknown API key")
    raw = await _read_body(request)
    if isinstance(raw, web.Response):
        return raw
    if request.headers.get("Content-Encoding", "").lower() == "gzip":
        state.counters["gzip_bodies"] += 1
    key = request.headers.get("Idempotency-Key")
    if key:
        memo = (tenant_id, key)
        if memo in state.idempotency:
            # A retry of a batch we may already have stored: re-running it is idempotent
            # (ON CONFLICT DO NOTHING), and the counts then tell the truth (duplicates).
            state.counters["idempotency_replays"] += 1
            state.idempotency.move_to_end(memo)
        state.idempotency[memo] = state.idempotency.get(memo, 0) + 1
        while len(state.idempotency) > IDEMPOTENCY_MEMORY:
            state.idempotency.popitem(last=False)
    site = request.headers.get(SITE_HEADER)
    if site is not None and (problem := _site_problem(site)):
        return _error(400, f"{SITE_HEADER} {problem}")
    outcome = await ingest(state, tenant_id, raw, apply_faults=True, site_id=site)
    if isinstance(outcome, web.Response):
        return outcome
    injector = state.injector
    if injector.take("drop_after_commit"):
        raise _DropConnection
    if injector.take("miscount"):
        outcome["inserted"] += 1
    if injector.take("legacy"):
        return _json(
            {"success": True, "recordsProcessed": outcome["inserted"] + outcome["duplicates"]}
        )
    return _json(outcome)


def _site_problem(site: str) -> str | None:
    """Why a site id (header or query) is unusable, or None."""
    if not site or len(site) > MAX_SITE_ID:
        return f"must be 1..{MAX_SITE_ID} characters"
    if not site.isprintable():
        return "must be printable text"
    return None


async def ingest(
    state: ServerState,
    tenant_id: int,
    raw: bytes,
    *,
    apply_faults: bool,
    site_id: str | None = None,
) -> dict[str, Any] | web.Response:
    """Validate and store an upload body (uploaded by ``site_id``, if known); the success
    answer, or an error response."""
    try:
        body = UploadBody(raw)
    except BodyError as exc:
        return _error(400, str(exc))
    readings = body.readings
    if len(readings) > state.max_batch:
        return _error(
            413, f"{len(readings)} readings in one batch; the maximum is {state.max_batch}"
        )
    state.counters["batches_received"] += 1
    state.counters["readings_received"] += len(readings)
    rejected: list[dict[str, str]] = []
    staged: list[StagedReading] = []
    first_ord: dict[str, int] = {}  # lowercase id -> ordinal of its first valid occurrence
    repeats: list[tuple[int, int]] = []  # (ordinal, ordinal of the first occurrence)
    # A NUL can only reach a string through the JSON escape \u0000 (raw control characters are
    # invalid JSON); PostgreSQL text cannot hold it, so only then is every string looked at.
    nul_possible = b"\\u0000" in raw
    for i, reading in enumerate(readings, start=1):
        # orjson parsed the values: its floats are finite (it refuses NaN and infinities).
        error = validate_reading(reading, tenant_id, finite=True, check_nul=nul_possible)
        if error is None and apply_faults:
            error = state.injector.rejection(reading)
        if error is not None:
            rejected.append({"meter_reading_id": reading_label(reading, i), "error": error})
            continue
        rid = reading["meter_reading_id"].lower()
        if rid in first_ord:  # the same id again in one batch: judged with its first copy
            repeats.append((i, first_ord[rid]))
            continue
        first_ord[rid] = i
        staged.append(
            StagedReading(
                i,
                rid,
                reading["created_at"],
                reading["meter_id"],
                reading.get("meter_element_id"),
                body.measurements_text(i - 1),
            )
        )
    outcomes = await state.store.insert_batch(tenant_id, staged, site_id)
    inserted = duplicates = 0
    stored: set[int] = set()
    for row in outcomes:
        if row.inserted:
            inserted += 1
        elif row.owner == tenant_id:
            duplicates += 1
        elif row.owner is None:
            # Neither inserted nor found: only a concurrent rollback can do that. Claiming a
            # duplicate would confirm a reading we do not hold, so the whole batch is retried.
            return _error(503, "concurrent insert conflict; retry the batch")
        else:
            rejected.append(
                {
                    "meter_reading_id": reading_label(readings[row.ord - 1], row.ord),
                    "error": "meter_reading_id is not available to this tenant",
                }
            )
            continue
        stored.add(row.ord)
    for i, first in repeats:
        if first in stored:
            duplicates += 1
        else:
            # Listing the id twice would make the answer ambiguous; the id itself is already
            # rejected through its first copy, so this copy is reported by its position.
            rejected.append(
                {
                    "meter_reading_id": f"<reading {i}>",
                    "error": f"repeats the rejected meter_reading_id of reading {first}",
                }
            )
    state.counters["inserted"] += inserted
    state.inserted_by_tenant[tenant_id] += inserted
    state.counters["duplicates_seen"] += duplicates
    state.counters["rejected"] += len(rejected)
    return {"success": True, "inserted": inserted, "duplicates": duplicates, "rejected": rejected}


def encode_cursor(seq: int) -> str:
    """Opaque download cursor for "after the reading with this seq"."""
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> int:
    """The seq inside a cursor from :func:`encode_cursor`; ValueError when it is not one."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError("not a cursor") from None
    prefix, _, number = text.partition(":")
    if prefix != "seq" or not number.isdigit():
        raise ValueError("not a cursor")
    return int(number)


def page_params(query: Mapping[str, str]) -> tuple[int, int]:
    """``limit`` and the seq after ``after`` of a download request; ValueError saying which
    parameter is wrong."""
    raw_limit = query.get("limit", "")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_PAGE:
        raise ValueError(f"limit must be an integer in 1..{MAX_PAGE}, got {raw_limit!r}")
    after = query.get("after")
    try:
        return int(raw_limit), decode_cursor(after) if after else 0
    except ValueError:
        raise ValueError("after is not a cursor returned by this server") from None


async def download(request: web.Request) -> web.Response:
    """``GET /api/sync/readings?limit=N&after=CURSOR[&exclude_site=SITE]``.

    With ``exclude_site`` the readings uploaded by that site are left out, and a short page's
    cursor moves past them too (it may then come with an empty page: store it all the same).
    """
    state = request.app[STATE]
    tenant_id = await _tenant_of(request)
    if tenant_id is None:
        return _error(401, "missing or unknown API key")
    try:
        limit, after_seq = page_params(request.query)
    except ValueError as exc:
        return _error(400, str(exc))
    exclude = request.query.get("exclude_site")
    top: int | None = None
    if exclude is not None:
        if problem := _site_problem(exclude):
            return _error(400, f"exclude_site {problem}")
        rows, top = await state.store.page_excluding_site(tenant_id, after_seq, limit + 1, exclude)
    else:
        rows = await state.store.page(tenant_id, after_seq, limit + 1)
    more = len(rows) > limit
    injector = state.injector
    if injector.take("garbage_page"):
        return _json({"readings": "not a list", "next_cursor": None})
    if not (more and injector.take("oversize_page")):
        rows = rows[:limit]
    texts = [text.encode() for _, text in rows]
    if texts and injector.take("malformed_page"):
        first = orjson.loads(texts[0])
        first["meter_reading_id"] = "not-a-uuid"
        texts[0] = orjson.dumps(first)
    # The cursor is the resume point after the last reading served, on every non-empty page,
    # so a client that caught up stores it and next time asks only for what is new; null
    # means the page is empty (nothing after `after`): keep the cursor you have.
    cursor = encode_cursor(rows[min(limit, len(rows)) - 1][0]) if rows else None
    if top is not None and not more:
        # Excluded readings after the last one served: the next download starts past them.
        cursor = encode_cursor(top)
    state.counters["readings_served"] += len(texts)
    body = b'{"readings":[' + b",".join(texts) + b'],"next_cursor":' + orjson.dumps(cursor) + b"}"
    return web.Response(body=body, content_type="application/json")


async def admin_tenants(request: web.Request) -> web.Response:
    """``POST /admin/tenants`` ``{tenant_id, api_key, name}``: register or replace a tenant."""
    state = request.app[STATE]
    data = await admin_json(request)
    tenant_id, api_key = tenant_fields(data)
    name = tenant_name(data)
    digest = key_digest(api_key)
    try:
        await state.store.upsert_tenant(tenant_id, digest, name)
    except psycopg.errors.UniqueViolation:
        return _error(409, "this api_key is already registered to another tenant")
    for cached in [d for d, t in state.key_cache.items() if t == tenant_id]:
        del state.key_cache[cached]
    state.key_cache[digest] = tenant_id
    return _json({"tenant_id": tenant_id, "name": name})


async def admin_set_faults(request: web.Request) -> web.Response:
    """``POST /admin/faults``: a plan as JSON fields or ``{"spec": "fail=3:503,..."}``."""
    state = request.app[STATE]
    plan = FaultPlan.from_dict(await admin_json(request))
    state.set_faults(plan)
    log.info("fault plan set: %s", plan)
    return _json(plan.to_dict())


async def admin_clear_faults(request: web.Request) -> web.Response:
    """``DELETE /admin/faults``: inject nothing from now on."""
    request.app[STATE].set_faults(FaultPlan())
    return _json(FaultPlan().to_dict())


async def admin_stats(request: web.Request) -> web.Response:
    """``GET /admin/stats``: rows, counters, statuses, faults injected, recent batch requests."""
    state = request.app[STATE]
    per_tenant = await state.store.rows_per_tenant()
    return _json(
        {
            "total_rows": sum(per_tenant.values()),
            "rows_per_tenant": {str(t): n for t, n in per_tenant.items()},
            "requests": state.counters["requests"],
            "batches_received": state.counters["batches_received"],
            "readings_received": state.counters["readings_received"],
            "inserted": state.counters["inserted"],
            "inserted_per_tenant": {str(t): n for t, n in state.inserted_by_tenant.items()},
            "duplicates_seen": state.counters["duplicates_seen"],
            "rejected": state.counters["rejected"],
            "readings_served": state.counters["readings_served"],
            "idempotency_replays": state.counters["idempotency_replays"],
            "gzip_bodies": state.counters["gzip_bodies"],
            "requests_per_status": dict(state.statuses),
            "faults_injected": dict(state.faults_injected),
            "fault_plan": state.injector.plan.to_dict(),
            "batch_requests": list(state.batch_log),
        }
    )


async def admin_reset_stats(request: web.Request) -> web.Response:
    """``POST /admin/stats/reset``: zero the counters (rows stay)."""
    request.app[STATE].reset_stats()
    return _json({"reset": True})


async def admin_reset(request: web.Request) -> web.Response:
    """``POST /admin/reset``: delete all tenants and readings, zero stats, clear faults."""
    state = request.app[STATE]
    await state.store.reset()
    state.key_cache.clear()
    state.reset_stats()
    state.set_faults(FaultPlan())
    return _json({"reset": True})


async def admin_load_readings(request: web.Request) -> web.Response:
    """``POST /admin/readings`` ``{"tenant_id": T, "readings": [...]}``: store readings directly."""
    state = request.app[STATE]
    raw = await _read_body(request)
    if isinstance(raw, web.Response):
        return raw
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"body is not valid JSON: {exc}") from None
    tenant_id = doc.get("tenant_id") if isinstance(doc, dict) else None
    if not isinstance(tenant_id, int) or isinstance(tenant_id, bool):
        raise ConfigError("tenant_id must be an integer")
    outcome = await ingest(state, tenant_id, raw, apply_faults=False)
    return outcome if isinstance(outcome, web.Response) else _json(outcome)


def create_app(
    store: Store,
    *,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    admin_token: str | None = None,
    faults: FaultPlan | None = None,
) -> web.Application:
    """Build the aiohttp application over an opened :class:`Store`."""
    if max_batch < 1:
        raise ConfigError(f"max_batch must be >= 1, got {max_batch}")
    state = ServerState(
        store, max_batch=max_batch, max_body_bytes=max_body_bytes, admin_token=admin_token
    )
    if faults is not None:
        state.set_faults(faults)
    app = web.Application(middlewares=[_middleware], client_max_size=max_body_bytes)
    app[STATE] = state
    app.router.add_get("/api/health", health)
    app.router.add_post("/api/sync/readings/batch", upload_batch)
    app.router.add_get("/api/sync/readings", download)
    app.router.add_post("/admin/tenants", admin_tenants)
    app.router.add_post("/admin/faults", admin_set_faults)
    app.router.add_delete("/admin/faults", admin_clear_faults)
    app.router.add_get("/admin/stats", admin_stats)
    app.router.add_post("/admin/stats/reset", admin_reset_stats)
    app.router.add_post("/admin/readings", admin_load_readings)
    app.router.add_post("/admin/reset", admin_reset)
    return app

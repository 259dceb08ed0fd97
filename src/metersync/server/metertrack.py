"""Emulation of the original MeterTrack Client System (issue 10, item 7), quirks included.

``metersync serve --profile metertrack`` runs this app instead of the reference one. It answers
what the original answers, byte shape for byte shape, so that the upload engine is tested
against the system sites really run:

* ``POST /api/sync/readings/batch``: the JSON body parser (10,485,760 bytes after inflating gzip;
  over it, or a body that is not JSON, the global error handler answers **500** "Internal server
  error"); then the API key (401 "API key required" / "Invalid API key", also for an inactive
  tenant); then every reading is validated (400 "Validation error" with field errors for the whole
  batch, nothing stored; an empty list is 400 "No readings provided"); then one transaction with,
  per reading, SAVEPOINT, INSERT ... RETURNING, a verification SELECT (see
  :mod:`metersync.server.metertrack_store`). Its own ids, arrival time, no de-duplication, JSON
  numbers as float64. 200 ``{"success":true,"recordsProcessed":N,"message":...,"inserted":N,
  "skipped":M,"errors":[...]}``; a failed transaction is 500 "Batch upload error".
* ``GET /api/sync/readings`` and every other unknown route: 404 "Route not found".
* ``GET /api/health``: 200 ``{"status":"OK",...}`` (``"Degraded"`` when its database does not
  answer); no contract fields.

Faults (``--faults``, ``POST /admin/faults``; the reference server's spec syntax, read the way this
profile can use it): ``fail=N:500`` / ``random=F:500`` answer "Batch upload error" before storing
(``:401`` answers "Invalid API key"; another status answers the error handler's body);
``delay=S[:N]`` stores the batch, then waits S seconds before replying (a client read timeout
then leaves a stored batch behind); ``drop_after_commit=N`` stores it and closes the connection
without a reply; ``reject=FIELD:VALUE`` makes the INSERT of matching readings fail (skipped,
reported by meter). The admin API adds what the original lacks, for verification: copies per sent
``meter_reading_id``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from metersync.errors import ConfigError
from metersync.server.admin_auth import admin_json, guard_admin, tenant_fields, tenant_name
from metersync.server.app import key_digest
from metersync.server.faults import BATCH_PATH, FaultPlan
from metersync.server.metertrack_rules import (
    BodyParseError,
    js_json_values,
    parse_body,
    validation_errors,
)
from metersync.server.metertrack_store import MeterTrackStore, TransactionFailed

log = logging.getLogger("metersync.server.metertrack")

#: The original's JSON body parser limit ("10mb"), counted after inflating gzip.
MAX_BODY_BYTES = 10 * 1024 * 1024
HEALTH_PATH = "/api/health"

# Fault kinds of the reference server this profile has no use for.
_UNSUPPORTED = (
    "throttle_count",
    "throttle_rate",
    "miscount",
    "legacy",
    "malformed_page",
    "oversize_page",
    "garbage_page",
)


def check_plan(plan: FaultPlan) -> FaultPlan:
    """``plan`` if this profile can inject it, else a ConfigError naming what it cannot."""
    unusable = [name for name in _UNSUPPORTED if getattr(plan, name)]
    if plan.path != BATCH_PATH:
        unusable.append("path")
    if unusable:
        raise ConfigError(
            "fault plan: not available with the metertrack profile: " + ", ".join(unusable)
        )
    return plan


@dataclass
class MeterTrackFaults:
    """Running state of one fault plan in this profile."""

    plan: FaultPlan
    injected: Counter[str]
    _left: dict[str, int] = field(init=False)
    _delay_left: int | None = field(init=False)
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        check_plan(self.plan)
        self._left = {
            "fail": self.plan.fail_count,
            "drop_after_commit": self.plan.drop_after_commit,
        }
        self._delay_left = self.plan.delay_count
        self._rng = random.Random(self.plan.seed)

    def failure(self) -> int | None:
        """The status to fail this upload with before storing, if any."""
        if self._left["fail"] > 0:
            self._left["fail"] -= 1
            self.injected["fail"] += 1
            return self.plan.fail_status
        if self.plan.fail_rate and self._rng.random() < self.plan.fail_rate:
            self.injected["random"] += 1
            return self.plan.fail_rate_status
        return None

    def reply_delay(self) -> float:
        """Seconds to wait, after the commit, before replying."""
        if self.plan.delay > 0 and (self._delay_left is None or self._delay_left > 0):
            if self._delay_left is not None:
                self._delay_left -= 1
            self.injected["delay"] += 1
            return self.plan.delay
        return 0.0

    def drop_after_commit(self) -> bool:
        """True when this upload's connection is to be closed after the commit, unanswered."""
        if self._left["drop_after_commit"] > 0:
            self._left["drop_after_commit"] -= 1
            self.injected["drop_after_commit"] += 1
            return True
        return False

    def rejection(self, reading: dict[str, Any]) -> str | None:
        """The rule that makes this reading's INSERT fail, if any."""
        for rule in self.plan.reject:
            if rule.matches(reading):
                self.injected["reject"] += 1
                return f"{rule.field}={rule.value}"
        return None


@dataclass
class MeterTrackState:
    """Everything the emulation's handlers share."""

    store: MeterTrackStore
    admin_token: str | None = None
    reading_delay: float = 0.0
    started: float = field(default_factory=time.monotonic)
    counters: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    faults_injected: Counter[str] = field(default_factory=Counter)
    faults: MeterTrackFaults = field(init=False)

    def __post_init__(self) -> None:
        self.set_faults(FaultPlan())

    def set_faults(self, plan: FaultPlan) -> None:
        """Replace the fault plan (ConfigError for faults this profile cannot inject)."""
        self.faults = MeterTrackFaults(check_plan(plan), self.faults_injected)

    def reset_stats(self) -> None:
        """Zero the counters (not the rows, not the plan)."""
        self.counters.clear()
        self.statuses.clear()
        self.faults_injected.clear()


MT_STATE = web.AppKey("metertrack_state", MeterTrackState)


def _timestamp() -> str:
    """``new Date().toISOString()``."""
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def _json(data: Any, status: int = 200) -> web.Response:
    # Numbers as Node prints them (the readings' values were parsed as float64).
    body = orjson.dumps(js_json_values(data))
    return web.Response(body=body, status=status, content_type="application/json")


def _internal_error(status: int = 500) -> web.Response:
    # The global error handler in production: whatever went wrong, the same 500 (an injected
    # failure may answer it with another status).
    return _json(
        {"success": False, "message": "Internal server error", "timestamp": _timestamp()}, status
    )


def _batch_error(message: str) -> web.Response:
    return _json(
        {
            "success": False,
            "recordsProcessed": 0,
            "message": "Batch upload error",
            "error": message,
        },
        500,
    )


def _admin_error(status: int, message: str) -> web.Response:
    # The admin API is ours, not the original's: errors in the reference server's shape.
    return _json({"success": False, "error": message}, status)


class _Drop(Exception):
    """Close the connection without answering (after commit)."""


@web.middleware
async def _middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    state = request.app[MT_STATE]
    if request.path.startswith("/admin"):
        return await guard_admin(request, handler, state.admin_token, _admin_error)
    status = "500"
    try:
        try:
            response = await handler(request)
        except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
            response = _json({"success": False, "message": "Route not found"}, 404)
        except psycopg.Error as exc:
            # E.g. the API key lookup while its database is down: the global error handler.
            log.warning("error outside the batch transaction: %s", exc)
            response = _internal_error()
        status = str(response.status)
        return response
    except _Drop:
        status = "dropped"
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=204)  # written into a closed transport, never seen
    finally:
        state.statuses[status] += 1
        state.counters["requests"] += 1


async def health(request: web.Request) -> web.Response:
    """``GET /api/health``: the original's shape, never the metersync contract fields."""
    state = request.app[MT_STATE]
    up = await state.store.ping()
    return _json(
        {
            "status": "OK" if up else "Degraded",
            "timestamp": _timestamp(),
            "uptime": round(time.monotonic() - state.started, 3),
            "environment": "production",
            "database": "connected" if up else "disconnected",
            "version": "1.0.0",
        }
    )


async def upload_batch(request: web.Request) -> web.StreamResponse:
    """``POST /api/sync/readings/batch``, the original's way (module docstring)."""
    state = request.app[MT_STATE]
    # 1. The global JSON body parser runs before any route: limit, gzip, JSON.parse.
    try:
        raw = await request.read()
    except ConnectionError:
        raise _Drop from None  # the client went away mid-body: nobody to answer
    except (web.HTTPRequestEntityTooLarge, HttpProcessingError, RequestPayloadError):
        request.content.feed_eof()
        response = _internal_error()
        response.force_close()
        return response
    if "json" in request.headers.get("Content-Type", "").lower():
        try:
            body = parse_body(raw) if raw else {}
        except BodyParseError:
            return _internal_error()
        if not isinstance(body, (dict, list)):  # the parser's strict mode: objects and arrays
            return _internal_error()
    else:
        body = {}  # express.json() leaves other content types alone: req.body is {}
    # 2. The API key.
    key = request.headers.get("X-API-Key")
    if not key:
        return _json({"success": False, "message": "API key required"}, 401)
    tenant = await state.store.tenant_for_key(key_digest(key))
    if tenant is None or not tenant[1]:
        return _json({"success": False, "message": "Invalid API key"}, 401)
    tenant_id = tenant[0]
    # 3. Validation of every reading (the validators run over readings.*).
    readings = body.get("readings") if isinstance(body, dict) else None
    if isinstance(readings, list):
        errors = validation_errors(readings)
        if errors:
            state.counters["validation_errors"] += 1
            return _json({"success": False, "message": "Validation error", "errors": errors}, 400)
    if not isinstance(readings, list) or not readings:
        return _json({"success": False, "message": "No readings provided"}, 400)
    state.counters["batches_received"] += 1
    state.counters["readings_received"] += len(readings)
    # 4. Injected failure before storing.
    faults = state.faults
    failure = faults.failure()
    if failure is not None:
        if failure == 401:
            return _json({"success": False, "message": "Invalid API key"}, 401)
        if failure == 500:
            return _batch_error("injected fault: the batch was not stored")
        return _internal_error(failure)
    # 5. One transaction, one reading after the other.
    try:
        outcome = await state.store.store_batch(
            tenant_id, readings, reject=faults.rejection, reading_delay=state.reading_delay
        )
    except TransactionFailed as exc:
        log.warning("batch upload error: %s", exc)
        return _batch_error(str(exc))
    inserted, skipped = outcome.inserted, len(outcome.errors)
    state.counters["inserted"] += inserted
    state.counters["skipped"] += skipped
    if faults.drop_after_commit():
        raise _Drop
    delay = faults.reply_delay()
    if delay:
        await asyncio.sleep(delay)
    return _json(
        {
            "success": True,
            "recordsProcessed": inserted,
            "message": f"Batch upload completed: {inserted} inserted, {skipped} skipped",
            "inserted": inserted,
            "skipped": skipped,
            "errors": outcome.errors,
        }
    )


# -- admin API (not part of the original: tenants, faults, and counting copies) -------------


async def admin_tenants(request: web.Request) -> web.Response:
    """``POST /admin/tenants`` ``{tenant_id, api_key, name, active}``: register or replace."""
    state = request.app[MT_STATE]
    data = await admin_json(request)
    tenant_id, api_key = tenant_fields(data)
    name, active = tenant_name(data), data.get("active", True)
    if not isinstance(active, bool):
        raise ConfigError("active must be true or false")
    try:
        await state.store.upsert_tenant(tenant_id, key_digest(api_key), name, active)
    except psycopg.errors.UniqueViolation:
        return _json({"success": False, "error": "this api_key is taken by another tenant"}, 409)
    return _json({"tenant_id": tenant_id, "name": name, "active": active})


async def admin_set_faults(request: web.Request) -> web.Response:
    """``POST /admin/faults``: a plan (JSON fields or ``{"spec": ...}``) this profile can use."""
    state = request.app[MT_STATE]
    plan = FaultPlan.from_dict(await admin_json(request))
    state.set_faults(plan)
    return _json(plan.to_dict())


async def admin_clear_faults(request: web.Request) -> web.Response:
    """``DELETE /admin/faults``."""
    request.app[MT_STATE].set_faults(FaultPlan())
    return _json(FaultPlan().to_dict())


async def admin_stats(request: web.Request) -> web.Response:
    """``GET /admin/stats``: rows, distinct sent ids, duplicate copies, counters, faults."""
    state = request.app[MT_STATE]
    per_tenant = await state.store.stats()
    rows = sum(n for n, _, _ in per_tenant.values())
    with_id = sum(s for _, s, _ in per_tenant.values())
    distinct = sum(d for _, _, d in per_tenant.values())
    return _json(
        {
            "profile": "metertrack",
            "total_rows": rows,
            "rows_per_tenant": {str(t): n for t, (n, _, _) in per_tenant.items()},
            "distinct_sent_ids": distinct,
            "rows_without_sent_id": rows - with_id,
            # Rows beyond the first per sent id (kept ids are per tenant).
            "duplicate_copies": with_id - distinct,
            "tenants": {
                str(t): {"rows": n, "distinct_sent_ids": d, "duplicate_copies": s - d}
                for t, (n, s, d) in per_tenant.items()
            },
            "requests": state.counters["requests"],
            "batches_received": state.counters["batches_received"],
            "readings_received": state.counters["readings_received"],
            "inserted": state.counters["inserted"],
            "skipped": state.counters["skipped"],
            "validation_errors": state.counters["validation_errors"],
            "requests_per_status": dict(state.statuses),
            "faults_injected": dict(state.faults_injected),
            "fault_plan": state.faults.plan.to_dict(),
        }
    )


async def admin_copies(request: web.Request) -> web.Response:
    """``GET /admin/copies?tenant_id=T&min_copies=2`` or ``POST /admin/copies``
    ``{"tenant_id": T, "ids": [...], "min_copies": 1}``: rows per sent meter_reading_id."""
    state = request.app[MT_STATE]
    data: dict[str, Any]
    if request.method == "POST":
        data = await admin_json(request)
    else:
        data = dict(request.query)
        for name in ("tenant_id", "min_copies"):
            if name in data:
                try:
                    data[name] = int(data[name])
                except ValueError:
                    raise ConfigError(f"{name} must be an integer") from None
    tenant_id, ids = data.get("tenant_id"), data.get("ids")
    min_copies = data.get("min_copies", 1)
    if tenant_id is not None and (not isinstance(tenant_id, int) or isinstance(tenant_id, bool)):
        raise ConfigError("tenant_id must be an integer")
    if ids is not None and (not isinstance(ids, list) or not all(isinstance(i, str) for i in ids)):
        raise ConfigError("ids must be a list of strings")
    if not isinstance(min_copies, int) or min_copies < 1:
        raise ConfigError("min_copies must be an integer >= 1")
    copies = await state.store.copies(tenant_id, ids, min_copies)
    return _json({"copies": copies})


async def admin_reset_stats(request: web.Request) -> web.Response:
    """``POST /admin/stats/reset``: zero the counters (rows stay)."""
    request.app[MT_STATE].reset_stats()
    return _json({"reset": True})


async def admin_reset(request: web.Request) -> web.Response:
    """``POST /admin/reset``: delete every tenant and reading, zero stats, clear faults."""
    state = request.app[MT_STATE]
    await state.store.reset()
    state.reset_stats()
    state.set_faults(FaultPlan())
    return _json({"reset": True})


def create_metertrack_app(
    store: MeterTrackStore,
    *,
    admin_token: str | None = None,
    faults: FaultPlan | None = None,
    reading_delay_ms: float = 0.0,
) -> web.Application:
    """Build the emulation's aiohttp application over an opened :class:`MeterTrackStore`."""
    if reading_delay_ms < 0:
        raise ConfigError(f"reading delay must be >= 0 ms, got {reading_delay_ms}")
    state = MeterTrackState(store, admin_token=admin_token, reading_delay=reading_delay_ms / 1000)
    if faults is not None:
        state.set_faults(faults)
    app = web.Application(middlewares=[_middleware], client_max_size=MAX_BODY_BYTES)
    app[MT_STATE] = state
    app.router.add_get(HEALTH_PATH, health)
    app.router.add_post(BATCH_PATH, upload_batch)
    app.router.add_post("/admin/tenants", admin_tenants)
    app.router.add_post("/admin/faults", admin_set_faults)
    app.router.add_delete("/admin/faults", admin_clear_faults)
    app.router.add_get("/admin/stats", admin_stats)
    app.router.add_get("/admin/copies", admin_copies)
    app.router.add_post("/admin/copies", admin_copies)
    app.router.add_post("/admin/stats/reset", admin_reset_stats)
    app.router.add_post("/admin/reset", admin_reset)
    return app

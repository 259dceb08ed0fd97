"""The admin API's guard and request helpers, shared by every server profile (issue 11, item 3).

The admin API can delete everything (``POST /admin/reset``), so it is never open: a server
started without a token makes one (:func:`new_admin_token`) and says it; an app built without
any token refuses every admin call.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from metersync.errors import ConfigError

ADMIN_TOKEN_HEADER = "X-Admin-Token"


def new_admin_token() -> str:
    """A fresh random admin token (URL-safe, 32 characters)."""
    return secrets.token_urlsafe(24)


def admin_refusal(token: str | None, supplied: str | None) -> str | None:
    """Why an admin request carrying ``supplied`` is refused, or None when it may proceed."""
    if token is None:
        return "the admin API is disabled: this server has no admin token"
    if not supplied or not hmac.compare_digest(supplied.encode(), token.encode()):
        return f"missing or wrong {ADMIN_TOKEN_HEADER}"
    return None


async def guard_admin(
    request: web.Request,
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    token: str | None,
    error: Callable[[int, str], web.Response],
) -> web.StreamResponse:
    """Run an admin ``handler`` behind the token check: 401 when refused, 400 for the
    ConfigError a handler raises on bad input (each profile answers with its own ``error``)."""
    refusal = admin_refusal(token, request.headers.get(ADMIN_TOKEN_HEADER))
    if refusal is not None:
        return error(401, refusal)
    try:
        return await handler(request)
    except ConfigError as exc:
        return error(400, str(exc))


async def admin_json(request: web.Request) -> dict[str, Any]:
    """An admin request's body as a JSON object (ConfigError saying what is wrong otherwise)."""
    try:
        data = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError("body must be a JSON object")
    return data


def tenant_fields(data: dict[str, Any]) -> tuple[int, str]:
    """``tenant_id`` and ``api_key`` of a ``POST /admin/tenants`` body, checked (ConfigError)."""
    tenant_id, api_key = data.get("tenant_id"), data.get("api_key")
    if not isinstance(tenant_id, int) or isinstance(tenant_id, bool):
        raise ConfigError("tenant_id must be an integer")
    if not isinstance(api_key, str) or not api_key:
        raise ConfigError("api_key must be a non-empty string")
    return tenant_id, api_key


def tenant_name(data: dict[str, Any]) -> str | None:
    """``name`` of a ``POST /admin/tenants`` body: a string or null (ConfigError otherwise)."""
    name = data.get("name")
    if name is not None and not isinstance(name, str):
        raise ConfigError("name must be a string or null")
    return name

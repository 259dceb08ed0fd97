"""The Client System HTTP client (SPEC §7): uploads, download pages, health, connectivity.

Failure policy:

* connection errors, timeouts, 408, 429 and 5xx are *transient*: retried with exponential
  backoff and full jitter (``uniform(0, min(backoff_max, backoff_base * 2**attempt))``), or
  after ``Retry-After`` when the server sends one (capped at ``backoff_max``), up to
  ``max_retries`` retries; then :class:`RemoteUnavailableError`;
* 401/403 → :class:`AuthError`, 400 → :class:`BadRequestError`, 413 →
  :class:`PayloadTooLargeError`, any other status → :class:`ClientSystemError`, none retried;
* a 200 whose counts do not add up (or whose shape is wrong) → :class:`InconsistentResponseError`,
  *not* retried: a server that miscounts once will miscount again, and the batch is only failed,
  not lost (nothing is marked; the next cycle sends it again and the server's idempotency by
  ``meter_reading_id`` keeps one copy). A response lost on the wire (connection dropped after
  the server committed) is a connection error and *is* retried, with the same
  ``Idempotency-Key``: the retry then reports the readings as duplicates.

The API key travels only in the ``X-API-Key`` header; it never appears in logs, exception
messages or ``repr``.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import gzip
import ipaddress
import json
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import orjson

from metersync.errors import (
    AuthError,
    BadRequestError,
    ClientSystemError,
    ConfigError,
    InconsistentResponseError,
    MalformedPageError,
    PayloadTooLargeError,
    RemoteUnavailableError,
)

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "http://127.0.0.1:3001/api"
BATCH_PATH = "/sync/readings/batch"
READINGS_PATH = "/sync/readings"
HEALTH_PATH = "/health"
# zlib level 5: about 3/4 of level 9's saving at a third of its CPU time on reading JSON.
_GZIP_LEVEL = 5
# Bodies above this are compressed in a worker thread (zlib releases the GIL) so that a
# multi-megabyte batch does not stall the event loop.
_GZIP_THREAD_BYTES = 256 * 1024
_RETRY_STATUSES = frozenset({408, 429})


@dataclass(frozen=True)
class UploadResult:
    """The Client System's answer to one batch: confirmed = ``inserted + duplicates``.

    ``rejected`` maps each individually rejected ``meter_reading_id`` to the server's error
    text; every other reading of the batch was confirmed. ``attempts`` counts HTTP requests.
    """

    inserted: int
    duplicates: int
    rejected: dict[str, str]
    attempts: int

    @property
    def confirmed(self) -> int:
        """Readings the Client System holds after this batch."""
        return self.inserted + self.duplicates


@dataclass(frozen=True)
class DownloadPage:
    """One download page: the readings as parsed JSON objects and the cursor of the next page."""

    readings: list[dict[str, Any]]
    next_cursor: str | None


@dataclass(frozen=True)
class ConnectivityState:
    """Result of the connectivity checks: ``online`` is None until the first check."""

    online: bool | None = None
    changed_at: datetime | None = None
    last_checked_at: datetime | None = None


@functools.lru_cache(maxsize=8)
def _ssl_context(verify: bool | str) -> ssl.SSLContext:
    # Loading the CA bundle costs ~0.1 s per context; a verifying context is immutable in use
    # and safe to share between clients, so each (bundle) is loaded once per process.
    if isinstance(verify, str):
        path = Path(verify)
        if not path.exists():
            raise ConfigError(f"verify: CA bundle {verify!r} does not exist")
        if path.is_dir():
            return ssl.create_default_context(capath=verify)
        return ssl.create_default_context(cafile=verify)
    return httpx.create_ssl_context(verify=True)


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and addresses in 127.0.0.0/8 or ``::1``."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date), or None."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


class ClientSystemApiClient:
    """Async client of the Client System (httpx), one per tenant API key.

    Parameters:
        base_url: API root, e.g. ``https://cs.example.com/api``.
        api_key: the tenant's key, sent as ``X-API-Key`` (None: only :meth:`health` works).
        connect_timeout, read_timeout: seconds (the read timeout also bounds writes).
        max_retries: retries of a transient failure after the first attempt.
        backoff_base, backoff_max: full-jitter backoff parameters, in seconds.
        gzip_min_bytes: gzip upload bodies of at least this many bytes (None: never).
        verify: TLS verification: True, or a CA bundle path; False only for loopback hosts.
        allow_insecure: permit ``verify=False`` and plain ``http://`` towards other hosts (the
            key then travels unprotected; logged at WARNING).
        transport: an httpx transport to use instead of the network (tests of odd servers).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        max_retries: int = 5,
        backoff_base: float = 0.25,
        backoff_max: float = 30.0,
        gzip_min_bytes: int | None = None,
        verify: bool | str = True,
        allow_insecure: bool = False,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if max_retries < 0:
            raise ConfigError(f"max_retries must be >= 0, got {max_retries}")
        if backoff_base < 0 or backoff_max < 0:
            raise ConfigError("backoff_base and backoff_max must be >= 0")
        if connect_timeout <= 0 or read_timeout <= 0:
            raise ConfigError("connect_timeout and read_timeout must be > 0")
        if gzip_min_bytes is not None and gzip_min_bytes < 0:
            raise ConfigError(f"gzip_min_bytes must be >= 0 or None, got {gzip_min_bytes}")
        if api_key is not None and (
            not api_key or any(not (0x20 < ord(c) < 0x7F) for c in api_key)
        ):
            # Said without echoing the key: it is a secret even when malformed.
            raise ConfigError("api_key must be non-empty printable ASCII without spaces")
        url = httpx.URL(base_url.rstrip("/"))
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigError(f"base_url must be an http(s) URL with a host, got {base_url!r}")
        self._check_transport_security(url, verify, allow_insecure)
        self.base_url = str(url)
        self._api_key = api_key
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.gzip_min_bytes = gzip_min_bytes
        timeout = httpx.Timeout(
            connect=connect_timeout, read=read_timeout, write=read_timeout, pool=connect_timeout
        )
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=timeout,
            verify=_ssl_context(verify) if verify is not False else False,
            transport=transport,
        )
        self._health_timeout = httpx.Timeout(min(connect_timeout, read_timeout, 5.0))
        self._rng = random.Random()
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        self._connectivity = ConnectivityState()
        self._checker: asyncio.Task[None] | None = None

    @staticmethod
    def _check_transport_security(url: httpx.URL, verify: bool | str, allow_insecure: bool) -> None:
        loopback = is_loopback_host(url.host)
        if verify is False and url.scheme == "https":
            if not loopback and not allow_insecure:
                raise ConfigError(
                    f"verify=False is refused for non-loopback host {url.host!r}: it would send "
                    "the API key to anyone who intercepts the connection (allow_insecure=True "
                    "overrides)"
                )
            log.warning(
                "TLS CERTIFICATE VERIFICATION IS OFF for %s: the API key is not protected "
                "against interception",
                url.host,
            )
        if url.scheme == "http" and not loopback:
            if not allow_insecure:
                raise ConfigError(
                    f"plain http:// to non-loopback host {url.host!r} would send the API key in "
                    "clear text; use https:// (or allow_insecure=True)"
                )
            log.warning("PLAIN HTTP to %s: the API key travels in clear text", url.host)

    def __repr__(self) -> str:
        key = "<set>" if self._api_key else None
        return f"ClientSystemApiClient(base_url={self.base_url!r}, api_key={key})"

    # -- requests --------------------------------------------------------------------------

    async def post_batch(
        self, readings_json: bytes, count: int, *, idempotency_key: str
    ) -> UploadResult:
        """Upload one batch and return the Client System's per-reading verdict.

        Parameters:
            readings_json: the JSON array of readings (the codec's output), sent as-is inside
                ``{"readings": ...}``.
            count: how many readings the array holds (checked against the answer's counts).
            idempotency_key: sent as ``Idempotency-Key``, the same on every retry.
        """
        if not idempotency_key or any(not (0x20 < ord(c) < 0x7F) for c in idempotency_key):
            raise ConfigError("idempotency_key must be non-empty printable ASCII without spaces")
        body = b'{"readings":' + readings_json + b"}"
        headers = {"Content-Type": "application/json", "Idempotency-Key": idempotency_key}
        if self.gzip_min_bytes is not None and len(body) >= self.gzip_min_bytes:
            if len(body) >= _GZIP_THREAD_BYTES:
                body = await asyncio.to_thread(gzip.compress, body, _GZIP_LEVEL)
            else:
                body = gzip.compress(body, _GZIP_LEVEL)
            headers["Content-Encoding"] = "gzip"
        response, attempts = await self._request("POST", BATCH_PATH, content=body, headers=headers)
        return _upload_result(response, count, attempts)

    async def get_readings(self, limit: int, after: str | None = None) -> DownloadPage:
        """Fetch one page of the tenant's readings (at most ``limit``) after cursor ``after``."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigError(f"limit must be a positive integer, got {limit!r}")
        params: dict[str, str | int] = {"limit": limit}
        if after is not None:
            params["after"] = after
        response, _ = await self._request("GET", READINGS_PATH, params=params)
        return _download_page(response)

    async def health(self) -> bool:
        """One ``GET /health`` (no key, no retry); True when it answers 200 ``{"status":"ok"}``.

        Updates :attr:`connectivity`.
        """
        ok = False
        started = time.perf_counter()
        try:
            response = await self._http.get(HEALTH_PATH, timeout=self._health_timeout)
        except httpx.HTTPError as exc:
            log.debug("GET %s failed: %s", HEALTH_PATH, _describe(exc))
        else:
            self._log_response("GET", HEALTH_PATH, response, 0, started)
            if response.status_code == 200:
                with contextlib.suppress(orjson.JSONDecodeError):
                    body = orjson.loads(response.content)
                    ok = isinstance(body, dict) and body.get("status") == "ok"
        self._record_connectivity(ok)
        return ok

    async def _request(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str | int] | None = None,
    ) -> tuple[httpx.Response, int]:
        """Send with the retry policy; the 2xx response and the number of attempts."""
        if self._api_key is None:
            raise AuthError("no API key configured for the Client System client")
        all_headers = {"X-API-Key": self._api_key, **(headers or {})}
        attempt = 0
        while True:
            attempt += 1
            started = time.perf_counter()
            retry_after: float | None = None
            try:
                response = await self._http.request(
                    method, path, content=content, headers=all_headers, params=params
                )
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                status: int | None = None
                cause = _describe(exc)
                log.debug("%s %s failed: %s", method, path, cause)
            except httpx.HTTPError as exc:  # local protocol errors, unsupported URL: not transient
                raise ClientSystemError(f"{method} {path} failed: {_describe(exc)}") from None
            else:
                self._log_response(method, path, response, len(content or b""), started)
                status = response.status_code
                if 200 <= status < 300:
                    return response, attempt
                _raise_for_final_status(method, path, response)
                cause = f"HTTP {status}{_error_text(response)}"
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if attempt > self.max_retries:
                raise RemoteUnavailableError(
                    f"{method} {path}: Client System unavailable after {attempt} attempts "
                    f"(last: {cause})",
                    status=status,
                )
            delay = self._backoff(attempt, retry_after)
            log.warning(
                "%s %s: %s; retry %d of %d in %.2f s",
                method,
                path,
                cause,
                attempt,
                self.max_retries,
                delay,
            )
            await self._sleep(delay)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(self.backoff_max, retry_after)
        ceiling = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
        return self._rng.uniform(0.0, ceiling)

    @staticmethod
    def _log_response(
        method: str, path: str, response: httpx.Response, sent: int, started: float
    ) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s %s -> %d (%d bytes out, %d bytes in, %.1f ms)",
                method,
                path,
                response.status_code,
                sent,
                len(response.content),
                (time.perf_counter() - started) * 1000,
            )

    # -- connectivity ----------------------------------------------------------------------

    @property
    def connectivity(self) -> ConnectivityState:
        """The latest connectivity state (a snapshot)."""
        return self._connectivity

    def _record_connectivity(self, online: bool) -> None:
        now = datetime.now(UTC)
        previous = self._connectivity
        changed_at = previous.changed_at
        if previous.online is not online:
            changed_at = now
            if previous.online is not None:
                level = logging.INFO if online else logging.WARNING
                log.log(level, "Client System is %s", "online" if online else "OFFLINE")
        self._connectivity = ConnectivityState(online, changed_at, now)

    def start_connectivity_checks(self, interval_ms: int) -> None:
        """Run :meth:`health` every ``interval_ms`` in a background task (needs a running loop)."""
        if interval_ms <= 0:
            raise ConfigError(f"connectivity check interval must be > 0 ms, got {interval_ms}")
        if self._checker is not None and not self._checker.done():
            raise RuntimeError("connectivity checks already running")
        self._checker = asyncio.get_running_loop().create_task(
            self._check_loop(interval_ms / 1000.0), name="metersync-connectivity"
        )

    async def _check_loop(self, interval: float) -> None:
        while True:
            try:
                await self.health()
            except Exception:  # never let the checker die silently: count it as offline
                log.exception("connectivity check failed unexpectedly")
                self._record_connectivity(False)
            await asyncio.sleep(interval)

    async def stop_connectivity_checks(self) -> None:
        """Stop the background checks (idempotent)."""
        task, self._checker = self._checker, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- lifecycle -------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop the checks and close the connection pool."""
        await self.stop_connectivity_checks()
        await self._http.aclose()

    async def __aenter__(self) -> ClientSystemApiClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _describe(exc: httpx.HTTPError) -> str:
    # httpx messages name the URL at most, never headers; fall back to the type for empty ones.
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _clip(text: str, limit: int = 80) -> str:
    """Server-sent text echoed into an error, cut to ``limit`` characters (errors are logged and
    stored in sync_log: a hostile answer must not become a 100 KB message)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} chars)"


def _error_text(response: httpx.Response) -> str:
    """The server's error message, if it sent one in the usual shape (short)."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return ""
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return f": {body['error'][:200]}"
    return ""


def _raise_for_final_status(method: str, path: str, response: httpx.Response) -> None:
    status = response.status_code
    if status in _RETRY_STATUSES or 500 <= status <= 599:
        return
    what = f"{method} {path} -> HTTP {status}{_error_text(response)}"
    if status in (401, 403):
        raise AuthError(f"{what} (API key refused)", status=status)
    if status == 400:
        raise BadRequestError(what, status=status)
    if status == 413:
        raise PayloadTooLargeError(what, status=status)
    raise ClientSystemError(what, status=status)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _upload_result(response: httpx.Response, count: int, attempts: int) -> UploadResult:
    def bad(why: str) -> InconsistentResponseError:
        return InconsistentResponseError(
            f"upload answer rejected ({why}); the batch of {count} counts as failed",
            status=response.status_code,
        )

    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise bad("not JSON") from None
    if not isinstance(body, dict) or body.get("success") is not True:
        raise bad('no "success": true')
    if "recordsProcessed" in body and "inserted" not in body:
        # The old server: all or nothing.
        processed = body["recordsProcessed"]
        if not _is_count(processed) or processed != count:
            raise bad(f"recordsProcessed={_clip(repr(processed))} for {count} sent")
        return UploadResult(processed, 0, {}, attempts)
    inserted, duplicates, rejected_list = (
        body.get("inserted"),
        body.get("duplicates"),
        body.get("rejected"),
    )
    if not (_is_count(inserted) and _is_count(duplicates) and isinstance(rejected_list, list)):
        raise bad("inserted, duplicates or rejected missing or of the wrong type")
    rejected: dict[str, str] = {}
    for item in rejected_list:
        if not (
            isinstance(item, dict)
            and isinstance(item.get("meter_reading_id"), str)
            and isinstance(item.get("error"), str)
        ):
            raise bad("a rejected entry is not {meter_reading_id, error}")
        rejected[item["meter_reading_id"]] = item["error"]
    if len(rejected) != len(rejected_list):
        raise bad("a meter_reading_id is rejected twice")
    total = inserted + duplicates + len(rejected)
    if total != count:
        raise bad(
            f"inserted {inserted} + duplicates {duplicates} + rejected {len(rejected)} = "
            f"{total}, but {count} were sent"
        )
    return UploadResult(inserted, duplicates, rejected, attempts)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid JSON number")


def _download_page(response: httpx.Response) -> DownloadPage:
    # Exact numbers, not orjson: float64 keeps 15-17 significant digits and numeric(18,4) has 18
    # (99999999999999.9999 would come back damaged). Fractions become Decimal, integers int.
    try:
        body = json.loads(response.content, parse_float=Decimal, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedPageError(f"download page is not valid JSON: {_clip(str(exc))}") from None
    if not isinstance(body, dict):
        raise MalformedPageError("download page is not a JSON object")
    readings, cursor = body.get("readings"), body.get("next_cursor", ...)
    if not isinstance(readings, list):
        raise MalformedPageError('download page has no "readings" list')
    if cursor is ... or not (cursor is None or isinstance(cursor, str)):
        raise MalformedPageError('download page\'s "next_cursor" is missing or not a string/null')
    for i, reading in enumerate(readings):
        if not isinstance(reading, dict):
            raise MalformedPageError(f"download page: reading {i} is not a JSON object")
    return DownloadPage(readings, cursor)

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

Against a Client System that is NOT idempotent (the ``metertrack`` profile, see
:mod:`metersync.remote.profiles`) a resend stores a second copy, so only failures that *prove*
nothing was stored are retried: the request never left (connection refused, connect timeout),
401/403, 400, 408, 413, 429 and other 4xx, and a 5xx whose body says the batch failed
(``"success": false`` with ``"recordsProcessed": 0``, MeterTrack's ``Batch upload error``).
Anything else — a read timeout, a connection dropped after the request was sent, another 5xx,
an answer that cannot be understood — raises :class:`OutcomeUnknownError` at once, never a
resend; the engine then holds the batch ``in_doubt``. In that profile the read timeout grows
with the batch (``read_timeout + read_timeout_per_reading * count``) so that a healthy but slow
server is not cut off in the middle of a batch.

The server's own words (``message``, ``errors[].msg``, ``error``) are part of every error's
text, whatever the status code.

The API key travels only in the ``X-API-Key`` header; it never appears in logs, exception
messages or ``repr``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import email.utils
import functools
import gzip
import ipaddress
import json
import logging
import random
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import orjson
import pyarrow as pa

from metersync.errors import (
    AuthError,
    BadRequestError,
    ClientSystemError,
    ConfigError,
    InconsistentResponseError,
    OutcomeUnknownError,
    PayloadTooLargeError,
    RemoteUnavailableError,
)
from metersync.remote import profiles
from metersync.remote.page import parse_page
from metersync.remote.profiles import ClientProfile
from metersync.remote.transport import Http1Transport

#: An Idempotency-Key: printable ASCII without spaces, at least one character.
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]+")

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
# Download pages of at least this many bytes are parsed in a worker thread (a 1000-reading wide
# page is ~1.3 MB and takes ~2 ms to parse; the hop to a thread costs ~0.1 ms).
_PARSE_THREAD_BYTES = 256 * 1024
#: Header naming the site an upload comes from (only to a server advertising ``site_filter``).
SITE_HEADER = "X-Metersync-Site"
#: Idle keep-alive connections are dropped after this many seconds: below Node's default
#: ``keepAliveTimeout`` (5 s), so a request is never written into a connection the server is
#: closing at that very moment (which would look like a dropped connection: an unknown outcome
#: against a non-idempotent server).
KEEPALIVE_EXPIRY = 2.0
#: Failures where the request provably never reached the server.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
#: How many server-side messages an error line quotes.
_MAX_MESSAGES = 3
#: ``GET /health`` statuses that mean "reachable" (lower-cased).
_REACHABLE = frozenset({"ok", "degraded"})


@dataclass(frozen=True, slots=True)
class MeterError:
    """One entry of MeterTrack's ``errors`` list: it names a meter, not a reading."""

    meter_id: int | None
    error: str


@dataclass(frozen=True, slots=True)
class FieldError:
    """One field error of a 400 answer, attributed to the reading at ``index`` of the body."""

    index: int
    message: str


class FieldValidationError(BadRequestError):
    """400 with per-field errors (MeterTrack's ``Validation error``): nothing was stored.

    ``field_errors`` holds the errors whose ``path`` (``readings[3].voltage_thd``) names a
    reading of the body; ``unattributed`` counts those that name none.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        field_errors: tuple[FieldError, ...] = (),
        unattributed: int = 0,
    ) -> None:
        super().__init__(message, status=status)
        self.field_errors = field_errors
        self.unattributed = unattributed


@dataclass(frozen=True)
class UploadResult:
    """The Client System's answer to one batch: confirmed = ``inserted + duplicates``.

    ``rejected`` maps each individually rejected ``meter_reading_id`` to the server's error
    text; every other reading of the batch was confirmed. ``attempts`` counts HTTP requests.

    MeterTrack's answer (``recordsProcessed``/``inserted``/``skipped``/``errors``) sets
    ``skipped`` and ``meter_errors`` instead: ``skipped`` readings were not stored, and the
    errors name their *meters*, not the readings (the engine attributes them where it can).
    ``message`` is the server's own summary, if it sent one.
    """

    inserted: int
    duplicates: int
    rejected: dict[str, str]
    attempts: int
    skipped: int = 0
    meter_errors: tuple[MeterError, ...] = ()
    message: str | None = None

    @property
    def confirmed(self) -> int:
        """Readings the Client System holds after this batch."""
        return self.inserted + self.duplicates


@dataclass(frozen=True)
class DownloadPage:
    """One download page, checked by the page parser (:mod:`metersync.remote.page`).

    ``batch``: the readings as a record batch of the schema asked for (with a ``schema``), or a
    batch without columns when only the page's shape was checked; ``next_cursor``: where the
    next page starts; ``body``: the page as received; ``rows``: how many readings it holds.
    """

    batch: pa.RecordBatch
    next_cursor: str | None
    body: bytes = b""
    rows: int = 0

    @property
    def readings(self) -> list[dict[str, Any]]:
        """The readings as JSON objects with exact numbers (``Decimal``), for inspection and
        tests; the download engine uses :attr:`batch`."""
        doc = json.loads(self.body, parse_float=Decimal)
        return list(doc["readings"])


@dataclass(frozen=True)
class ConnectivityState:
    """Result of the connectivity checks: ``online`` is None until the first check."""

    online: bool | None = None
    changed_at: datetime | None = None
    last_checked_at: datetime | None = None


@functools.lru_cache(maxsize=8)
def ssl_context_from_bundle(bundle: str) -> ssl.SSLContext:
    """A verifying context from a CA bundle (a file or a directory of hashed certificates).

    Loading a bundle costs ~0.1 s per context; a verifying context is immutable in use and safe
    to share between clients, so each bundle is loaded once per process."""
    path = Path(bundle)
    if not path.exists():
        raise ConfigError(f"verify: CA bundle {bundle!r} does not exist")
    if path.is_dir():
        return ssl.create_default_context(capath=bundle)
    return ssl.create_default_context(cafile=bundle)


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
        client_profile: ``auto`` (negotiate on ``GET /health``), ``metersync`` or
            ``metertrack`` (forced; see :mod:`metersync.remote.profiles`).
        max_body_bytes: override of the profile's body limit (None: the profile's).
        site_id: sent as ``X-Metersync-Site`` with uploads to a server that offers the site
            filter (None: never sent).
        read_timeout_per_reading: seconds added to the read timeout per reading of a batch
            against a non-idempotent server (MeterTrack stores a reading in up to ~11 ms).
        profile: a :class:`ClientProfile` already negotiated with this Client System by another
            client with the same settings (many tenants: one ``GET /health``, not one each).
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
        client_profile: str | None = "auto",
        max_body_bytes: int | None = None,
        site_id: str | None = None,
        read_timeout_per_reading: float = 0.03,
        profile: ClientProfile | None = None,
    ) -> None:
        if max_retries < 0:
            raise ConfigError(f"max_retries must be >= 0, got {max_retries}")
        if backoff_base < 0 or backoff_max < 0:
            raise ConfigError("backoff_base and backoff_max must be >= 0")
        if connect_timeout <= 0 or read_timeout <= 0:
            raise ConfigError("connect_timeout and read_timeout must be > 0")
        if gzip_min_bytes is not None and gzip_min_bytes < 0:
            raise ConfigError(f"gzip_min_bytes must be >= 0 or None, got {gzip_min_bytes}")
        if api_key is not None:
            _check_api_key(api_key)
        url = httpx.URL(base_url.rstrip("/"))
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigError(f"base_url must be an http(s) URL with a host, got {base_url!r}")
        self._check_transport_security(url, verify, allow_insecure)
        self.client_profile = profiles.check_profile_setting(client_profile)
        # Checked now (a bad override is a ConfigError at construction, not at the first POST).
        profiles.with_body_limit(profiles.METERTRACK, max_body_bytes)
        self.max_body_bytes = max_body_bytes
        if site_id is not None and (
            not site_id or len(site_id) > 200 or any(not (0x20 < ord(c) < 0x7F) for c in site_id)
        ):
            raise ConfigError(
                f"site_id must be 1..200 printable ASCII characters without spaces, got {site_id!r}"
            )
        self.site_id = site_id
        if read_timeout_per_reading < 0:
            raise ConfigError(
                f"read_timeout_per_reading must be >= 0, got {read_timeout_per_reading}"
            )
        self.read_timeout_per_reading = read_timeout_per_reading
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        # A profile another client already negotiated with this Client System (a process with
        # many tenants asks GET /health once, not once per tenant); else negotiated on first use.
        self._profile: ClientProfile | None = profile
        self._profile_lock = asyncio.Lock()
        self.base_url = str(url)
        self._api_key = api_key
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.gzip_min_bytes = gzip_min_bytes
        timeout = httpx.Timeout(
            connect=connect_timeout, read=read_timeout, write=read_timeout, pool=connect_timeout
        )
        # A CA bundle is loaded here (cached per process); the system's store only when an
        # https connection needs it (True), never for plain http to loopback.
        context = ssl_context_from_bundle(verify) if isinstance(verify, str) else verify
        if transport is None:  # httpx's API over our HTTP/1.1 wire (metersync.remote.transport)
            transport = Http1Transport(verify=context, keepalive_expiry=KEEPALIVE_EXPIRY)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout, verify=context, transport=transport
        )
        # Requests go straight to the transport (:meth:`_send`): where httpx's send() sends
        # every one of them too, as it mounts no proxy from the environment when it is given
        # a transport.
        self._transport = transport
        self._owns_http = True  # False for a client made by with_key: aclose leaves it open
        self._default_headers = dict(self._http.headers)  # httpx's own defaults, once
        self._urls: dict[str, httpx.URL] = {}  # base_url + path, parsed once per path
        self._health_timeout = httpx.Timeout(min(connect_timeout, read_timeout, 5.0))
        self._rng = random.Random()
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        self._connectivity = ConnectivityState()
        self._checker: asyncio.Task[None] | None = None

    def with_key(self, api_key: str) -> ClientSystemApiClient:
        """A client for another tenant's key with this client's settings, sharing its HTTP
        client (connection pool, parsed URLs) and the profile negotiated so far; retries,
        connectivity state and background checks are its own.

        For many tenants in one process: an ``httpx.AsyncClient`` built per tenant cost about
        1 ms of CPU each (URL parsing, default headers), a third of the scheduler's own time
        for 300 small tenants (issue 12, py-spy). Closing the new client leaves the shared
        HTTP client open; closing this one closes it (close it last).
        """
        _check_api_key(api_key)
        twin = copy.copy(self)
        twin._api_key = api_key
        twin._profile_lock = asyncio.Lock()
        twin._rng = random.Random()
        twin._connectivity = ConnectivityState()
        twin._checker = None
        twin._owns_http = False
        return twin

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
                    "clear text; use an https:// URL (--api-url, METERSYNC_API_URL or api_url in "
                    "metersync.toml; a private CA: --ca-bundle / METERSYNC_CA_BUNDLE / ca_bundle; "
                    "library callers only: allow_insecure=True)"
                )
            log.warning("PLAIN HTTP to %s: the API key travels in clear text", url.host)

    def __repr__(self) -> str:
        key = "<set>" if self._api_key else None
        return f"ClientSystemApiClient(base_url={self.base_url!r}, api_key={key})"

    # -- requests --------------------------------------------------------------------------

    async def profile(self) -> ClientProfile:
        """The Client System's profile: negotiated once (``GET /health``) unless configured.

        ``client_profile="auto"``: a server whose health answer advertises ``contract:
        "metersync"`` gets the capabilities it advertises; any other answer (MeterTrack's
        ``{"status":"OK",...}``, a 404, JSON without the contract) means ``metertrack``. A
        server that cannot be reached (or answers a 5xx without JSON) decides nothing:
        :class:`RemoteUnavailableError`, and the next call asks again. A forced ``metersync``
        still reads the advertised body limit and site filter when the server offers them.
        The ``max_body_bytes`` setting overrides the limit in every case.
        """
        if self._profile is not None:
            return self._profile
        async with self._profile_lock:
            if self._profile is None:
                if self.client_profile == "metertrack":
                    chosen = profiles.configured("metertrack")
                else:
                    advertised = await self._negotiate(required=self.client_profile == "auto")
                    chosen = (
                        advertised
                        if self.client_profile == "auto" and advertised is not None
                        else profiles.configured("metersync", advertised)
                    )
                self._profile = profiles.with_body_limit(chosen, self.max_body_bytes)
                log.info(
                    "Client System %s: profile %s (%s; idempotent=%s, download=%s, "
                    "max_body_bytes=%d, site_filter=%s)",
                    self.base_url,
                    self._profile.name,
                    self._profile.source,
                    self._profile.idempotent,
                    self._profile.download,
                    self._profile.max_body_bytes,
                    self._profile.site_filter,
                )
        return self._profile

    async def _negotiate(self, *, required: bool) -> ClientProfile | None:
        """The advertised profile from one ``GET /health`` (None when undecided and not
        ``required``)."""
        try:
            response = await self._http.get(HEALTH_PATH, timeout=self._health_timeout)
        except httpx.HTTPError as exc:
            if not required:
                return None
            raise RemoteUnavailableError(
                f"GET {HEALTH_PATH}: cannot reach the Client System to learn its profile "
                f"({_describe(exc)}); set client_profile to skip the negotiation"
            ) from None
        body = _json_or_none(response.content)
        if response.status_code >= 500 and not isinstance(body, dict):
            if not required:
                return None
            raise RemoteUnavailableError(
                f"GET {HEALTH_PATH} -> HTTP {response.status_code}{_error_text(response)}: "
                "the Client System's profile is unknown yet",
                status=response.status_code,
            )
        return profiles.from_health(body if response.status_code == 200 else None)

    async def post_batch(
        self, readings_json: bytes, count: int, *, idempotency_key: str
    ) -> UploadResult:
        """Upload one batch and return the Client System's per-reading verdict.

        Parameters:
            readings_json: the JSON array of readings (the codec's output for this client's
                profile), sent as-is inside ``{"readings": ...}``.
            count: how many readings the array holds (checked against the answer's counts).
            idempotency_key: sent as ``Idempotency-Key``, the same on every retry.

        Against a non-idempotent profile an outcome that is not known raises
        :class:`OutcomeUnknownError` (never resent); see the module docstring.
        """
        if _IDEMPOTENCY_KEY.fullmatch(idempotency_key) is None:
            raise ConfigError("idempotency_key must be non-empty printable ASCII without spaces")
        profile = await self.profile()
        body = b'{"readings":' + readings_json + b"}"
        headers = {"Content-Type": "application/json", "Idempotency-Key": idempotency_key}
        if profile.site_filter and self.site_id:
            headers[SITE_HEADER] = self.site_id
        if self.gzip_min_bytes is not None and len(body) >= self.gzip_min_bytes:
            if len(body) >= _GZIP_THREAD_BYTES:
                body = await asyncio.to_thread(gzip.compress, body, _GZIP_LEVEL)
            else:
                body = gzip.compress(body, _GZIP_LEVEL)
            headers["Content-Encoding"] = "gzip"
        timeout = None
        if not profile.idempotent:
            read = self.read_timeout + self.read_timeout_per_reading * max(count, 0)
            timeout = httpx.Timeout(
                connect=self.connect_timeout, read=read, write=read, pool=self.connect_timeout
            )
        response, attempts = await self._request(
            "POST",
            BATCH_PATH,
            content=body,
            headers=headers,
            idempotent=profile.idempotent,
            timeout=timeout,
        )
        try:
            return _upload_result(response, count, attempts)
        except InconsistentResponseError as exc:
            if profile.idempotent:
                raise
            # A 2xx we cannot read: the server may well have stored (some of) the batch.
            raise OutcomeUnknownError(str(exc), status=exc.status) from None

    async def get_readings(
        self,
        limit: int,
        after: str | None = None,
        *,
        schema: pa.Schema | None = None,
        tenant_id: int | None = None,
        unknown_fields: Collection[str] | str | None = None,
        exclude_site: str | None = None,
        on_body: Callable[[bytes], None] | None = None,
    ) -> DownloadPage:
        """Fetch one page of the tenant's readings (at most ``limit``) after cursor ``after``.

        With ``schema`` the page is parsed and validated into a record batch in one pass
        (:func:`metersync.remote.page.parse_page`: ``tenant_id`` is the tenant the readings
        must belong to, ``unknown_fields`` what may be dropped); without, only its shape is
        checked. ``exclude_site``: leave out readings uploaded by that site (a Client System
        whose profile has ``site_filter``). ``on_body``: called with the page as received,
        before it is parsed (the download engine peeks at its cursor there to ask for the next
        page while this one is parsed). A bad page raises :class:`MalformedPageError`.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigError(f"limit must be a positive integer, got {limit!r}")
        params: dict[str, str | int] = {"limit": limit}
        if after is not None:
            params["after"] = after
        if exclude_site is not None:
            params["exclude_site"] = exclude_site
        response, _ = await self._request("GET", READINGS_PATH, params=params)
        body = response.content
        if on_body is not None:
            on_body(body)
        if len(body) >= _PARSE_THREAD_BYTES:
            # The compiled parser releases the GIL: a big page is parsed in a worker thread
            # while the event loop goes on (e.g. writing the previous page to the database).
            return await asyncio.to_thread(
                _download_page, body, limit, schema, tenant_id, unknown_fields
            )
        return _download_page(body, limit, schema, tenant_id, unknown_fields)

    async def _send(self, request: httpx.Request) -> httpx.Response:
        """One request and its whole answer: the transport's, straight.

        What ``httpx.AsyncClient.send`` adds on the way is what this contract never uses: an
        auth flow (the key is a header set here), redirects (not followed), cookies (none;
        storing each answer's cost ~0.3 ms of CPU per request) and event hooks. With 300
        small tenants per cycle those layers were a third of each POST's CPU (issue 12). The
        transport is the one httpx's send() would use (it routes nothing elsewhere: no
        mounts, and no proxy from the environment when given a transport); a closed client
        takes httpx's path, which refuses the request.
        """
        if self._http.is_closed:
            return await self._http.send(request)
        try:
            response = await self._transport.handle_async_request(request)
        except httpx.RequestError as exc:
            exc.request = request  # as httpx's send() does: error texts name the request
            raise
        response.request = request
        if isinstance(response.stream, httpx.SyncByteStream):  # ours: the body is in memory
            response.read()  # the same decoding as aread(), without its async iterators
        else:
            await response.aread()
        return response

    async def health(self) -> bool:
        """One ``GET /health`` (no key, no retry); True when the Client System is reachable.

        Reachable: 200 with a JSON object whose ``status`` is ``ok`` in any case (ours says
        ``"ok"``, MeterTrack ``"OK"``) or MeterTrack's ``"Degraded"`` (up, answering; its
        uploads decide the rest). Updates :attr:`connectivity`.
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
                body = _json_or_none(response.content)
                status = body.get("status") if isinstance(body, dict) else None
                ok = isinstance(status, str) and status.lower() in _REACHABLE
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
        idempotent: bool = True,
        timeout: httpx.Timeout | None = None,
    ) -> tuple[httpx.Response, int]:
        """Send with the retry policy; the 2xx response and the number of attempts.

        ``idempotent=False``: only failures that prove nothing was stored are retried; any
        other failure raises :class:`OutcomeUnknownError` at once (module docstring).
        """
        if self._api_key is None:
            raise AuthError("no API key configured for the Client System client")
        # The request is built here and handed to httpx's send(): build_request() (URL join
        # and re-parse, header and cookie merging) cost ~0.13 ms of CPU per request, a third of
        # a small tenant's POST (issue 12). The client's default headers (User-Agent, Accept,
        # Accept-Encoding) go with it as before; no cookies are sent (the contract has none).
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = httpx.URL(self.base_url + path)
        request = httpx.Request(
            method,
            url if params is None else url.copy_merge_params(params),
            headers={**self._default_headers, "X-API-Key": self._api_key, **(headers or {})},
            content=content,
            extensions={"timeout": (timeout or self._http.timeout).as_dict()},
        )
        attempt = 0
        while True:
            attempt += 1
            started = time.perf_counter()
            retry_after: float | None = None
            try:
                response = await self._send(request)
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                status: int | None = None
                cause = _describe(exc)
                log.debug("%s %s failed: %s", method, path, cause)
                if not idempotent and not isinstance(exc, _NOT_SENT):
                    raise OutcomeUnknownError(
                        f"{method} {path}: outcome unknown after the request was sent "
                        f"({cause}); the Client System is not idempotent, so it is not resent"
                    ) from None
            except httpx.HTTPError as exc:  # local protocol errors, unsupported URL: not transient
                raise ClientSystemError(f"{method} {path} failed: {_describe(exc)}") from None
            else:
                self._log_response(method, path, response, len(content or b""), started)
                status = response.status_code
                if 200 <= status < 300:
                    return response, attempt
                _raise_for_final_status(method, path, response)
                cause = f"HTTP {status}{_error_text(response)}"
                if not idempotent and not _proves_nothing_stored(response):
                    raise OutcomeUnknownError(
                        f"{method} {path} -> {cause}: outcome unknown (the answer does not say "
                        "the batch failed); the Client System is not idempotent, so it is not "
                        "resent",
                        status=status,
                    )
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
        """Stop the checks and close the connection pool (not one shared from the client this
        one was made from by :meth:`with_key`)."""
        await self.stop_connectivity_checks()
        if self._owns_http:
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


def _check_api_key(api_key: str) -> None:
    if not api_key or any(not (0x20 < ord(c) < 0x7F) for c in api_key):
        # Said without echoing the key: it is a secret even when malformed.
        raise ConfigError("api_key must be non-empty printable ASCII without spaces")


def default_site_id() -> str:
    """This host's name as a site id (printable ASCII, no spaces), when none is configured and
    the sync database stores none."""
    name = "".join(c for c in socket.gethostname() if 0x20 < ord(c) < 0x7F)[:200]
    return name or "metersync-site"


def client_from_settings(
    settings: Any, api_key: str | None, *, site_id: str | None = None, **overrides: Any
) -> ClientSystemApiClient:
    """A client configured from :class:`metersync.settings.Settings`: URL, timeouts, CA
    bundle, ``client_profile``, ``max_body_bytes``, ``read_timeout_per_reading`` and the site
    id (``site_id`` argument — e.g. the one stored in the sync database — else the setting,
    else the host name). ``overrides`` win over the settings (tests, tools)."""
    kwargs: dict[str, Any] = {
        "connect_timeout": settings.connect_timeout,
        "read_timeout": settings.read_timeout,
        "verify": settings.ca_bundle or True,
        "client_profile": settings.client_profile,
        "max_body_bytes": settings.max_body_bytes,
        "site_id": site_id or settings.site_id or default_site_id(),
        "read_timeout_per_reading": settings.read_timeout_per_reading,
    }
    kwargs.update(overrides)
    return ClientSystemApiClient(settings.api_url, api_key, **kwargs)


def _describe(exc: httpx.HTTPError) -> str:
    # httpx messages name the URL at most, never headers; fall back to the type for empty ones.
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _clip(text: str, limit: int = 80) -> str:
    """Server-sent text echoed into an error, cut to ``limit`` characters (errors are logged and
    stored in sync_log: a hostile answer must not become a 100 KB message)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} chars)"


def _json_or_none(content: bytes) -> Any:
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return None


def _server_words(body: Any) -> list[str]:
    """The server's own explanation in an answer: ``message``, each ``errors[].msg`` (with its
    ``path``) or ``errors[].error`` (with its meter), and ``error``."""
    if not isinstance(body, dict):
        return []
    words: list[str] = []
    message = body.get("message")
    if isinstance(message, str) and message:
        words.append(message)
    errors = body.get("errors")
    if isinstance(errors, list):
        shown = 0
        for item in errors:
            if not isinstance(item, dict):
                continue
            text = item.get("msg") if isinstance(item.get("msg"), str) else item.get("error")
            if not isinstance(text, str):
                continue
            if shown == _MAX_MESSAGES:
                words.append(f"(+{len(errors) - shown} more)")
                break
            where = item.get("path") if isinstance(item.get("path"), str) else None
            if where is None and item.get("meter_id") is not None:
                where = f"meter_id {item.get('meter_id')}"
            words.append(f"{text} ({_clip(str(where), 60)})" if where else text)
            shown += 1
    error = body.get("error")
    if isinstance(error, str) and error and error not in words:
        words.append(error)
    return words


def _error_text(response: httpx.Response) -> str:
    """The server's own words for an error line (``": msg; msg"``, short), or ``""``."""
    words = _server_words(_json_or_none(response.content))
    return f": {_clip('; '.join(words), 300)}" if words else ""


def _proves_nothing_stored(response: httpx.Response) -> bool:
    """Whether a non-2xx answer proves the batch was not stored (non-idempotent retries).

    4xx: the server refused the request (401/403/400/413 never reach here, they raise). A 5xx
    only when its body says so: ``"success": false`` with ``"recordsProcessed": 0``
    (MeterTrack's ``Batch upload error``: its transaction failed and was rolled back).
    """
    status = response.status_code
    if 400 <= status < 500:
        return True
    body = _json_or_none(response.content)
    return (
        isinstance(body, dict)
        and body.get("success") is False
        and _is_count(body.get("recordsProcessed"))
        and body.get("recordsProcessed") == 0
    )


def _field_errors(response: httpx.Response, what: str) -> FieldValidationError | None:
    """A 400 listing field errors with ``path = readings[i]....`` (MeterTrack's validation)."""
    body = _json_or_none(response.content)
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list) or not errors:
        return None
    found: list[FieldError] = []
    unattributed = 0
    for item in errors:
        path = item.get("path") if isinstance(item, dict) else None
        msg = item.get("msg") if isinstance(item, dict) else None
        index = _reading_index(path)
        if index is None:
            unattributed += 1
            continue
        found.append(FieldError(index, _clip(str(msg or "invalid field"), 300)))
    return FieldValidationError(
        what, status=400, field_errors=tuple(found), unattributed=unattributed
    )


def _reading_index(path: Any) -> int | None:
    """``readings[12].voltage_thd`` → 12; anything else → None."""
    if not isinstance(path, str) or not path.startswith("readings["):
        return None
    digits, sep, _ = path[len("readings[") :].partition("]")
    if not sep or not digits.isdigit() or len(digits) > 9:
        return None
    return int(digits)


def _raise_for_final_status(method: str, path: str, response: httpx.Response) -> None:
    status = response.status_code
    if status in _RETRY_STATUSES or 500 <= status <= 599:
        return
    what = f"{method} {path} -> HTTP {status}{_error_text(response)}"
    if status in (401, 403):
        raise AuthError(f"{what} (API key refused)", status=status)
    if status == 400:
        raise _field_errors(response, what) or BadRequestError(what, status=status)
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
    if "recordsProcessed" in body:
        return _metertrack_result(body, count, attempts, bad)
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


def _metertrack_result(
    body: dict[str, Any],
    count: int,
    attempts: int,
    bad: Callable[[str], InconsistentResponseError],
) -> UploadResult:
    """MeterTrack's 200: ``recordsProcessed`` (= inserted), ``inserted``, ``skipped`` and
    ``errors`` naming meters; or the oldest shape, ``recordsProcessed`` alone (all or nothing).
    """
    processed = body["recordsProcessed"]
    message = body.get("message") if isinstance(body.get("message"), str) else None
    if not _is_count(processed):
        raise bad(f"recordsProcessed={_clip(repr(processed))} is not a count")
    if "inserted" not in body and "skipped" not in body:
        if processed != count:
            raise bad(f"recordsProcessed={processed} for {count} sent")
        return UploadResult(processed, 0, {}, attempts, message=message)
    inserted, skipped, errors = body.get("inserted"), body.get("skipped", 0), body.get("errors")
    if not (_is_count(inserted) and _is_count(skipped)):
        raise bad("inserted or skipped missing or of the wrong type")
    if inserted != processed:
        raise bad(f"recordsProcessed={processed} but inserted={inserted}")
    if inserted + skipped != count:
        total = inserted + skipped
        raise bad(f"inserted {inserted} + skipped {skipped} = {total}, but {count} were sent")
    meter_errors: list[MeterError] = []
    for item in errors if isinstance(errors, list) else []:
        if not isinstance(item, dict):
            raise bad("an errors entry is not an object")
        meter = item.get("meter_id")
        meter_id = _meter_id(meter)
        if meter is not None and meter_id is None:
            raise bad(f"an errors entry names meter_id {_clip(repr(meter))}")
        text = "; ".join(
            f"{k}: {_clip(str(item[k]), 200)}"
            for k in ("error", "code", "detail", "data_point")
            if item.get(k) not in (None, "")
        )
        meter_errors.append(MeterError(meter_id, text or "skipped by the Client System"))
    if skipped and errors is not None and not isinstance(errors, list):
        raise bad('"errors" is not a list')
    return UploadResult(
        inserted,
        0,
        {},
        attempts,
        skipped=skipped,
        meter_errors=tuple(meter_errors),
        message=message,
    )


def _meter_id(value: Any) -> int | None:
    """A meter id as MeterTrack may echo it (number or numeric string)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)  # JavaScript has only float64 numbers
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def _download_page(
    body: bytes,
    limit: int,
    schema: pa.Schema | None,
    tenant_id: int | None,
    unknown_fields: Collection[str] | str | None,
) -> DownloadPage:
    # One parser for every page (the compiled core, or its twin): exact numbers from the digits,
    # validation in the same pass; a shape-only check when no schema is given.
    batch, cursor = parse_page(
        body, schema, tenant_id=tenant_id, limit=limit, unknown_fields=unknown_fields
    )
    return DownloadPage(batch, cursor, body, batch.num_rows)

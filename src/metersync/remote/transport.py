"""The HTTP transport under the Client System client: httpx's API, aiohttp's wire (issue 12).

:class:`~metersync.remote.client.ClientSystemApiClient` speaks httpx (its requests, responses,
timeouts and error types are what the retry policy and the tests are written against), but
httpx's own transport (httpcore + h11, pure Python) costs about 0.85 ms of CPU per 127 KB POST
on this machine and ~3 ns per byte received, against about 0.15 ms and ~1 ns through aiohttp's
C HTTP parser. With 300 small tenants per cycle the POSTs alone were a third of the run's CPU,
and the download's receive a fifth of its time. :class:`AiohttpTransport` is an
:class:`httpx.AsyncBaseTransport` that sends each request through one ``aiohttp`` session, so
everything above it (the client's retry policy, the tests' recording and fault-injecting
transports, which replace it) is unchanged.

What it keeps from httpx's transport, exactly:

* **Timeouts** from the request's ``timeout`` extension: ``connect`` (and ``pool``: the wait
  for a free connection) bound connecting, ``read`` bounds each read of the answer; ``write``
  has no counterpart in aiohttp, so the whole exchange is bounded by ``connect + write + read``
  (a server that stops reading our body cannot hang a cycle).
* **Errors** as httpx's types, with the same meaning the client's non-idempotent policy relies
  on: only a failure *before anything was sent* is :class:`httpx.ConnectError`,
  :class:`httpx.ConnectTimeout` or :class:`httpx.PoolTimeout` (the request provably never
  reached the server). A dropped connection after that is :class:`httpx.RemoteProtocolError`
  or :class:`httpx.ReadError`, a timeout after that :class:`httpx.ReadTimeout` — outcome
  unknown, never resent to a non-idempotent server.
* **Bodies as sent**: the answer's bytes are handed to httpx undecoded (``auto_decompress``
  off), so httpx decodes ``Content-Encoding`` exactly as it would on its own.
* **TLS**: ``verify`` is an :class:`ssl.SSLContext` (CA bundle or the system's store) or
  ``False`` (loopback only; the client refuses it elsewhere). A certificate that does not
  verify fails the connect: :class:`httpx.ConnectError`, nothing sent.
* **Pool**: at most ``max_connections`` connections, idle ones closed after
  ``keepalive_expiry`` seconds (shorter than the servers' keep-alive, so a connection the
  server is about to close is not reused for a POST).

Proxies: none. httpx mounts no proxy from the environment (``HTTP_PROXY`` and the like) when
it is given a transport, and the aiohttp session does not read the environment either
(``trust_env=False``), so every request goes straight to the Client System
(``tests/remote/test_client.py`` pins this).
"""

from __future__ import annotations

import asyncio
import ssl
import warnings
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    import aiohttp

__all__ = ["AiohttpTransport"]

#: Request headers aiohttp writes itself (from the URL and the body): never passed twice.
_OWN_HEADERS = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection"})
#: Headers aiohttp would add on its own when the request does not carry them: httpx's request
#: already says what it wants (or deliberately does not), so aiohttp adds nothing.
_NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport over one aiohttp session (module docstring).

    The session is opened on the first request, in the running event loop (and opened again
    if a later request comes from another loop); :meth:`aclose` closes it.
    """

    def __init__(
        self,
        *,
        verify: ssl.SSLContext | bool = True,
        max_connections: int = 100,
        keepalive_expiry: float = 5.0,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        if keepalive_expiry <= 0:
            raise ValueError(f"keepalive_expiry must be > 0, got {keepalive_expiry}")
        # True: aiohttp's own verifying context (the system's CAs, built once at its import),
        # so a plain-http run never loads a CA store (~40 ms).
        self._ssl: ssl.SSLContext | bool = verify
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _session_now(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            import aiohttp  # here, not at import: `metersync --help` does not pay for it

            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                keepalive_timeout=self._keepalive_expiry,
                ssl=self._ssl,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),  # httpx keeps the client's cookies
                trust_env=False,  # no proxy from the environment (module docstring)
            )
            self._loop = loop
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and return the whole answer (httpx's error types on failure)."""
        import aiohttp

        session = self._session_now()
        limits = request.extensions.get("timeout", {})
        connect = _seconds(limits.get("connect"))
        pool = _seconds(limits.get("pool"))
        read = _seconds(limits.get("read"))
        write = _seconds(limits.get("write"))
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=None if connect is None or pool is None else connect + pool,
            sock_connect=connect,
            sock_read=read,
        )
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in request.headers.raw
            if k.lower() not in _OWN_HEADERS
        ]
        body = await request.aread()
        payload = None
        if body:
            # aiohttp warns about a bytes body over 1 MiB ("might lock the event loop"): it is
            # handed to asyncio's transport in one write, which sends what the socket takes
            # and buffers the rest without blocking. A 1,000-reading batch is ~1.3 MB.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)
                payload = aiohttp.BytesPayload(body)
        whole = None if None in (connect, write, read) else connect + write + read  # type: ignore[operator]
        sent = False
        try:
            async with asyncio.timeout(whole):
                async with session.request(
                    request.method,
                    str(request.url),
                    data=payload,
                    headers=headers,
                    skip_auto_headers=_NO_AUTO_HEADERS,
                    timeout=timeout,
                    allow_redirects=False,
                ) as answer:
                    sent = True
                    content = await answer.read()
                    status, raw_headers = answer.status, answer.raw_headers
                    version = answer.version
        except aiohttp.ConnectionTimeoutError as exc:
            raise httpx.ConnectTimeout(_text(exc, "connect timed out"), request=request) from exc
        except aiohttp.ClientConnectorError as exc:  # refused, DNS, TLS verification
            raise httpx.ConnectError(_text(exc, "cannot connect"), request=request) from exc
        except aiohttp.SocketTimeoutError as exc:
            raise httpx.ReadTimeout(_text(exc, "read timed out"), request=request) from exc
        except TimeoutError as exc:  # the whole exchange's bound (or a timeout aiohttp raised)
            kind = httpx.ReadTimeout if sent else httpx.WriteTimeout
            raise kind(f"no answer within {whole} s", request=request) from exc
        except aiohttp.ServerDisconnectedError as exc:
            raise httpx.RemoteProtocolError(
                _text(exc, "server disconnected without sending a response"), request=request
            ) from exc
        except (aiohttp.ClientPayloadError, aiohttp.ClientResponseError) as exc:
            raise httpx.RemoteProtocolError(
                _text(exc, "malformed answer"), request=request
            ) from exc
        except aiohttp.InvalidURL as exc:
            raise httpx.UnsupportedProtocol(_text(exc, "invalid URL"), request=request) from exc
        except (aiohttp.ClientError, OSError) as exc:  # reset, broken pipe, ...
            raise httpx.ReadError(_text(exc, "connection failed"), request=request) from exc
        http_version = f"HTTP/{version.major}.{version.minor}" if version else "HTTP/1.1"
        return httpx.Response(
            status,
            headers=list(raw_headers),
            stream=httpx.ByteStream(content),
            extensions={"http_version": http_version.encode("ascii")},
            request=request,
        )

    async def aclose(self) -> None:
        """Close the session and its connections (idempotent)."""
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()


def _seconds(value: Any) -> float | None:
    return None if value is None else float(value)


def _text(exc: BaseException, fallback: str) -> str:
    """The failure in words: aiohttp's own message, else what kind of failure it was."""
    said = str(exc).strip()
    return said or fallback

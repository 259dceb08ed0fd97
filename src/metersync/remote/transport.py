"""The HTTP transport under the Client System client: httpx's API, a lean HTTP/1.1 wire (issue 12).

:class:`~metersync.remote.client.ClientSystemApiClient` speaks httpx (its requests, responses,
timeouts and error types are what the retry policy and the tests are written against), but
what carries a request matters with many small tenants: httpx's own transport (httpcore + h11,
pure Python) cost about 0.85 ms of the event loop per 127 KB POST, aiohttp's client about
0.6 ms (its request and response objects, timers and stream readers around a C parser: a
quarter of a 300-tenant cycle, py-spy). :class:`Http1Transport` is an
:class:`httpx.AsyncBaseTransport` that writes each request itself and parses the answer in
:mod:`metersync.remote.http1` (an :class:`asyncio.Protocol`, a few microseconds per answer), so
everything above it (the client's retry policy, the tests' recording and fault-injecting
transports, which replace it) is unchanged.

What it keeps from httpx's transport, exactly:

* **The request as httpx built it**: its headers in order (``Host``, ``Content-Length``, the
  client's own), its body's exact bytes; a streamed body (``Transfer-Encoding: chunked``) is
  sent as one chunk.
* **Timeouts** from the request's ``timeout`` extension: ``pool`` bounds the wait for a free
  connection, ``connect`` the connect (and the TLS handshake), ``read`` each wait for the
  answer's next bytes once the request is out; the whole exchange is bounded by ``connect +
  write + read`` (a server that stops reading our body cannot hang a cycle).
* **Errors** as httpx's types, with the same meaning the client's non-idempotent policy relies
  on: only a failure *before anything was sent* is :class:`httpx.ConnectError`,
  :class:`httpx.ConnectTimeout` or :class:`httpx.PoolTimeout` (the request provably never
  reached the server). A connection that ends after that is :class:`httpx.RemoteProtocolError`
  (closed by the server), :class:`httpx.ReadError` or :class:`httpx.WriteError` (a socket
  error), an answer that is not HTTP/1.1 :class:`httpx.RemoteProtocolError`, a timeout after
  that :class:`httpx.ReadTimeout` or :class:`httpx.WriteTimeout` — outcome unknown, never
  resent to a non-idempotent server.
* **Bodies as sent**: the answer's bytes are handed to httpx undecoded, so httpx decodes
  ``Content-Encoding`` exactly as it would on its own.
* **TLS**: ``verify`` is an :class:`ssl.SSLContext` (CA bundle), ``True`` (the system's store,
  loaded at the first https connection, never for plain http) or ``False`` (loopback only; the
  client refuses it elsewhere). A certificate that does not verify fails the connect:
  :class:`httpx.ConnectError`, nothing sent.
* **Pool**: at most ``max_connections`` requests at once, each on a connection of its own;
  idle connections are reused for ``keepalive_expiry`` seconds (shorter than the servers'
  keep-alive, so a connection the server is about to close is not reused for a POST), and
  never after the server said ``Connection: close``, sent a stray byte or closed it.

Proxies: none. httpx mounts no proxy from the environment (``HTTP_PROXY`` and the like) when
it is given a transport, and this one reads no environment either, so every request goes
straight to the Client System (``tests/remote/test_client.py`` pins this).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any

import httpx

from metersync.remote.http1 import Answer, Exchange, ProtocolViolation, WireClosed

__all__ = ["Http1Transport"]

_DEFAULT_PORTS = {"http": 80, "https": 443}


class _ReadTimedOut(Exception):
    """No byte of the answer within the read timeout (after the request went out)."""


class _ExchangeTimedOut(Exception):
    """The whole exchange's bound (connect + write + read) passed."""


class Http1Transport(httpx.AsyncBaseTransport):
    """An httpx transport over plain asyncio connections (module docstring).

    Its connections belong to the event loop that made them: a request from another loop
    (a second ``asyncio.run``) starts a new pool there. :meth:`aclose` closes every
    connection.
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
        self._verify = verify
        self._context = verify if isinstance(verify, ssl.SSLContext) else None
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: asyncio.Semaphore | None = None
        self._idle: dict[tuple[str, str, int], list[Exchange]] = {}
        self._open: set[Exchange] = set()

    # -- the pool ----------------------------------------------------------------------------

    def _bind(self, loop: asyncio.AbstractEventLoop) -> asyncio.Semaphore:
        """The pool of ``loop`` (a new one when the last request came from another loop,
        whose connections cannot be used here)."""
        self._close_all()
        self._loop = loop
        self._slots = asyncio.Semaphore(self._max_connections)
        return self._slots

    def _ssl_context(self, scheme: str) -> ssl.SSLContext | None:
        if scheme != "https":
            return None
        if self._context is None:
            if self._verify is False:  # loopback only (the client refuses it elsewhere)
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            else:  # the system's store, loaded now: plain http never pays for it
                context = ssl.create_default_context()
            self._context = context
        return self._context

    def _idle_connection(self, origin: tuple[str, str, int], now: float) -> Exchange | None:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if now - conn.idle_since < self._keepalive_expiry and conn.reusable_now():
                return conn
            conn.close()
            self._open.discard(conn)
        return None

    async def _connect(
        self,
        loop: asyncio.AbstractEventLoop,
        origin: tuple[str, str, int],
        timeout: float | None,
        request: httpx.Request,
    ) -> Exchange:
        scheme, host, port = origin
        context = self._ssl_context(scheme)
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: Exchange(loop),
                    host,
                    port,
                    ssl=context,
                    server_hostname=host if context is not None else None,
                )
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(
                f"cannot connect to {host}:{port} within {timeout} s", request=request
            ) from exc
        except OSError as exc:  # refused, unreachable, DNS, TLS verification
            raise httpx.ConnectError(
                f"cannot connect to {host}:{port}: {_text(exc)}", request=request
            ) from exc
        self._open.add(conn)
        return conn

    # -- a request ---------------------------------------------------------------------------

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and return the whole answer (httpx's error types on failure)."""
        loop = asyncio.get_running_loop()
        slots = self._slots if loop is self._loop else self._bind(loop)
        assert slots is not None
        url = request.url
        scheme = url.scheme
        if scheme not in _DEFAULT_PORTS or not url.host:
            raise httpx.UnsupportedProtocol(f"cannot send to {url!r}", request=request)
        origin = (scheme, url.host, url.port or _DEFAULT_PORTS[scheme])
        limits = request.extensions.get("timeout", {})
        connect, pool = _seconds(limits.get("connect")), _seconds(limits.get("pool"))
        read, write = _seconds(limits.get("read")), _seconds(limits.get("write"))
        head, body = _request_bytes(request, await request.aread())

        if slots.locked():  # every connection busy: wait for one, at most `pool` seconds
            try:
                async with asyncio.timeout(pool):
                    await slots.acquire()
            except TimeoutError as exc:
                raise httpx.PoolTimeout(
                    f"no free connection within {pool} s", request=request
                ) from exc
        else:
            await slots.acquire()
        conn: Exchange | None = None
        answer: Answer | None = None
        try:
            conn = self._idle_connection(origin, loop.time())
            if conn is None:
                conn = await self._connect(loop, origin, connect, request)
            whole = None if None in (connect, write, read) else connect + write + read  # type: ignore[operator]
            answer = await self._exchange(loop, conn, head, body, request.method, read, whole)
        except _ReadTimedOut as exc:
            raise httpx.ReadTimeout(f"no answer within {read} s", request=request) from exc
        except _ExchangeTimedOut as exc:
            kind = httpx.ReadTimeout if conn is not None and conn.written else httpx.WriteTimeout
            raise kind(f"no answer within {whole} s", request=request) from exc
        except WireClosed as exc:
            if exc.error is not None:  # a socket error, not the server's close
                kind = httpx.ReadError if exc.written else httpx.WriteError
                raise kind(str(exc), request=request) from exc
            raise httpx.RemoteProtocolError(str(exc), request=request) from exc
        except ProtocolViolation as exc:
            raise httpx.RemoteProtocolError(f"malformed answer: {exc}", request=request) from exc
        finally:
            if conn is not None:
                if answer is not None and answer.reusable and not conn.closed:
                    conn.idle_since = loop.time()
                    self._idle.setdefault(origin, []).append(conn)
                else:  # failed, cancelled or not to be reused: never handed out again
                    conn.close()
                    self._open.discard(conn)
            slots.release()
        return httpx.Response(
            answer.status,
            headers=answer.headers,
            stream=httpx.ByteStream(answer.body),
            extensions={"http_version": answer.version, "reason_phrase": answer.reason},
            request=request,
        )

    @staticmethod
    async def _exchange(
        loop: asyncio.AbstractEventLoop,
        conn: Exchange,
        head: bytes,
        body: bytes,
        method: str,
        read: float | None,
        whole: float | None,
    ) -> Answer:
        """Write the request on ``conn`` and wait for its answer, bounded by ``read`` (each
        wait for bytes once the request is out) and ``whole`` (the exchange)."""
        answer = conn.send(head, body, head_only=method == "HEAD")
        if read is None and whole is None:
            return await answer
        deadline = None if whole is None else loop.time() + whole

        def check() -> None:
            # One timer for both bounds, re-armed instead of rescheduled per received chunk.
            nonlocal timer
            if answer.done():
                return
            now = loop.time()
            if deadline is not None and now >= deadline:
                answer.set_exception(_ExchangeTimedOut())
                return
            due = deadline
            if read is not None and conn.written:
                idle_until = conn.last_input + read
                if now >= idle_until:
                    answer.set_exception(_ReadTimedOut())
                    return
                due = idle_until if due is None else min(due, idle_until)
            elif read is not None:  # still writing: look again within `read`
                due = now + read if due is None else min(due, now + read)
            timer = loop.call_at(due, check)  # type: ignore[arg-type]

        timer = loop.call_at(
            min(t for t in (deadline, None if read is None else loop.time() + read) if t),
            check,
        )
        try:
            return await answer
        finally:
            timer.cancel()

    async def aclose(self) -> None:
        """Close every connection (idempotent); the next request opens new ones."""
        self._close_all()

    def _close_all(self) -> None:
        for conn in self._open:
            with contextlib.suppress(RuntimeError):  # its loop is closed: the socket went too
                conn.close()
        self._open.clear()
        self._idle.clear()


def _request_bytes(request: httpx.Request, body: bytes) -> tuple[bytes, bytes]:
    """The request line and headers as httpx built them (ending with the blank line), and the
    body to send (one chunk, when the request is streamed)."""
    target = request.url.raw_path or b"/"
    lines = [b"%s %s HTTP/1.1" % (request.method.encode("ascii"), target)]
    chunked = False
    for name, value in request.headers.raw:
        lines.append(name + b": " + value)
        if name.lower() == b"transfer-encoding":
            chunked = True
    if chunked:
        body = (b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)) if body else b"0\r\n\r\n"
    return b"\r\n".join(lines) + b"\r\n\r\n", body


def _seconds(value: Any) -> float | None:
    return None if value is None else float(value)


def _text(exc: BaseException) -> str:
    """The failure in words: its own message, else what kind of failure it was."""
    return str(exc).strip() or type(exc).__name__

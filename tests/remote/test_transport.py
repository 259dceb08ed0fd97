"""The HTTP/1.1 wire under httpx (metersync.remote.transport) against raw loopback servers.

Each server here is a few lines of asyncio that misbehaves in one exact way, so the checks are
about the transport's promises: what goes on the wire, which httpx error type each failure
becomes (the client's non-idempotent policy resends only the "never sent" ones), bodies decoded
once, and the bounds on a server that stops reading or answering.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from metersync.errors import OutcomeUnknownError, RemoteUnavailableError
from metersync.remote.client import _NOT_SENT, ClientSystemApiClient
from metersync.remote.transport import Http1Transport

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    """Start a raw server with the given connection handler; its base URL."""
    servers: list[asyncio.Server] = []
    writers: list[asyncio.StreamWriter] = []  # closed at the end, also a handler still asleep

    async def start(handler: Handler) -> str:
        async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            await handler(reader, writer)

        server = await asyncio.start_server(tracked, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    yield start
    for writer in writers:
        writer.close()
    for server in servers:
        server.close()
        await server.wait_closed()
    await asyncio.sleep(0)  # let the closed transports finish closing


async def _read_request(reader: asyncio.StreamReader) -> tuple[list[bytes], bytes]:
    """The request's header lines and its body (by Content-Length)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")[:-2]
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length) if length else b""
    return lines, body


def _answer(status: int, body: bytes, *extra: bytes) -> bytes:
    head = [f"HTTP/1.1 {status} X".encode(), b"Content-Length: %d" % len(body), *extra]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_the_wire_carries_each_header_once_and_the_exact_body(serve) -> None:
    seen: list[tuple[list[bytes], bytes]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await _read_request(reader))
        writer.write(_answer(200, b'{"ok":true}', b"Content-Type: application/json"))
        await writer.drain()
        writer.close()

    url = await serve(handler)
    body = b'{"readings":[' + b"1," * 700_000 + b"1]}"  # 1.4 MB: more than one socket write
    async with httpx.AsyncClient(transport=Http1Transport(verify=False)) as client:
        response = await client.post(
            f"{url}/x?a=1",
            content=body,
            headers={"X-API-Key": "k", "Content-Type": "application/json"},
        )
    assert response.status_code == 200 and response.json() == {"ok": True}
    lines, sent = seen[0]
    assert lines[0] == b"POST /x?a=1 HTTP/1.1"
    names = [line.partition(b":")[0].strip().lower() for line in lines[1:]]
    assert len(names) == len(set(names)), names  # no header twice
    headers = {n: line.partition(b":")[2].strip() for n, line in zip(names, lines[1:], strict=True)}
    assert headers[b"content-length"] == str(len(body)).encode()
    assert headers[b"x-api-key"] == b"k"
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"host"] == url.removeprefix("http://").encode()
    assert sent == body


async def test_a_gzip_answer_is_decoded_once(serve) -> None:
    payload = b'{"readings":[]}' * 1000

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(_answer(200, gzip.compress(payload), b"Content-Encoding: gzip"))
        await writer.drain()
        writer.close()

    url = await serve(handler)
    async with httpx.AsyncClient(transport=Http1Transport(verify=False)) as client:
        response = await client.get(url)
    assert response.content == payload


async def test_refused_connect_is_never_sent() -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    async with httpx.AsyncClient(transport=Http1Transport(verify=False)) as client:
        with pytest.raises(httpx.ConnectError) as caught:
            await client.post(url, content=b"{}")
    assert isinstance(caught.value, _NOT_SENT)


async def test_a_connection_dropped_after_the_request_is_not_never_sent(serve) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)  # took it all ... and went away without a word
        writer.close()

    url = await serve(handler)
    async with httpx.AsyncClient(transport=Http1Transport(verify=False)) as client:
        with pytest.raises(httpx.TransportError) as caught:
            await client.post(url, content=b"{}")
    assert isinstance(caught.value, httpx.RemoteProtocolError | httpx.ReadError)
    assert not isinstance(caught.value, _NOT_SENT)


async def test_no_answer_is_a_read_timeout(serve) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await asyncio.sleep(5)

    url = await serve(handler)
    async with httpx.AsyncClient(transport=Http1Transport(verify=False), timeout=0.3) as client:
        with pytest.raises(httpx.ReadTimeout) as caught:
            await client.post(url, content=b"{}")
    assert not isinstance(caught.value, _NOT_SENT)


async def test_a_server_that_stops_reading_cannot_hang_the_request(serve) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")  # the headers, then never the 64 MB body
        await asyncio.sleep(10)

    url = await serve(handler)
    timeout = httpx.Timeout(0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with httpx.AsyncClient(transport=Http1Transport(verify=False), timeout=timeout) as c:
        with pytest.raises(httpx.TimeoutException) as caught:
            await c.post(url, content=b"x" * (64 << 20))
    assert loop.time() - started < 3  # connect + write + read = 0.9 s, not the server's 10
    assert not isinstance(caught.value, _NOT_SENT)


async def test_the_non_idempotent_client_holds_a_dropped_post_and_resends_a_refused_one(
    serve,
) -> None:
    """The client's policy on top: a drop after sending is an unknown outcome (never resent to
    MeterTrack); a refused connect is retried (nothing was sent)."""
    hits: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        hits.append(1)
        writer.close()

    url = await serve(handler)
    async with ClientSystemApiClient(
        f"{url}/api", "key", client_profile="metertrack", max_retries=3, backoff_base=0
    ) as client:
        with pytest.raises(OutcomeUnknownError):
            await client.post_batch(b"[]", 0, idempotency_key="k1")
    assert len(hits) == 1  # sent once, never again

    refused = f"http://127.0.0.1:{_free_port()}/api"
    async with ClientSystemApiClient(
        refused, "key", client_profile="metertrack", max_retries=2, backoff_base=0
    ) as client:
        with pytest.raises(RemoteUnavailableError, match="after 3 attempts"):
            await client.post_batch(b"[]", 0, idempotency_key="k2")


def test_one_transport_serves_two_event_loops() -> None:
    """A transport used from a second ``asyncio.run`` opens a session in that loop (the first
    loop's connections cannot be used there)."""
    transport = Http1Transport(verify=False)

    async def once() -> int:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await _read_request(reader)
            writer.write(_answer(204, b""))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            client = httpx.AsyncClient(transport=transport)
            response = await client.get(f"http://127.0.0.1:{port}/")
            return response.status_code
        finally:
            server.close()
            await server.wait_closed()
            await transport.aclose()

    assert asyncio.run(once()) == 204
    assert asyncio.run(once()) == 204


def _keep_alive_server(
    connections: list[int], *, extra: bytes = b"", body: bytes = b"ok"
) -> Handler:
    """A server answering every request on a connection; counts the connections."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            while True:
                await _read_request(reader)
                writer.write(_answer(200, body, *([extra] if extra else [])))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    return handler


async def test_a_kept_alive_connection_carries_the_next_requests(serve) -> None:
    connections: list[int] = []
    url = await serve(_keep_alive_server(connections))
    async with httpx.AsyncClient(transport=Http1Transport(verify=False)) as client:
        for i in range(5):
            response = await client.post(url, content=b"x" * (i * 100_000))
            assert response.content == b"ok"
    assert len(connections) == 1


async def test_connection_close_and_an_expired_idle_connection_are_not_reused(serve) -> None:
    closing: list[int] = []
    url = await serve(_keep_alive_server(closing, extra=b"Connection: close"))
    async with httpx.AsyncClient(transport=Http1Transport(verify=False)) as client:
        for _ in range(3):
            assert (await client.get(url)).content == b"ok"
    assert len(closing) == 3

    kept: list[int] = []
    url = await serve(_keep_alive_server(kept))
    transport = Http1Transport(verify=False, keepalive_expiry=0.05)
    async with httpx.AsyncClient(transport=transport) as client:
        await client.get(url)
        await client.get(url)  # at once: the same connection
        await asyncio.sleep(0.1)
        await client.get(url)  # idle longer than keepalive_expiry: a new one
    assert len(kept) == 2


async def test_an_answer_before_the_whole_request_is_not_reused(serve) -> None:
    """A 413 sent while the body is still going out: the rest of the body is on that
    connection, so the next request takes a new one."""
    connections: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        head = await reader.readuntil(b"\r\n\r\n")
        if b"/big" in head.split(b"\r\n")[0]:
            writer.write(_answer(413, b"too large"))  # without reading the 16 MB body
            await writer.drain()
            await asyncio.sleep(5)
            return
        writer.write(_answer(200, b"small"))
        await writer.drain()
        await asyncio.sleep(5)

    url = await serve(handler)
    async with httpx.AsyncClient(transport=Http1Transport(verify=False)) as client:
        first = await client.post(f"{url}/big", content=b"b" * (16 << 20))
        assert first.status_code == 413
        second = await client.get(f"{url}/small")
        assert second.content == b"small"
    assert len(connections) == 2


async def test_a_chunked_answer_from_a_socket(serve) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for piece in (b"hello ", b"chunked ", b"world"):
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    url = await serve(handler)
    async with httpx.AsyncClient(transport=Http1Transport(verify=False)) as client:
        response = await client.get(url)
    assert response.content == b"hello chunked world"


async def test_a_full_pool_is_a_pool_timeout_and_frees_its_slot(serve) -> None:
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await release.wait()
        writer.write(_answer(200, b"late"))
        await writer.drain()
        writer.close()

    url = await serve(handler)
    transport = Http1Transport(verify=False, max_connections=1)
    async with httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(5, pool=0.2)) as c:
        first = asyncio.create_task(c.get(url))
        await asyncio.sleep(0.1)
        with pytest.raises(httpx.PoolTimeout) as caught:
            await c.get(url)
        assert isinstance(caught.value, _NOT_SENT)
        release.set()
        assert (await first).content == b"late"
        assert (await c.get(url)).content == b"late"  # the slot came back


async def test_a_cancelled_request_closes_its_connection(serve) -> None:
    closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await reader.read()  # until the client goes away
        closed.set()

    url = await serve(handler)
    transport = Http1Transport(verify=False)
    async with httpx.AsyncClient(transport=transport) as client:
        task = asyncio.create_task(client.get(url))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(closed.wait(), 2)  # not kept for another request


async def test_a_malformed_answer_is_a_remote_protocol_error(serve) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()

    url = await serve(handler)
    async with httpx.AsyncClient(transport=Http1Transport(verify=False)) as client:
        with pytest.raises(httpx.RemoteProtocolError, match="status line") as caught:
            await client.get(url)
    assert not isinstance(caught.value, _NOT_SENT)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_connections"):
        Http1Transport(max_connections=0)
    with pytest.raises(ValueError, match="keepalive_expiry"):
        Http1Transport(keepalive_expiry=0)

"""The answer parser of metersync.remote.http1, fed bytes directly (no network).

Each answer is cut at arbitrary points (hypothesis): whatever the packets, the parser must give
the same status, headers and body, and say the same about reusing the connection. The
transport's behaviour on real sockets is in test_transport.py.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metersync.remote.http1 import Answer, Exchange, ProtocolViolation, WireClosed


class _Sink(asyncio.Transport):
    """What the protocol writes, kept (a transport of bytes in memory, not a network)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = bytearray()
        self.aborted = False

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.sent += data

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def abort(self) -> None:
        self.aborted = True


def _exchange(loop: asyncio.AbstractEventLoop, *, head_only: bool = False):
    conn = Exchange(loop)
    sink = _Sink()
    conn.connection_made(sink)
    answer = conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"", head_only=head_only)
    return conn, sink, answer


def _feed(conn: Exchange, data: bytes, cuts: list[int]) -> None:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for a, b in itertools.pairwise(points):
        if a != b:
            conn.data_received(data[a:b])


def _chunked(body: bytes, sizes: list[int]) -> bytes:
    out, pos, i = [], 0, 0
    while pos < len(body):
        n = max(1, sizes[i % len(sizes)]) if sizes else len(body)
        piece = body[pos : pos + n]
        out.append(b"%x;ext=1\r\n%s\r\n" % (len(piece), piece))
        pos += n
        i += 1
    return b"".join(out) + b"0\r\nX-Trailer: t\r\n\r\n"


FRAMINGS = st.sampled_from(["length", "chunked", "close", "interim"])


@settings(max_examples=200, deadline=None)
@given(
    body=st.binary(max_size=3000),
    framing=FRAMINGS,
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
    sizes=st.lists(st.integers(min_value=1, max_value=700), min_size=1, max_size=5),
)
def test_any_split_of_an_answer_parses_to_the_same_answer(body, framing, cuts, sizes) -> None:
    async def go() -> tuple[Answer, Exchange]:
        loop = asyncio.get_running_loop()
        conn, _, answer = _exchange(loop)
        head = b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nX-A:  b \r\n"
        if framing == "length":
            wire = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
        elif framing == "chunked":
            wire = head + b"Transfer-Encoding: chunked\r\n\r\n" + _chunked(body, sizes)
        elif framing == "interim":
            wire = (
                b"HTTP/1.1 100 Continue\r\n\r\n"
                + head
                + b"Content-Length: %d\r\n\r\n" % len(body)
                + body
            )
        else:
            wire = head + b"\r\n" + body
        _feed(conn, wire, cuts)
        if framing == "close":
            assert not answer.done()
            conn.eof_received()
        return await answer, conn

    answer, _ = asyncio.run(go())
    assert answer.status == 201 and answer.reason == b"Created"
    assert answer.body == body
    assert (b"X-A", b"b") in answer.headers
    assert answer.reusable is (framing != "close")


def _parse(wire: bytes, *, head_only: bool = False) -> Answer:
    async def go() -> Answer:
        conn, _, answer = _exchange(asyncio.get_running_loop(), head_only=head_only)
        conn.data_received(wire)
        return await asyncio.wait_for(answer, 1)

    return asyncio.run(go())


def test_connection_close_and_http10_are_not_reused() -> None:
    assert not _parse(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").reusable
    assert not _parse(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").reusable
    keep = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
    assert _parse(keep).reusable


def test_no_body_for_204_304_and_head() -> None:
    assert _parse(b"HTTP/1.1 204 No Content\r\n\r\n").body == b""
    assert _parse(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n").body == b""
    answer = _parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", head_only=True)
    assert answer.body == b"" and answer.reusable


@pytest.mark.parametrize(
    ("wire", "words"),
    [
        (b"HTTP/2 200 OK\r\n\r\n", "status line"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "status line"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "malformed header"),
        (b"HTTP/1.1 200 OK\r\n folded: x\r\n\r\n", "malformed header"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n", "longer than"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nab", "after its answer"),
        (b"HTTP/1.1 101 Switching\r\n\r\n", "switched"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000, "headers over"),
    ],
)
def test_a_broken_answer_is_a_protocol_violation_naming_what(wire: bytes, words: str) -> None:
    async def go() -> tuple[Exchange, _Sink, asyncio.Future[Answer]]:
        conn, sink, answer = _exchange(asyncio.get_running_loop())
        conn.data_received(wire)
        await asyncio.sleep(0)
        return conn, sink, answer

    conn, sink, answer = asyncio.run(go())
    with pytest.raises(ProtocolViolation, match=words):
        answer.result()
    assert sink.aborted and conn.closed  # never reused


def test_a_close_mid_answer_says_whether_anything_came() -> None:
    async def go(wire: bytes, error: Exception | None) -> WireClosed:
        conn, _, answer = _exchange(asyncio.get_running_loop())
        if wire:
            conn.data_received(wire)
        conn.connection_lost(error)
        with pytest.raises(WireClosed) as caught:
            await answer
        return caught.value

    nothing = asyncio.run(go(b"", None))
    assert not nothing.answered and nothing.error is None and "without sending" in str(nothing)
    part = asyncio.run(go(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", None))
    assert part.answered and "middle" in str(part)
    reset = ConnectionResetError("reset by peer")
    assert asyncio.run(go(b"", reset)).error is reset


def test_bytes_between_answers_end_the_connection() -> None:
    async def go() -> Exchange:
        conn, _, answer = _exchange(asyncio.get_running_loop())
        conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        assert (await answer).reusable
        conn.data_received(b"HTTP/1.1 408 Request Timeout\r\n\r\n")  # unasked
        return conn

    assert asyncio.run(go()).closed


def test_the_request_goes_out_as_given() -> None:
    async def go() -> bytes:
        conn = Exchange(asyncio.get_running_loop())
        sink = _Sink()
        conn.connection_made(sink)
        conn.send(b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n", b"abc")
        big = b"z" * 100_000
        conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        conn.send(b"POST /y HTTP/1.1\r\n\r\n", big)
        return bytes(sink.sent)

    sent = asyncio.run(go())
    first = b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
    assert sent == first + b"POST /y HTTP/1.1\r\n\r\n" + b"z" * 100_000

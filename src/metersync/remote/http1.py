"""One HTTP/1.1 exchange on one connection: the request's bytes out, the answer's parsed in.

The protocol half of :class:`metersync.remote.transport.Http1Transport`: an
:class:`asyncio.Protocol` that writes a request and parses its answer as the bytes arrive
(status line, headers, a body framed by ``Content-Length``, ``chunked`` or the connection's
end), with no object per chunk beyond the bytes themselves. It knows bytes and the event loop;
the pool, timeouts' budgets and httpx's types are the transport's.

Why not a library's parser: the Client System contract is small (a request, one answer, keep
the connection), and a parser written for it costs a few microseconds per answer where
aiohttp's client machinery around its C parser cost about 0.6 ms of the event loop per POST
(py-spy, 300 small tenants; docs/remote-notes.md).
"""

from __future__ import annotations

import asyncio
import select
from dataclasses import dataclass
from typing import cast

__all__ = ["Answer", "Exchange", "ProtocolViolation", "WireClosed"]

#: The most an answer's status line and headers may take (a server sending more is broken).
MAX_HEAD_BYTES = 64 * 1024
#: Bodies up to this size go out in one write with the head (see Exchange.send).
_JOIN_MAX = 65536
#: The most a chunk-size line may take (hex digits and extensions).
_MAX_CHUNK_LINE = 4096


class ProtocolViolation(Exception):
    """The server's bytes are not an HTTP/1.1 answer (the words say what was wrong)."""


class WireClosed(Exception):
    """The connection ended before the answer was complete: ``error`` the socket's error
    (``None``: the server closed it), ``answered`` whether any byte of the answer had come,
    ``written`` whether the whole request had gone out."""

    def __init__(
        self, message: str, *, error: Exception | None, answered: bool, written: bool
    ) -> None:
        super().__init__(message)
        self.error = error
        self.answered = answered
        self.written = written


@dataclass(frozen=True, slots=True)
class Answer:
    """A complete answer: status, reason, raw headers in order, body as sent, and whether the
    connection can carry another request."""

    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    version: bytes
    reusable: bool


# Body framing of the answer being read.
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _UNTIL_CLOSE, _DONE = range(8)


class Exchange(asyncio.Protocol):
    """One connection to the server, carrying one request at a time (:meth:`send`).

    ``answer`` is the future of the answer to the request in progress; ``written`` turns true
    once every byte of the request left the process (the read timeout starts then),
    ``last_input`` is the loop time of the last bytes received (the read timeout counts from
    it).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.answer: asyncio.Future[Answer] | None = None
        self.written = False
        self.last_input = 0.0
        self._head_only = False
        self._reset_parser()

    def _reset_parser(self) -> None:
        self._state = _HEAD
        self._buf = bytearray()
        self._parts: list[bytes] = []
        self._remaining = 0
        self._status = 0
        self._reason = b""
        self._version = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._keep = True
        self._answered = False

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # An asyncio.Transport in behaviour (uvloop's are not its subclasses).
        self.transport = transport = cast(asyncio.Transport, transport)
        # high = low = 0: pause_writing as soon as a write leaves bytes buffered, and
        # resume_writing once the buffer is empty, i.e. when the whole request has gone out.
        transport.set_write_buffer_limits(high=0, low=0)

    def pause_writing(self) -> None:
        self.written = False

    def resume_writing(self) -> None:
        self.written = True
        self.last_input = self._loop.time()  # the answer's wait starts now

    def data_received(self, data: bytes) -> None:
        self.last_input = self._loop.time()
        answer = self.answer
        if answer is None or answer.done():
            # Bytes nobody asked for (between requests, or after an answer): the connection's
            # framing can no longer be trusted.
            self._discard()
            return
        self._answered = True
        try:
            self._feed(data)
        except ProtocolViolation as exc:
            self._discard()
            answer.set_exception(exc)

    def eof_received(self) -> bool:
        if self._state == _UNTIL_CLOSE and self.answer is not None and not self.answer.done():
            self._state = _DONE
            self._keep = False
            self._finish()
        return False  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        answer = self.answer
        if answer is not None and not answer.done():
            if exc is not None:
                what = f"the connection failed: {exc}"
            elif self._answered:
                what = "the server disconnected in the middle of its answer"
            else:
                what = "the server disconnected without sending an answer"
            answer.set_exception(
                WireClosed(what, error=exc, answered=self._answered, written=self.written)
            )

    # -- use ---------------------------------------------------------------------------------

    def send(self, head: bytes, body: bytes, *, head_only: bool = False) -> asyncio.Future[Answer]:
        """Write a request (``head`` ends with the blank line) and return its answer's future.

        ``head_only``: the request is a HEAD (its answer has no body whatever it says)."""
        assert self.transport is not None and not self.closed
        self._reset_parser()
        self._head_only = head_only
        self.answer = self._loop.create_future()
        self.written = True  # until a write leaves bytes buffered (pause_writing)
        if len(body) <= _JOIN_MAX:
            self.transport.write(head + body if body else head)
        else:  # no copy of a large body: two writes (TCP_NODELAY is asyncio's default)
            self.transport.write(head)
            self.transport.write(body)
        if self.written:
            self.last_input = self._loop.time()
        return self.answer

    def reusable_now(self) -> bool:
        """Whether an idle connection can carry a request: open, and nothing to read on its
        socket. Readable while idle means the server closed it (or sent bytes nobody asked
        for), and the loop has not seen it yet: reusing it would lose the request with an
        unknown outcome, which a non-idempotent Client System must never get for nothing."""
        if self.closed or self.transport is None:
            return False
        sock = self.transport.get_extra_info("socket")
        if sock is None:
            return False
        try:
            return not _has_input(sock.fileno())
        except (OSError, ValueError):  # closed under us
            return False

    def close(self) -> None:
        """Drop the connection now (an exchange that did not end cleanly)."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _discard(self) -> None:
        self._keep = False
        self.close()

    # -- the answer's parser -----------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            state = self._state
            if state == _HEAD:
                view = self._take_head(view)
            elif state == _LENGTH:
                n = min(len(view), self._remaining)
                self._parts.append(_whole_or_copy(view[:n]))
                self._remaining -= n
                view = view[n:]
                if self._remaining == 0:
                    self._state = _DONE
            elif state == _UNTIL_CLOSE:
                self._parts.append(_whole_or_copy(view))
                return
            elif state == _CHUNK_DATA:
                n = min(len(view), self._remaining)
                self._parts.append(_whole_or_copy(view[:n]))
                self._remaining -= n
                view = view[n:]
                if self._remaining == 0:
                    self._state = _CHUNK_END
            else:  # a line: chunk size, the CRLF after a chunk, or a trailer
                view = self._take_line(view)
            if self._state == _DONE:
                if view:
                    raise ProtocolViolation("the server sent bytes after its answer")
                self._finish()
                return
        if self._state == _DONE:
            self._finish()

    def _take_head(self, view: memoryview) -> memoryview:
        buf = self._buf
        start = max(0, len(buf) - 3)
        buf += view
        end = buf.find(b"\r\n\r\n", start)
        if end < 0:
            if len(buf) > MAX_HEAD_BYTES:
                raise ProtocolViolation(f"answer headers over {MAX_HEAD_BYTES} bytes")
            return view[len(view) :]
        rest = memoryview(bytes(buf[end + 4 :]))
        head = bytes(buf[:end])
        self._buf = bytearray()
        self._parse_head(head)
        return rest

    def _parse_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        version, _, rest = lines[0].partition(b" ")
        code, _, reason = rest.partition(b" ")
        if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit():
            raise ProtocolViolation(f"not an HTTP/1.1 status line: {lines[0][:80]!r}")
        status = int(code)
        headers: list[tuple[bytes, bytes]] = []
        length: int | None = None
        chunked = False
        keep = version == b"HTTP/1.1"
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip() or line[:1] in (b" ", b"\t"):
                raise ProtocolViolation(f"malformed header line: {line[:80]!r}")
            value = value.strip(b" \t")
            headers.append((name, value))
            lower = name.lower()
            if lower == b"content-length":
                if not value.isdigit() or (length is not None and length != int(value)):
                    raise ProtocolViolation(f"bad Content-Length: {value[:40]!r}")
                length = int(value)
            elif lower == b"transfer-encoding":
                chunked = value.lower().rsplit(b",", 1)[-1].strip() == b"chunked"
                if not chunked:
                    keep = False  # framed by the connection's end
            elif lower == b"connection":
                tokens = {t.strip() for t in value.lower().split(b",")}
                if b"close" in tokens:
                    keep = False
                elif b"keep-alive" in tokens and version == b"HTTP/1.0":
                    keep = True
        if 100 <= status < 200:  # interim (100 Continue, 103 Early Hints): the answer follows
            if status == 101:
                raise ProtocolViolation("the server switched protocols (101)")
            return
        self._status, self._reason, self._version, self._headers = status, reason, version, headers
        self._keep = keep
        if self._head_only or status in (204, 304):
            self._state = _DONE
        elif chunked:
            self._state = _CHUNK_SIZE
        elif length is not None:
            self._remaining = length
            self._state = _LENGTH if length else _DONE
        else:
            self._keep = False
            self._state = _UNTIL_CLOSE

    def _take_line(self, view: memoryview) -> memoryview:
        buf = self._buf
        start = max(0, len(buf) - 1)
        buf += view
        end = buf.find(b"\r\n", start)
        if end < 0:
            if len(buf) > _MAX_CHUNK_LINE:
                raise ProtocolViolation("a chunk line over 4096 bytes")
            return view[len(view) :]
        line = bytes(buf[:end])
        rest = memoryview(bytes(buf[end + 2 :]))
        self._buf = bytearray()
        state = self._state
        if state == _CHUNK_SIZE:
            size = line.split(b";", 1)[0].strip()
            try:
                n = int(size, 16)
            except ValueError:
                n = -1
            if n < 0 or not size:
                raise ProtocolViolation(f"bad chunk size: {line[:40]!r}")
            if n == 0:
                self._state = _TRAILERS
            else:
                self._remaining, self._state = n, _CHUNK_DATA
        elif state == _CHUNK_END:
            if line:
                raise ProtocolViolation("a chunk longer than its size")
            self._state = _CHUNK_SIZE
        elif not line:  # _TRAILERS: the blank line ends them (their fields are not kept)
            self._state = _DONE
        return rest

    def _finish(self) -> None:
        answer = self.answer
        body = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        self._parts = []
        # An answer that came before the whole request went out (a 413 while the body was
        # still being written): the rest of the body would reach the next request's reader.
        reusable = self._keep and not self.closed and self.written
        if answer is not None and not answer.done():
            answer.set_result(
                Answer(self._status, self._reason, self._headers, body, self._version, reusable)
            )


def _whole_or_copy(view: memoryview) -> bytes:
    """The bytes ``view`` shows: the object itself when it shows all of it (a large answer's
    chunks are then copied once, by the final join), else a copy of the part."""
    whole = view.obj
    return whole if type(whole) is bytes and view.nbytes == len(whole) else bytes(view)


def _has_input(fd: int) -> bool:
    """Whether ``fd`` has input (or an error, or its end) now. ``poll``, which has no fd
    limit; ``select`` where there is none."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([fd], [], [], 0)[0])

"""A client that goes away mid-request is not a server error (issue 11, item 17)."""

from __future__ import annotations

import logging
import socket
import struct
import time

import pytest

from fix_server import ServerHandle
from metersync.server.quiet import ClientGoneFilter


def _abandon_mid_body(port: int, key: str) -> None:
    """Send the head of a 10 MB upload, wait past the injected delay, then reset."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST /api/sync/readings/batch HTTP/1.1\r\nHost: t\r\nX-API-Key: "
            + key.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n\r\n"
            + b" " * 65536
        )
        time.sleep(0.6)  # the server slept 0.2 s, then waits for the rest of the body
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    time.sleep(0.3)


@pytest.mark.parametrize("fixture", ["reference_server", "metertrack_server"])
def test_a_client_gone_mid_body_logs_no_traceback(
    fixture: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    server: ServerHandle = request.getfixturevalue(fixture)
    _, key = server.new_tenant()
    server.set_faults("delay=0.2:1" if fixture == "reference_server" else "fail=0:500")
    caplog.set_level(logging.DEBUG)
    _abandon_mid_body(server.thread.port, key)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert [r for r in caplog.records if r.exc_info] == []
    if fixture == "reference_server":
        assert server.stats()["requests_per_status"] == {"client_gone": 1}
    assert server.rows(int(next(iter(server.tenants)))) == 0


def test_filter_drops_only_connection_errors() -> None:
    def record(exc: BaseException | None) -> logging.LogRecord:
        info = (type(exc), exc, None) if exc else None
        return logging.LogRecord("aiohttp.server", logging.ERROR, "", 0, "m", (), info)

    keep = ClientGoneFilter().filter
    assert not keep(record(ConnectionResetError(104, "reset")))
    assert not keep(record(BrokenPipeError()))
    assert keep(record(ValueError("a real bug")))
    assert keep(record(None))

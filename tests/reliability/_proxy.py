"""A recording pass-through proxy in front of the reference Client System (a test instrument).

It forwards every request unchanged and records, for each batch upload, when it started and
ended (monotonic clock, from the proxy's view: request received .. answer sent) and which reading
ids it carried. From that the load test proves that no reading was ever in flight twice at once.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import itertools
import re
import threading
import time
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

_ID = re.compile(rb'"meter_reading_id":\s*"([0-9a-fA-F-]{36})"')
_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


@dataclass
class Flight:
    """One batch upload as the proxy saw it."""

    started: float
    ended: float
    key_tail: str
    ids: list[bytes]
    status: int


@dataclass
class RecordingProxy:
    """``RecordingProxy(upstream_api_url).start()``; ``.base_url`` is the proxied API root."""

    upstream: str  # e.g. http://127.0.0.1:1234/api
    flights: list[Flight] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self._origin = self.upstream.rsplit("/api", 1)[0]
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self) -> RecordingProxy:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise TimeoutError("proxy did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(30)

    def snapshot(self) -> list[Flight]:
        with self._lock:
            return list(self.flights)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=300), auto_decompress=False
        )

        async def forward(request: web.Request) -> web.StreamResponse:
            started = time.monotonic()
            body = await request.read()
            headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
            try:
                async with session.request(
                    request.method,
                    self._origin + request.path_qs,
                    # BytesIO: aiohttp warns (an error under pytest) on raw bytes > 1 MiB.
                    data=io.BytesIO(body) if body else None,
                    headers=headers,
                ) as upstream:
                    payload = await upstream.read()
                    status = upstream.status
                    out_headers = {
                        k: v for k, v in upstream.headers.items() if k.lower() not in _HOP
                    }
            except (aiohttp.ClientError, TimeoutError):
                # The upstream dropped the connection (drop_after_commit): do the same.
                status, payload, out_headers = 599, b"", {}
            if request.method == "POST" and request.path.endswith("/readings/batch"):
                raw = body
                if request.headers.get("Content-Encoding", "").lower() == "gzip":
                    try:
                        raw = gzip.decompress(body)
                    except (OSError, EOFError):
                        raw = b""
                flight = Flight(
                    started,
                    time.monotonic(),
                    request.headers.get("X-API-Key", "")[-6:],
                    [m.lower() for m in _ID.findall(raw)],
                    status,
                )
                with self._lock:
                    self.flights.append(flight)
            if status == 599:
                if request.transport is not None:
                    request.transport.abort()
                return web.Response(status=502)
            # Streamed: web.Response(body=<bytes over 1 MiB>) warns, an error under pytest.
            response = web.StreamResponse(status=status, headers=out_headers)
            response.content_length = len(payload)
            await response.prepare(request)
            await response.write(payload)
            await response.write_eof()
            return response

        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", forward)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = runner.addresses[0][1]
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()
            await session.close()


def overlapping_ids(flights: list[Flight]) -> list[tuple[bytes, Flight, Flight]]:
    """Readings that were in two uploads whose time windows overlap (should be none)."""
    by_id: dict[bytes, list[Flight]] = {}
    for f in flights:
        for i in f.ids:
            by_id.setdefault(i, []).append(f)
    bad = []
    for rid, fs in by_id.items():
        if len(fs) < 2:
            continue
        fs.sort(key=lambda f: f.started)
        for a, b in itertools.pairwise(fs):
            if b.started < a.ended:
                bad.append((rid, a, b))
    return bad

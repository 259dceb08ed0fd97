"""The metrics and health endpoint: one port, stdlib ``http.server`` in a daemon thread.

``GET /metrics``  Prometheus text format of :data:`metersync.observe.REGISTRY`
``GET /healthz``  readiness + liveness: 200 ``{"status": "ok", ...}`` or 503 naming the failed
                  checks (``failed``: ``["database"]``, ``["cycles"]``, ...)
``GET /readyz``   the database check only; ``GET /livez`` the cycles check only

It binds to 127.0.0.1 unless told otherwise: metrics name tenants and queue sizes, which are
nobody else's business. The server thread never touches the sync loop's event loop or its
database connection (see :mod:`metersync.observe.probe`).
"""

from __future__ import annotations

import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from metersync.errors import ConfigError
from metersync.observe.health import Health

__all__ = ["MetricsServer"]

log = logging.getLogger(__name__)

_HEALTH_PATHS = {"/healthz": "all", "/readyz": "ready", "/livez": "live"}


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(self.server.registry))
            elif path in _HEALTH_PATHS:
                report = self.server.health.report(_HEALTH_PATHS[path])
                body = orjson.dumps(report.document(), option=orjson.OPT_INDENT_2)
                self._send(200 if report.ok else 503, "application/json", body + b"\n")
            else:
                self._send(404, "text/plain; charset=utf-8", b"try /metrics or /healthz\n")
        except Exception as exc:  # never let a scrape kill the thread; say what broke
            log.exception("metrics endpoint: %s failed", path)
            self._send(500, "text/plain; charset=utf-8", f"{type(exc).__name__}\n".encode())

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics endpoint: %s %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], registry: CollectorRegistry, health: Health
    ) -> None:
        self.registry = registry
        self.health = health
        if ":" in address[0]:  # an IPv6 literal such as ::1 or ::
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)


class MetricsServer:
    """A running endpoint. ``port`` is the bound port (useful with port 0); :meth:`close` stops
    it and whatever it opened (the probe's database connection)."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        health: Health,
        *,
        on_close: Any = None,
    ) -> None:
        try:
            self._server = _Server((host, port), registry, health)
        except OSError as exc:  # taken, not ours to bind, no such address: bad input
            raise ConfigError(
                f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}"
            ) from None
        self.health = health
        self.host = host
        self.port: int = self._server.server_address[1]
        self._on_close = on_close
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name=f"metersync-metrics-{self.port}",
            daemon=True,
        )
        self._thread.start()
        log.info("metrics and health on http://%s:%d/metrics and /healthz", host, self.port)

    @property
    def url(self) -> str:
        """``http://host:port`` (IPv6 hosts bracketed)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        """Stop serving (idempotent)."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None
            on_close()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

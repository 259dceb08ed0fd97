"""Operability of the long-running sync: Prometheus metrics, a health endpoint, JSON logs.

The engine calls the hooks (cheap, once per batch or per cycle, never raising, fine with no
endpoint running)::

    observe.phase("fetch", tenant_id, seconds)          # fetch encode post mark download_page copy
    observe.timed(task, "post", tenant_id)              # the same, when an asyncio task ends
    observe.readings("uploaded", tenant_id, n)          # uploaded downloaded rejected
    observe.cycle(tenant_id, "upload", "ok", None)      # at the end of each operation
    observe.statements(tenant_id, n)
    observe.batch_sizes(tenant_id, upload, download, source)
    observe.profile("metersync")

A process exposes them with ``observe.serve(port, host="127.0.0.1", dsn=..., interval=...)``
(``metersync sync --metrics-port PORT`` does): ``/metrics``, ``/healthz``, ``/readyz``,
``/livez``. A daemon with its own endpoint exposes :data:`REGISTRY` instead. Structured logs:
:mod:`metersync.observe.logs`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from metersync.observe.activity import ACTIVITY
from metersync.observe.health import Health, HealthReport
from metersync.observe.logs import (
    bind,
    log_context,
    loop_cycle,
    register_secret,
    report_fields,
    unbind,
)
from metersync.observe.metrics import (
    BATCH_PHASES,
    QUEUE,
    READING_KINDS,
    REGISTRY,
    batch_sizes,
    cycle,
    phase,
    profile,
    queue,
    readings,
    recording,
    statements,
    timed,
)

if TYPE_CHECKING:
    from metersync.observe.http import MetricsServer

__all__ = [
    "ACTIVITY",
    "BATCH_PHASES",
    "READING_KINDS",
    "REGISTRY",
    "Health",
    "HealthReport",
    "MetricsServer",
    "batch_sizes",
    "bind",
    "cycle",
    "endpoint",
    "log_context",
    "loop_cycle",
    "phase",
    "profile",
    "queue",
    "readings",
    "recording",
    "register_secret",
    "report_fields",
    "serve",
    "statements",
    "timed",
    "unbind",
]


def serve(
    port: int,
    host: str = "127.0.0.1",
    *,
    health: Callable[[], Mapping[str, str | None]] | None = None,
    dsn: str | None = None,
    interval: float | None = None,
    stale_intervals: float = 3.0,
    max_retries: int = 5,
    queue_ttl: float | None = None,
) -> MetricsServer:
    """Start the endpoint on ``host:port`` (port 0: any free port, see ``.port``) in a thread.

    ``dsn``: the sync database; the endpoint opens ONE connection of its own to answer the
    ``database`` check and to read the queue gauges at scrape time (cached ``queue_ttl``
    seconds, by default half the interval within 1..10 s; ``max_retries`` is the quarantine
    threshold the counts use). ``interval``: seconds
    between the loop's cycles; a tenant without progress for ``stale_intervals`` × ``interval``
    fails ``/healthz`` (no ``interval``: no liveness check). ``health``: extra checks,
    ``{name: None}`` when fine, ``{name: "reason"}`` when not.

    Returns a :class:`MetricsServer`; ``close()`` it (or use ``with``). Raises
    :class:`~metersync.errors.ConfigError` naming host and port when it cannot bind there.
    """
    from metersync.observe.http import MetricsServer

    if not 0 <= port <= 65535:
        raise ValueError(f"metrics port must be 0..65535, got {port}")
    probe = None
    if dsn:
        from metersync.observe.probe import DatabaseProbe

        if queue_ttl is None:
            # Fresh enough to follow a loop's cycles, never more than one query per second.
            queue_ttl = 10.0 if interval is None else min(10.0, max(1.0, interval / 2))
        probe = DatabaseProbe(dsn, max_retries=max_retries)
        QUEUE.set_source(probe.queue_status, ttl=queue_ttl)
    checks = Health(
        ping=probe.ping if probe is not None else None,
        interval=interval,
        stale_intervals=stale_intervals,
        extra=health,
    )

    def release() -> None:
        if probe is not None:
            QUEUE.set_source(None)
            probe.close()

    try:
        return MetricsServer(host, port, REGISTRY, checks, on_close=release)
    except BaseException:
        release()
        raise


@contextlib.contextmanager
def endpoint(port: int | None, host: str = "127.0.0.1", **kwargs: Any) -> Iterator[Any]:
    """:func:`serve` for the length of a ``with`` block; nothing at all when ``port`` is
    ``None`` (``metersync sync`` without ``--metrics-port``). Yields the server or ``None``."""
    if port is None:
        yield None
        return
    server = serve(port, host, **kwargs)
    try:
        yield server
    finally:
        server.close()


def __getattr__(name: str) -> Any:
    if name == "MetricsServer":  # the http.server machinery only when someone serves
        from metersync.observe.http import MetricsServer

        return MetricsServer
    raise AttributeError(f"module 'metersync.observe' has no attribute {name!r}")

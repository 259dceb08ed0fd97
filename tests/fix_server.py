"""The reference Client System for tests: one server per session, wiped before every test.

``reference_server`` yields a :class:`ServerHandle`. The server runs in a background thread with
its own event loop (:class:`metersync.server.ServerThread`), so sync and async tests (whatever
their loop) can both use it; each test starts with no tenant, no reading, zeroed stats and no
faults (``POST /admin/reset``: two TRUNCATEs, a few milliseconds).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest

from fix_pg import create_database, drop_database
from metersync.server import AdminClient, FaultPlan, ServerThread

_tenant_ids = itertools.count(1001)


@dataclass
class ServerHandle:
    """A running reference server plus admin helpers."""

    thread: ServerThread
    admin: AdminClient
    dsn: str
    tenants: dict[int, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        """API root (ends with ``/api``)."""
        return self.thread.base_url

    @property
    def admin_url(self) -> str:
        """Admin API root."""
        return self.thread.admin_url

    @property
    def admin_headers(self) -> dict[str, str]:
        """Headers for a raw admin request (the admin API always requires its token)."""
        return {"X-Admin-Token": self.thread.admin_token}

    def register_tenant(self, tenant_id: int, api_key: str, name: str | None = None) -> None:
        """Register (or replace) a tenant with this API key."""
        self.admin.register_tenant(tenant_id, api_key, name)
        self.tenants[tenant_id] = api_key

    def new_tenant(self) -> tuple[int, str]:
        """Register a tenant with a fresh id and random key; returns ``(tenant_id, api_key)``."""
        tenant_id, key = next(_tenant_ids), f"test-key-{secrets.token_hex(12)}"
        self.register_tenant(tenant_id, key, f"tenant {tenant_id}")
        return tenant_id, key

    def set_faults(self, plan: str | FaultPlan) -> dict[str, Any]:
        """Replace the fault plan (spec string or :class:`FaultPlan`)."""
        return self.admin.set_faults(plan)

    def clear_faults(self) -> None:
        """Inject nothing from now on."""
        self.admin.clear_faults()

    def stats(self) -> dict[str, Any]:
        """Server counters (``GET /admin/stats``)."""
        return self.admin.stats()

    def load_readings(self, tenant_id: int, readings: list[dict[str, Any]]) -> dict[str, Any]:
        """Store readings for a tenant directly on the server."""
        return self.admin.load_readings(tenant_id, readings)

    def rows(self, tenant_id: int) -> int:
        """Readings the server holds for a tenant."""
        return int(self.stats()["rows_per_tenant"].get(str(tenant_id), 0))

    def copies(
        self, tenant_id: int | None = None, ids: list[str] | None = None, min_copies: int = 1
    ) -> dict[str, int]:
        """MeterTrack emulation only: rows per sent ``meter_reading_id``."""
        return self.admin.copies(tenant_id, ids, min_copies)


def json_text(value: Any) -> str:
    """JSON text as a Client System might write it: Decimal exactly, NaN/Infinity (Decimal or
    float) as the bare words (what a sloppy server sends)."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{json_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(json_text(v) for v in value) + "]"
    if isinstance(value, Decimal):
        return str(value) if value.is_finite() else ("NaN" if value.is_nan() else "Infinity")
    return json.dumps(value)


def clean_env() -> dict[str, str]:
    """This process's environment without any ``METERSYNC_*`` setting."""
    return {k: v for k, v in os.environ.items() if not k.startswith("METERSYNC_")}


@contextlib.contextmanager
def serve_process(
    *args: str, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``metersync serve ARGS`` in a subprocess (``env``, default :func:`clean_env`): yields
    ``(process, base_url)`` once it printed its URL. A block that ends normally then stops it
    with SIGTERM and asserts exit 0; one that raises leaves it killed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "metersync", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env() if env is None else env,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        yield proc, proc.stdout.readline().strip()
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _server_session(
    pg_admin_dsn: str, prefix: str, profile: str
) -> Iterator[tuple[ServerThread, AdminClient, str]]:
    """A server of ``profile`` over a fresh database (``prefix``), with its admin client; the
    database is dropped afterwards."""
    dsn = create_database(pg_admin_dsn, prefix)
    thread = ServerThread(dsn, profile=profile).start()
    try:
        with AdminClient(thread.admin_url, thread.admin_token) as admin:
            yield thread, admin, dsn
    finally:
        thread.stop()
        drop_database(pg_admin_dsn, dsn)


@pytest.fixture(scope="session")
def _reference_server_session(
    pg_admin_dsn: str,
) -> Iterator[tuple[ServerThread, AdminClient, str]]:
    yield from _server_session(pg_admin_dsn, "ms_cs", "metersync")


@pytest.fixture(scope="session")
def _metertrack_server_session(
    pg_admin_dsn: str,
) -> Iterator[tuple[ServerThread, AdminClient, str]]:
    yield from _server_session(pg_admin_dsn, "ms_mt", "metertrack")


@pytest.fixture
def metertrack_server(
    _metertrack_server_session: tuple[ServerThread, AdminClient, str],
) -> ServerHandle:
    """A clean emulation of the original MeterTrack Client System on loopback (issue 10):
    not idempotent, no download, its own reply shapes; ``copies()`` counts rows per sent id."""
    thread, admin, dsn = _metertrack_server_session
    admin.reset()
    return ServerHandle(thread, admin, dsn)


@pytest.fixture
def reference_server(
    _reference_server_session: tuple[ServerThread, AdminClient, str],
) -> ServerHandle:
    """A clean reference Client System on loopback (no tenants, readings, stats or faults)."""
    thread, admin, dsn = _reference_server_session
    admin.reset()
    return ServerHandle(thread, admin, dsn)

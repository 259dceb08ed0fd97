"""Measurement harness shared by ``metersync bench`` and the benchmark suite (``benchmarks/``).

- :class:`PeakRss`: samples this process's resident set size in a thread while a step runs;
- :class:`ServerProcess`: the reference Client System in its own process (its own GIL, like a
  real remote system), so that it does not skew the timings of the process being measured.

Needs the ``bench`` extra (psutil) for :class:`PeakRss` and the ``server`` extra in the child of
:class:`ServerProcess`; both are imported only when used.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import threading
from types import TracebackType
from typing import Any

__all__ = ["PeakRss", "ServerProcess"]


class PeakRss:
    """Samples this process's RSS every ``interval`` seconds from construction to :meth:`stop`.

    After ``stop()``: ``peak_mb`` (the highest RSS seen, MiB) and ``growth_mb`` (peak minus the
    RSS at construction).
    """

    def __init__(self, interval: float = 0.01) -> None:
        import psutil

        self._proc = psutil.Process()
        self._interval = interval
        self.start_bytes = self.peak_bytes = self._proc.memory_info().rss
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.wait(self._interval):
            self.peak_bytes = max(self.peak_bytes, self._proc.memory_info().rss)

    def stop(self) -> PeakRss:
        """Stop sampling (idempotent) and return ``self``."""
        self._done.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._proc.memory_info().rss)
        return self

    @property
    def peak_mb(self) -> float:
        """The peak RSS in MiB."""
        return self.peak_bytes / 2**20

    @property
    def growth_mb(self) -> float:
        """How far the RSS rose above its value at construction, in MiB."""
        return (self.peak_bytes - self.start_bytes) / 2**20


# The child reads one JSON line on stdin (DSN, admin token, options: secrets never go in argv)
# and prints the server's base URL once it listens. It runs on the loop `metersync serve` runs
# on (metersync.cli._loop: uvloop where installed).
_SERVER_SCRIPT = """
import json, sys
from metersync.cli._loop import run
from metersync.server.runner import serve_forever
params = json.loads(sys.stdin.readline())
def ready(server):
    print(server.base_url, flush=True)
run(serve_forever(params["dsn"], "127.0.0.1", 0, admin_token=params["admin_token"],
                  on_ready=ready, **params["options"]))
"""


class ServerProcess:
    """The reference Client System on a free loopback port, in a child process.

    ``dsn`` is the server's own database; ``options`` are keyword arguments of
    :func:`metersync.server.runner.serve_forever` (JSON-able, e.g. ``max_batch``). The admin API
    gets a fresh random token, used by :meth:`register`. Use as a context manager or call
    :meth:`stop`.
    """

    def __init__(self, dsn: str, **options: Any) -> None:
        self.admin_token = secrets.token_urlsafe(24)
        self._proc = subprocess.Popen(
            [sys.executable, "-W", "ignore", "-c", _SERVER_SCRIPT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdin is not None and self._proc.stdout is not None
        params = {"dsn": dsn, "admin_token": self.admin_token, "options": options}
        self._proc.stdin.write(json.dumps(params) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline().strip()
        if not line.startswith("http"):
            self.stop()
            raise RuntimeError(f"the reference Client System did not start (said {line!r})")
        self.base_url = line
        self.admin_url = line.removesuffix("/api") + "/admin"

    def register(self, tenant_id: int, api_key: str, name: str = "bench") -> None:
        """Register ``tenant_id`` with ``api_key`` through the admin API."""
        import httpx

        response = httpx.post(
            f"{self.admin_url}/tenants",
            json={"tenant_id": tenant_id, "api_key": api_key, "name": name},
            headers={"X-Admin-Token": self.admin_token},
        )
        response.raise_for_status()

    def stop(self) -> None:
        """Terminate the server process and wait for it (idempotent)."""
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        for pipe in (self._proc.stdin, self._proc.stdout):
            if pipe is not None and not pipe.closed:
                pipe.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

"""A small synchronous client of the reference server's admin API (tests, demo, benchmarks)."""

from __future__ import annotations

from types import TracebackType
from typing import Any

import httpx
import orjson

from metersync.errors import ClientSystemError
from metersync.server.faults import FaultPlan


class AdminClient:
    """Talks to ``<admin_url>``: tenants, faults, stats, bulk load. Not for production use."""

    def __init__(self, admin_url: str, admin_token: str | None = None, timeout: float = 30.0):
        headers = {"X-Admin-Token": admin_token} if admin_token else {}
        self._http = httpx.Client(base_url=admin_url, headers=headers, timeout=timeout)

    def __repr__(self) -> str:
        return f"AdminClient({str(self._http.base_url)!r})"

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        content = None if body is None else orjson.dumps(body)
        response = self._http.request(
            method, path, content=content, headers={"Content-Type": "application/json"}
        )
        if response.status_code != 200:
            raise ClientSystemError(
                f"admin {method} {path} -> {response.status_code}: {response.text[:200]}",
                status=response.status_code,
            )
        return orjson.loads(response.content)

    def register_tenant(
        self, tenant_id: int, api_key: str, name: str | None = None, *, active: bool = True
    ) -> None:
        """Register (or replace) a tenant and its API key (``active=False``: only the MeterTrack
        emulation keeps inactive tenants, whose key it then refuses)."""
        body: dict[str, Any] = {"tenant_id": tenant_id, "api_key": api_key, "name": name}
        if not active:
            body["active"] = False
        self._call("POST", "/tenants", body)

    def copies(
        self, tenant_id: int | None = None, ids: list[str] | None = None, min_copies: int = 1
    ) -> dict[str, int]:
        """MeterTrack emulation: rows per sent ``meter_reading_id`` (ids with at least
        ``min_copies`` rows; ``ids`` limits the answer to those)."""
        body = {"tenant_id": tenant_id, "ids": ids, "min_copies": min_copies}
        return dict(self._call("POST", "/copies", body)["copies"])

    def set_faults(self, plan: str | FaultPlan) -> dict[str, Any]:
        """Replace the fault plan: a spec string (``"fail=3:503"``) or a :class:`FaultPlan`."""
        body = {"spec": plan} if isinstance(plan, str) else plan.to_dict()
        return self._call("POST", "/faults", body)

    def clear_faults(self) -> None:
        """Inject nothing from now on."""
        self._call("DELETE", "/faults")

    def stats(self) -> dict[str, Any]:
        """The server's counters (see ``GET /admin/stats``)."""
        return self._call("GET", "/stats")

    def reset_stats(self) -> None:
        """Zero the counters (stored rows stay)."""
        self._call("POST", "/stats/reset")

    def reset(self) -> None:
        """Delete every tenant and reading, zero the counters, clear the faults."""
        self._call("POST", "/reset")

    def load_readings(self, tenant_id: int, readings: list[dict[str, Any]]) -> dict[str, Any]:
        """Store readings for a tenant directly (no fault rules); returns the upload answer."""
        return self._call("POST", "/readings", {"tenant_id": tenant_id, "readings": readings})

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

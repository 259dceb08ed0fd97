"""When each tenant last made progress: what the liveness check reads.

The engine's hooks (:func:`metersync.observe.cycle` at the end of an operation,
:func:`metersync.observe.phase` after each batch step) stamp the tenant here with
``time.monotonic()``. A batch counts as progress too, so a cycle that drains a large backlog for
longer than the check's limit does not look hung while its batches keep moving. A loop that
says when each of its cycles starts (:func:`metersync.observe.loop_cycle`) lets the check tell
a tenant waiting for its turn in a long cycle from one the loop no longer serves.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

__all__ = ["ACTIVITY", "Activity", "TenantActivity"]


@dataclass(slots=True)
class TenantActivity:
    """One tenant's last cycle end and last batch step (monotonic seconds; ``None``: never)."""

    last_cycle: float | None = None
    last_batch: float | None = None
    last_outcome: str | None = None

    def last_progress(self) -> float | None:
        """The newer of the last cycle end and the last batch step."""
        stamps = [s for s in (self.last_cycle, self.last_batch) if s is not None]
        return max(stamps) if stamps else None


@dataclass
class Activity:
    """Per-tenant progress stamps, written by the hooks (any thread) and read by ``/healthz``."""

    started: float = field(default_factory=time.monotonic)
    tenants: dict[int, TenantActivity] = field(default_factory=dict)
    #: Start times of the loop's last two cycles (empty: no loop said so).
    loop_starts: deque[float] = field(default_factory=lambda: deque(maxlen=2))
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _tenant(self, tenant_id: int) -> TenantActivity:
        entry = self.tenants.get(tenant_id)
        if entry is None:
            with self._lock:
                entry = self.tenants.setdefault(tenant_id, TenantActivity())
        return entry

    def expect(self, tenant_id: int) -> None:
        """Know a tenant before its first cycle (its first cycle is then due from now)."""
        self._tenant(tenant_id)

    def cycle_ended(self, tenant_id: int, outcome: str) -> None:
        """An operation (upload or download) of the tenant ended, whatever its outcome."""
        entry = self._tenant(tenant_id)
        entry.last_cycle = time.monotonic()
        entry.last_outcome = outcome

    def loop_cycle_started(self) -> None:
        """The loop started a cycle over its tenants."""
        self.loop_starts.append(time.monotonic())

    def batch_step(self, tenant_id: int) -> None:
        """A batch step (fetch, POST, COPY, ...) of the tenant finished."""
        self._tenant(tenant_id).last_batch = time.monotonic()

    def snapshot(self) -> dict[int, TenantActivity]:
        """A copy of the stamps, safe to read while the hooks write."""
        with self._lock:
            items = list(self.tenants.items())
        return {tid: TenantActivity(a.last_cycle, a.last_batch, a.last_outcome) for tid, a in items}

    def reset(self) -> None:
        """Forget every tenant and restart the clock (tests; a daemon restarting its loop)."""
        with self._lock:
            self.tenants.clear()
            self.loop_starts.clear()
            self.started = time.monotonic()


#: The process-wide stamps the module-level hooks write.
ACTIVITY = Activity()

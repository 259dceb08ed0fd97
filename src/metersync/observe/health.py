"""Readiness and liveness: the checks behind ``/healthz``, ``/readyz`` and ``/livez``.

- ``database`` (readiness): one cheap statement on the sync database worked (the endpoint's own
  connection, see :mod:`metersync.observe.probe`).
- ``cycles`` (liveness): something made progress — an operation ended (any outcome), a batch
  step finished or a loop cycle started — within ``limit`` = ``stale_intervals`` × ``interval``
  seconds, and no tenant is left behind: a tenant fails when it made no progress for ``limit``
  seconds AND (when the loop reports its cycles, :func:`metersync.observe.loop_cycle`) during
  the whole last completed loop cycle — a tenant waiting for its turn while a long cycle drains
  another tenant's backlog is not stale. A tenant is known once the engine reported its batch
  sizes or a cycle; before its first report its clock runs from the moment the checks started.
  Skipped when no ``interval`` is given (a library user without a loop).
- any extra checks of the ``extra`` callable: ``{name: None}`` when fine, ``{name: "reason"}``
  when not.

A failed cycle is still progress: the loop is alive and will try again. Repeated failures are an
alert (``metersync_cycles_total{outcome="error"}``), not a reason for a supervisor to restart.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from metersync.observe.activity import ACTIVITY, Activity

__all__ = ["CheckResult", "Health", "HealthReport"]

ExtraChecks = Callable[[], Mapping[str, str | None]]


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One check: passed or not, and a sentence saying what was seen."""

    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class HealthReport:
    """All checks asked for; ``ok`` when every one passed."""

    checks: dict[str, CheckResult]
    tenants: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return all(c.ok for c in self.checks.values())

    def document(self) -> dict[str, Any]:
        """The JSON body: ``status`` ok/fail, the checks, the failing ones named in ``failed``."""
        return {
            "status": "ok" if self.ok else "fail",
            "failed": [name for name, c in self.checks.items() if not c.ok],
            "checks": {name: {"ok": c.ok, "detail": c.detail} for name, c in self.checks.items()},
            "tenants": self.tenants,
        }


class Health:
    """The checks of one endpoint.

    ``ping`` runs one cheap statement on the sync database (raises when unreachable; ``None``:
    no database check); ``interval`` is the loop's seconds between cycles and
    ``stale_intervals`` how many of them a tenant may go without progress; ``extra`` adds checks.
    """

    def __init__(
        self,
        *,
        ping: Callable[[], Any] | None = None,
        interval: float | None = None,
        stale_intervals: float = 3.0,
        extra: ExtraChecks | None = None,
        activity: Activity = ACTIVITY,
    ) -> None:
        if interval is not None and interval <= 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval}")
        if stale_intervals <= 0:
            raise ValueError(f"stale_intervals must be > 0, got {stale_intervals}")
        self.ping = ping
        self.interval = interval
        self.stale_intervals = stale_intervals
        self.extra = extra
        self.activity = activity

    @property
    def stale_after(self) -> float | None:
        """Seconds without progress after which a tenant fails liveness (``None``: no check)."""
        return None if self.interval is None else self.interval * self.stale_intervals

    def readiness(self) -> dict[str, CheckResult]:
        """The database check."""
        if self.ping is None:
            return {}
        try:
            tenants = self.ping()
        except Exception as exc:
            return {"database": CheckResult(False, f"sync database unreachable: {_one_line(exc)}")}
        return {"database": CheckResult(True, f"sync database reachable ({tenants} tenants)")}

    def liveness(self) -> tuple[dict[str, CheckResult], dict[str, Any]]:
        """The cycles check and, per tenant, the age of its last cycle and last progress."""
        limit = self.stale_after
        now = time.monotonic()
        tenants: dict[str, Any] = {}
        stale: list[str] = []
        loop = list(self.activity.loop_starts)
        # The start of the last COMPLETED loop cycle: a tenant with no progress since then was
        # skipped by a whole cycle. None: no loop reports cycles (judge by age alone); -inf:
        # the first cycle is still running (nobody was skipped by a complete cycle yet).
        completed = None if not loop else (loop[-2] if len(loop) == 2 else float("-inf"))
        latest = loop[-1] if loop else self.activity.started
        for tenant_id, entry in sorted(self.activity.snapshot().items()):
            progress = entry.last_progress()
            since = progress if progress is not None else self.activity.started
            latest = max(latest, since)
            age = now - since
            tenants[str(tenant_id)] = {
                "last_cycle_age_s": None
                if entry.last_cycle is None
                else round(now - entry.last_cycle, 3),
                "last_progress_age_s": None if progress is None else round(now - progress, 3),
                "last_outcome": entry.last_outcome,
            }
            skipped = completed is None or since < completed
            if limit is not None and age > limit and skipped:
                what = "no cycle yet" if progress is None else f"last progress {age:.0f} s ago"
                stale.append(f"tenant {tenant_id}: {what}")
        if limit is None:
            return {}, tenants
        if now - latest > limit and not stale:
            stale.append(f"no progress at all for {now - latest:.0f} s")
        limit_text = f"limit {limit:g} s = {self.stale_intervals:g} x {self.interval:g} s interval"
        if stale:
            return {"cycles": CheckResult(False, f"{'; '.join(stale)} ({limit_text})")}, tenants
        return {
            "cycles": CheckResult(True, f"{len(tenants)} tenant(s) progressing ({limit_text})")
        }, tenants

    def extras(self) -> dict[str, CheckResult]:
        """The checks of the ``extra`` callable."""
        if self.extra is None:
            return {}
        try:
            found = dict(self.extra())
        except Exception as exc:
            return {"extra": CheckResult(False, f"health callable raised {_one_line(exc)}")}
        return {
            str(name): CheckResult(reason is None, "ok" if reason is None else str(reason))
            for name, reason in found.items()
        }

    def report(self, which: str = "all") -> HealthReport:
        """``which``: ``ready`` (database), ``live`` (cycles) or ``all`` (both and the extras)."""
        checks: dict[str, CheckResult] = {}
        tenants: dict[str, Any] = {}
        if which in ("ready", "all"):
            checks.update(self.readiness())
        if which in ("live", "all"):
            live, tenants = self.liveness()
            checks.update(live)
        if which == "all":
            checks.update(self.extras())
        return HealthReport(checks, tenants)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__

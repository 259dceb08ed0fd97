"""Fault injection for the reference Client System.

A :class:`FaultPlan` says which faults to inject; a :class:`FaultInjector` holds one plan's
running state (counters of "the next N requests", the seeded random generator) and the count of
every fault it injected, which ``GET /admin/stats`` reports.

The plan can be written as a short spec string (``metersync serve --faults ...``, tests)::

    fail=3:503,delay=0.2,drop_after_commit=2,rate429=0.1:1,reject=meter_id:13

Entries, comma separated (``reject`` may repeat):

* ``fail=N:STATUS``        fail the next N matching requests with STATUS
* ``random=F:STATUS``      fail a fraction F (0..1) of matching requests with STATUS
* ``throttle=N:SECONDS``   answer the next N matching requests 429 with ``Retry-After: SECONDS``
* ``rate429=F:SECONDS``    answer a fraction F of matching requests 429 with ``Retry-After``
* ``delay=SECONDS[:N]``    delay matching requests by SECONDS (only the next N when given)
* ``drop_after_commit=N``  the next N batch uploads commit, then the connection is closed
  without an answer (the lost-response case)
* ``miscount=N``           the next N batch answers report one reading too many as inserted
* ``legacy=N``             the next N batch answers use the old ``recordsProcessed`` shape
* ``reject=FIELD:VALUE``   reject each uploaded reading whose FIELD equals VALUE
* ``malformed_page=N``     the next N download pages carry a reading with a bad UUID
* ``oversize_page=N``      the next N download pages hold one reading more than asked for
* ``garbage_page=N``       the next N download pages are not ``{"readings": [...], ...}``
* ``path=PREFIX``          request path prefix matched by fail/random/throttle/rate429/delay
  (default: the batch endpoint ``/api/sync/readings/batch``)
* ``seed=N``               seed of the random generator (default 0: runs are reproducible)
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from metersync.errors import ConfigError

BATCH_PATH = "/api/sync/readings/batch"

_COUNT_FIELDS = (
    "drop_after_commit",
    "miscount",
    "legacy",
    "malformed_page",
    "oversize_page",
    "garbage_page",
)


@dataclass(frozen=True)
class RejectRule:
    """Reject an uploaded reading whose ``field`` equals ``value``.

    ``value`` is compared as a number when both sides are numbers (``13`` matches ``13.0``),
    ``null`` matches a JSON null, anything else compares as text.
    """

    field: str
    value: str

    def matches(self, reading: dict[str, Any]) -> bool:
        """True when the reading's field equals the rule's value."""
        if self.field not in reading:
            return False
        got = reading[self.field]
        if got is None:
            return self.value == "null"
        if isinstance(got, (int, float)) and not isinstance(got, bool):
            try:
                return float(self.value) == float(got)
            except ValueError:
                return False
        return str(got) == self.value


@dataclass(frozen=True)
class FaultPlan:
    """What to inject. Every field defaults to "no fault"; see the module docstring."""

    path: str = BATCH_PATH
    fail_count: int = 0
    fail_status: int = 503
    fail_rate: float = 0.0
    fail_rate_status: int = 503
    throttle_count: int = 0
    throttle_rate: float = 0.0
    retry_after: float = 1.0
    delay: float = 0.0
    delay_count: int | None = None
    drop_after_commit: int = 0
    miscount: int = 0
    legacy: int = 0
    malformed_page: int = 0
    oversize_page: int = 0
    garbage_page: int = 0
    reject: tuple[RejectRule, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("fail_count", "throttle_count", *_COUNT_FIELDS):
            if getattr(self, name) < 0:
                raise ConfigError(f"fault plan: {name} must be >= 0, got {getattr(self, name)}")
        for name in ("fail_rate", "throttle_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"fault plan: {name} must be in 0..1, got {getattr(self, name)}")
        for name in ("fail_status", "fail_rate_status"):
            if not 400 <= getattr(self, name) <= 599:
                raise ConfigError(
                    f"fault plan: {name} must be an HTTP error status, got {getattr(self, name)}"
                )
        if self.delay < 0 or self.retry_after < 0:
            raise ConfigError("fault plan: delay and retry_after must be >= 0")
        if self.delay_count is not None and self.delay_count < 0:
            raise ConfigError(f"fault plan: delay_count must be >= 0, got {self.delay_count}")
        if not self.path.startswith("/"):
            raise ConfigError(f"fault plan: path must start with '/', got {self.path!r}")

    @property
    def empty(self) -> bool:
        """True when the plan injects nothing."""
        return self == FaultPlan(path=self.path, seed=self.seed, retry_after=self.retry_after)

    @classmethod
    def from_spec(cls, spec: str) -> FaultPlan:
        """Parse a spec string such as ``"fail=3:503,delay=0.2,reject=meter_id:13"``."""
        kwargs: dict[str, Any] = {}
        rejects: list[RejectRule] = []
        for raw in spec.split(","):
            entry = raw.strip()
            if not entry:
                continue
            key, sep, value = entry.partition("=")
            key = key.strip()
            if not sep or not value:
                raise ConfigError(f"fault spec: entry {entry!r} is not KEY=VALUE")
            try:
                _parse_entry(key, value.strip(), kwargs, rejects)
            except ValueError as exc:
                raise ConfigError(f"fault spec: bad value in {entry!r}: {exc}") from None
        if rejects:
            kwargs["reject"] = tuple(rejects)
        return cls(**kwargs)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FaultPlan:
        """Build a plan from its JSON form (:meth:`to_dict`), or from ``{"spec": "..."}``."""
        if "spec" in data:
            if len(data) != 1 or not isinstance(data["spec"], str):
                raise ConfigError('fault plan: {"spec": "..."} takes no other field')
            return cls.from_spec(data["spec"])
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"fault plan: unknown field(s) {', '.join(unknown)}")
        kwargs = dict(data)
        if "reject" in kwargs:
            kwargs["reject"] = tuple(
                RejectRule(str(r["field"]), str(r["value"])) for r in kwargs["reject"]
            )
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"fault plan: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON-ready data (inverse of :meth:`from_dict`)."""
        data = asdict(self)
        data["reject"] = [asdict(r) for r in self.reject]
        return data


def _pair(value: str) -> tuple[str, str]:
    first, sep, second = value.partition(":")
    if not sep:
        raise ValueError("expected A:B")
    return first, second


def _parse_entry(key: str, value: str, kwargs: dict[str, Any], rejects: list[RejectRule]) -> None:
    if key == "fail":
        n, status = _pair(value)
        kwargs["fail_count"], kwargs["fail_status"] = int(n), int(status)
    elif key == "random":
        fraction, status = _pair(value)
        kwargs["fail_rate"], kwargs["fail_rate_status"] = float(fraction), int(status)
    elif key == "throttle":
        n, seconds = _pair(value)
        kwargs["throttle_count"], kwargs["retry_after"] = int(n), float(seconds)
    elif key == "rate429":
        fraction, seconds = _pair(value)
        kwargs["throttle_rate"], kwargs["retry_after"] = float(fraction), float(seconds)
    elif key == "delay":
        seconds, _, n = value.partition(":")
        kwargs["delay"] = float(seconds)
        kwargs["delay_count"] = int(n) if n else None
    elif key in _COUNT_FIELDS:
        kwargs[key] = int(value)
    elif key == "reject":
        name, expected = _pair(value)
        rejects.append(RejectRule(name, expected))
    elif key == "path":
        kwargs["path"] = value
    elif key == "seed":
        kwargs["seed"] = int(value)
    else:
        raise ConfigError(f"fault spec: unknown fault {key!r}")


@dataclass
class Injection:
    """What the injector decided for one request before it is handled."""

    status: int | None = None  # answer with this status instead of handling
    retry_after: float | None = None
    delay: float = 0.0


@dataclass
class FaultInjector:
    """Running state of one :class:`FaultPlan`; counts every fault it injects."""

    plan: FaultPlan = field(default_factory=FaultPlan)
    injected: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.plan.seed)
        self._left = {
            "fail": self.plan.fail_count,
            "throttle": self.plan.throttle_count,
            **{name: getattr(self.plan, name) for name in _COUNT_FIELDS},
        }
        self._delay_left = self.plan.delay_count

    def before(self, path: str) -> Injection:
        """Decide the request-level faults (status, 429, delay) for a request to ``path``."""
        plan = self.plan
        if not path.startswith(plan.path):
            return Injection()
        if self._take("throttle"):
            self.injected["throttle"] += 1
            return Injection(status=429, retry_after=plan.retry_after)
        if self._take("fail"):
            self.injected["fail"] += 1
            return Injection(status=plan.fail_status)
        if plan.throttle_rate and self._rng.random() < plan.throttle_rate:
            self.injected["rate429"] += 1
            return Injection(status=429, retry_after=plan.retry_after)
        if plan.fail_rate and self._rng.random() < plan.fail_rate:
            self.injected["random"] += 1
            return Injection(status=plan.fail_rate_status)
        if plan.delay > 0 and (self._delay_left is None or self._delay_left > 0):
            if self._delay_left is not None:
                self._delay_left -= 1
            self.injected["delay"] += 1
            return Injection(delay=plan.delay)
        return Injection()

    def take(self, name: str) -> bool:
        """Consume one of the next-N faults ``name`` (drop_after_commit, miscount, ...)."""
        if self._take(name):
            self.injected[name] += 1
            return True
        return False

    def rejection(self, reading: dict[str, Any]) -> str | None:
        """The error text when a reject rule matches the reading, else None."""
        for rule in self.plan.reject:
            if rule.matches(reading):
                self.injected["reject"] += 1
                return f"rejected by rule {rule.field}={rule.value}"
        return None

    def _take(self, name: str) -> bool:
        if self._left[name] > 0:
            self._left[name] -= 1
            return True
        return False

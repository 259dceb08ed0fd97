"""Failpoints: named places in the sync engine where a test can crash the process on purpose.

The reliability tests prove that no reading is lost or duplicated whatever the moment of a crash.
A random ``SIGKILL`` rarely lands exactly between "the Client System confirmed" and "the readings
are marked", so the engine names those moments and a test asks for a crash at exactly one of them::

    METERSYNC_FAILPOINTS="upload.after_post=3"            # SIGKILL on the 3rd time it is reached
    METERSYNC_FAILPOINTS="upload.before_mark=1,download.before_commit=2"
    METERSYNC_FAILPOINTS="upload.before_mark=1:sleep=2.5" # pause 2.5 s instead (widen a window)
    METERSYNC_FAILPOINTS="download.before_commit=2:raise" # raise FailpointError instead

Actions: ``kill`` (the default: ``SIGKILL`` to ourselves, no cleanup, no ``finally``, exactly what
a power cut or the OOM killer does), ``sleep=<seconds>`` (every hit from the Nth on), ``raise``
(:class:`FailpointError` on the Nth hit only).

Without the environment variable :func:`failpoint` costs one lookup in an empty dict; the variable
is read once, at import. Known names are listed in :data:`NAMES`; a misspelt name in the variable
is an error at import so that a test cannot silently inject nothing.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

ENV_VAR = "METERSYNC_FAILPOINTS"

#: Every failpoint the engine declares (``upload.py``, ``download.py``, ``db.py``).
NAMES: frozenset[str] = frozenset(
    {
        "upload.after_fetch",  # a batch was fetched from the sync database, nothing sent yet
        "upload.before_post",  # the body is encoded, the POST is about to start
        "upload.after_post",  # the Client System answered, nothing marked yet
        "upload.before_mark",  # inside the mark step, before the UPDATE statement
        "upload.after_mark",  # the UPDATE statement returned
        "download.after_fetch_page",  # a page arrived, nothing written yet
        "download.before_commit",  # inside the page transaction: COPY done, cursor not committed
        "download.after_commit",  # the page and its cursor are committed
    }
)


class FailpointError(RuntimeError):
    """Raised by a failpoint whose action is ``raise``."""


@dataclass(frozen=True, slots=True)
class _Rule:
    hit: int  # act on this hit (1-based)
    action: str  # "kill" | "sleep" | "raise"
    seconds: float = 0.0


def parse(text: str) -> dict[str, _Rule]:
    """Parse a ``METERSYNC_FAILPOINTS`` value; ``ValueError`` names the bad entry."""
    rules: dict[str, _Rule] = {}
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        name, sep, spec = entry.partition("=")
        name = name.strip()
        if not sep or name not in NAMES:
            raise ValueError(
                f"{ENV_VAR}: bad entry {entry!r}: expected <name>=<hit>[:action] "
                f"with a name among {sorted(NAMES)}"
            )
        count, _, action = spec.partition(":")
        try:
            hit = int(count)
        except ValueError:
            raise ValueError(
                f"{ENV_VAR}: hit count of {name!r} is not an integer: {count!r}"
            ) from None
        if hit < 1:
            raise ValueError(f"{ENV_VAR}: hit count of {name!r} must be >= 1, got {hit}")
        action = action.strip() or "kill"
        if action.startswith("sleep="):
            try:
                seconds = float(action.removeprefix("sleep="))
            except ValueError:
                raise ValueError(f"{ENV_VAR}: bad sleep for {name!r}: {action!r}") from None
            rules[name] = _Rule(hit, "sleep", seconds)
        elif action in ("kill", "raise"):
            rules[name] = _Rule(hit, action)
        else:
            raise ValueError(
                f"{ENV_VAR}: unknown action {action!r} for {name!r} (kill|sleep=S|raise)"
            )
    return rules


_RULES: dict[str, _Rule] = parse(os.environ.get(ENV_VAR, ""))
_HITS: dict[str, int] = {}


def failpoint(name: str) -> None:
    """Mark a named crash point; act only if ``METERSYNC_FAILPOINTS`` selects it.

    Synchronous on purpose: a ``kill`` must happen exactly here, not at the next ``await``.
    """
    rule = _RULES.get(name)
    if rule is None:
        return
    hits = _HITS[name] = _HITS.get(name, 0) + 1
    if rule.action == "sleep":
        if hits >= rule.hit:
            time.sleep(rule.seconds)
        return
    if hits != rule.hit:
        return
    if rule.action == "raise":
        raise FailpointError(f"failpoint {name} (hit {hits})")
    # Flush nothing, run no handler: a crash at exactly this phase.
    os.kill(os.getpid(), signal.SIGKILL)


def hits(name: str) -> int:
    """How often ``name`` was reached in this process (counted only for selected failpoints)."""
    return _HITS.get(name, 0)

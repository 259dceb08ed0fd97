"""The event loop the command line runs on: uvloop where it is installed (issue 12).

Every command of the CLI is one coroutine on one event loop; with 300 small tenants that loop
is the busiest thread of the process (tasks, timers, socket callbacks for every POST and
statement). uvloop (libuv, compiled) runs the same asyncio programs with less CPU per callback:
the 300-tenant upload took 10% less wall time on it, one large tenant the same (A/B in
docs/remote-notes.md). It is a dependency of metersync on Linux and macOS (uvloop has no
Windows build).

``METERSYNC_LOOP`` chooses, like ``METERSYNC_IMPL`` for the codec: ``uvloop`` requires it (an
error naming the problem when it cannot be imported), ``asyncio`` takes the standard loop, unset
takes uvloop when importable, else the standard loop — with a warning where uvloop should have
been installed. :func:`loop_name` records the choice; ``metersync --version`` shows it.

The library (``SyncManager``, the engine) runs on whatever loop its caller runs: this choice is
the command line's only.
"""

from __future__ import annotations

import asyncio
import os
import sys
import warnings
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from metersync.errors import ConfigError

__all__ = ["ENV_VAR", "loop_name", "run"]

ENV_VAR = "METERSYNC_LOOP"
T = TypeVar("T")

_choice: tuple[str, Callable[[], asyncio.AbstractEventLoop] | None] | None = None


def _select() -> tuple[str, Callable[[], asyncio.AbstractEventLoop] | None]:
    wanted = os.environ.get(ENV_VAR, "").strip().lower()
    if wanted not in ("", "uvloop", "asyncio"):
        raise ConfigError(f"{ENV_VAR}={wanted!r} is not valid: use 'uvloop' or 'asyncio'")
    if wanted == "asyncio":
        return "asyncio", None
    try:
        import uvloop
    except ImportError as exc:
        if wanted == "uvloop":
            raise ConfigError(f"{ENV_VAR}=uvloop but uvloop cannot be imported: {exc}") from exc
        if sys.platform != "win32":  # a dependency here: its absence is worth a word
            warnings.warn(
                f"metersync: uvloop is not installed, the CLI runs on asyncio's own loop "
                f"(slower with many tenants; set {ENV_VAR}=asyncio to silence this)",
                RuntimeWarning,
                stacklevel=3,
            )
        return "asyncio", None
    return "uvloop", uvloop.new_event_loop


def _chosen() -> tuple[str, Callable[[], asyncio.AbstractEventLoop] | None]:
    global _choice
    if _choice is None:
        _choice = _select()
    return _choice


def loop_name() -> str:
    """``uvloop`` or ``asyncio``: the loop :func:`run` uses (chosen on first use)."""
    return _chosen()[0]


def run(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coro)`` on the chosen loop."""
    _, factory = _chosen()
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)

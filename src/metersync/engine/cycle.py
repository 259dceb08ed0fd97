"""What every engine cycle measures about itself: wall time and sync-database statements.

The upload and download cycles both report ``seconds`` and ``statements`` for the whole cycle,
also when it ends by raising; :class:`CycleClock` is that bookkeeping, started with the cycle.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["CycleClock"]


class CycleClock:
    """Started at the beginning of a cycle; :meth:`totals` gives the report's two figures.

    ``db`` is anything with a running ``statements`` count (a
    :class:`~metersync.store.database.SyncDatabase`).
    """

    __slots__ = ("_db", "_statements0", "started")

    def __init__(self, db: Any) -> None:
        #: ``time.perf_counter()`` when the cycle started (budgets measure from it too).
        self.started = time.perf_counter()
        self._db = db
        self._statements0: int = db.statements

    def seconds(self) -> float:
        """Seconds since the cycle started."""
        return time.perf_counter() - self.started

    def totals(self, extra_statements: int = 0) -> dict[str, Any]:
        """``statements`` (since the start, plus ``extra_statements`` seen on other connections)
        and ``seconds``, as keyword arguments for ``dataclasses.replace(report, ...)``."""
        return {
            "statements": self._db.statements - self._statements0 + extra_statements,
            "seconds": self.seconds(),
        }

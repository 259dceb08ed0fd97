"""Keep a client that went away from filling the log with tracebacks (issue 11, item 17).

Injected faults make clients give up on purpose (read timeouts during a delay, connections
dropped after commit). The handlers treat a connection lost mid-body as "nobody to answer";
should aiohttp still log such a loss on its own ``aiohttp.server`` logger, this filter drops
that one kind of record (its exception is a ``ConnectionError``) while a server runs. Nothing
else is touched: not the root logger, not the user's handlers, not other aiohttp records.
"""

from __future__ import annotations

import logging
import threading

AIOHTTP_SERVER_LOGGER = "aiohttp.server"


class ClientGoneFilter(logging.Filter):
    """Drops records whose exception says the client closed the connection."""

    def filter(self, record: logging.LogRecord) -> bool:
        """False (drop) for a record carrying a ``ConnectionError``."""
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, ConnectionError)


_FILTER = ClientGoneFilter()
_lock = threading.Lock()
_users = 0


def install() -> None:
    """Attach the filter (counted: one per running server)."""
    global _users
    with _lock:
        _users += 1
        if _users == 1:
            logging.getLogger(AIOHTTP_SERVER_LOGGER).addFilter(_FILTER)


def uninstall() -> None:
    """Detach the filter once the last server stopped."""
    global _users
    with _lock:
        if _users == 0:
            return
        _users -= 1
        if _users == 0:
            logging.getLogger(AIOHTTP_SERVER_LOGGER).removeFilter(_FILTER)

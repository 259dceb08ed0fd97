"""The reference Client System (SPEC §7): aiohttp over its own PostgreSQL database.

Implements the HTTP contract the sync engine talks to, set-based and idempotent, with fault
injection for tests and demos. ``metersync serve`` runs it (:func:`serve_forever`).
"""

from __future__ import annotations

from metersync.server.admin import AdminClient
from metersync.server.app import create_app
from metersync.server.faults import FaultPlan, RejectRule
from metersync.server.runner import ReferenceServer, ServerThread, serve_forever

__all__ = [
    "AdminClient",
    "FaultPlan",
    "ReferenceServer",
    "RejectRule",
    "ServerThread",
    "create_app",
    "serve_forever",
]

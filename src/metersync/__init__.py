"""metersync: move meter readings between a site's PostgreSQL sync database and the Client System.

Fast (Arrow batches, a Cython codec, binary COPY, one UPDATE per batch) and safe (a reading is
marked synchronized only after the Client System confirmed it).

The public names below are imported lazily, so ``import metersync`` stays cheap for the CLI and
for processes that only need the codec.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._impl import IMPL as __impl__

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "BatchConfig": "metersync.config",
    "ClientSystemApiClient": "metersync.client",
    "DownloadManager": "metersync.download",
    "MeterReadingUploadManager": "metersync.upload",
    "SyncConfig": "metersync.manager",
    "SyncDatabase": "metersync.db",
    "SyncManager": "metersync.manager",
    "TenantCache": "metersync.tenant_cache",
}

__all__ = [
    "BatchConfig",
    "ClientSystemApiClient",
    "DownloadManager",
    "MeterReadingUploadManager",
    "SyncConfig",
    "SyncDatabase",
    "SyncManager",
    "TenantCache",
    "__impl__",
    "__version__",
]

if TYPE_CHECKING:
    from .client import ClientSystemApiClient
    from .config import BatchConfig
    from .db import SyncDatabase
    from .download import DownloadManager
    from .manager import SyncConfig, SyncManager
    from .tenant_cache import TenantCache
    from .upload import MeterReadingUploadManager


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'metersync' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

"""metersync: move meter readings between a site's PostgreSQL sync database and the Client System.

Fast (Arrow batches, a Cython codec, binary COPY, one UPDATE per batch) and safe (a reading is
marked synchronized only after the Client System confirmed it).

The public names below are imported lazily, so ``import metersync`` stays cheap for the CLI and
for processes that only need the codec.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from metersync.codec._impl import IMPL as __impl__

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "BatchConfig": "metersync.batch_sizes",
    "BatchSizes": "metersync.batch_sizes",
    "ClientSystemApiClient": "metersync.remote.client",
    "DownloadManager": "metersync.engine.download",
    "MeterReadingUploadManager": "metersync.engine.upload",
    "SyncConfig": "metersync.engine.manager",
    "SyncOptions": "metersync.engine.manager",
    "SyncDatabase": "metersync.store.database",
    "SyncManager": "metersync.engine.manager",
    "TenantCache": "metersync.engine.tenant_cache",
}

__all__ = [
    "BatchConfig",
    "BatchSizes",
    "ClientSystemApiClient",
    "DownloadManager",
    "MeterReadingUploadManager",
    "SyncConfig",
    "SyncDatabase",
    "SyncManager",
    "SyncOptions",
    "TenantCache",
    "__impl__",
    "__version__",
]

if TYPE_CHECKING:
    from metersync.batch_sizes import BatchConfig, BatchSizes
    from metersync.engine.download import DownloadManager
    from metersync.engine.manager import SyncConfig, SyncManager, SyncOptions
    from metersync.engine.tenant_cache import TenantCache
    from metersync.engine.upload import MeterReadingUploadManager
    from metersync.remote.client import ClientSystemApiClient
    from metersync.store.database import SyncDatabase


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'metersync' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

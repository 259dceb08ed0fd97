"""Batch-size configuration: the per-tenant sizes, their defaults, their validation and the
fallback policy when a stored value cannot be used (spec §3).

The database adapter only reads the tenant row; what a missing, NULL or invalid value means is
decided here (:func:`sizes_from_row`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

log = logging.getLogger(__name__)

DEFAULT_DOWNLOAD_BATCH_SIZE = 1000
DEFAULT_UPLOAD_BATCH_SIZE = 100
MIN_BATCH_SIZE = 1
MAX_BATCH_SIZE = 10_000

BatchSource = Literal["tenant", "default", "tenant+default"]


def batch_size_problem(value: object) -> str | None:
    """Return why ``value`` is not a valid batch size, or ``None`` when it is valid."""
    if isinstance(value, bool) or not isinstance(value, int):
        return f"must be an integer, got {value!r}"
    if not MIN_BATCH_SIZE <= value <= MAX_BATCH_SIZE:
        return f"must be between {MIN_BATCH_SIZE} and {MAX_BATCH_SIZE}, got {value}"
    return None


@dataclass(frozen=True, slots=True)
class BatchSizes:
    """A tenant's batch sizes and where they came from.

    ``upload_batch_size`` bounds each fetch from the sync database, each POST to the Client System
    and each COPY chunk of a download; ``download_batch_size`` bounds each page asked of the
    Client System. ``source`` is ``"tenant"`` when both came from the tenant row, ``"default"``
    when neither did, ``"tenant+default"`` when one field fell back to its default.
    """

    download_batch_size: int = DEFAULT_DOWNLOAD_BATCH_SIZE
    upload_batch_size: int = DEFAULT_UPLOAD_BATCH_SIZE
    source: BatchSource = "default"

    def __post_init__(self) -> None:
        for field in ("download_batch_size", "upload_batch_size"):
            problem = batch_size_problem(getattr(self, field))
            if problem:
                raise ValueError(f"{field} {problem}")


#: The seed's and SPEC §8's name for :class:`BatchSizes`; kept so existing imports work.
BatchConfig = BatchSizes


#: The size columns of table ``tenant`` and their defaults, in the order the policy reads them.
SIZE_DEFAULTS: dict[str, int] = {
    "download_batch_size": DEFAULT_DOWNLOAD_BATCH_SIZE,
    "upload_batch_size": DEFAULT_UPLOAD_BATCH_SIZE,
}


def sizes_from_row(tenant_id: int, row: Mapping[str, Any] | None) -> BatchSizes:
    """The spec §3 fallback policy: a tenant's sizes from its row (a column -> value mapping,
    ``None`` when there is no row).

    No row, a missing column (schema not migrated) or a NULL: WARNING, that field's default. A
    stored value <= 0 or > 10000 (or not an integer): ERROR naming tenant, column and value,
    that field's default. The other field is unaffected. Never raises.
    """
    if row is None:
        log.warning(
            "tenant %s: no row in table tenant; using the default batch sizes "
            "download_batch_size=%d upload_batch_size=%d",
            tenant_id,
            DEFAULT_DOWNLOAD_BATCH_SIZE,
            DEFAULT_UPLOAD_BATCH_SIZE,
        )
        return BatchSizes(source="default")
    values: dict[str, int] = {}
    for column, default in SIZE_DEFAULTS.items():
        if column not in row:
            log.warning(
                "tenant %s: table tenant has no column %s (run `metersync migrate`); "
                "using the default %s=%d",
                tenant_id,
                column,
                column,
                default,
            )
            continue
        stored = row[column]
        if stored is None:
            log.warning(
                "tenant %s: %s is NULL; using the default %s=%d", tenant_id, column, column, default
            )
            continue
        problem = batch_size_problem(stored)
        if problem:
            log.error(
                "tenant %s: stored %s=%s is invalid (%s); using the default %s=%d",
                tenant_id,
                column,
                stored,
                problem,
                column,
                default,
            )
            continue
        values[column] = stored
    source: BatchSource = (
        "tenant" if len(values) == 2 else "tenant+default" if values else "default"
    )
    return BatchSizes(
        download_batch_size=values.get("download_batch_size", DEFAULT_DOWNLOAD_BATCH_SIZE),
        upload_batch_size=values.get("upload_batch_size", DEFAULT_UPLOAD_BATCH_SIZE),
        source=source,
    )


def sizes_after_failed_lookup(tenant_id: int, exc: BaseException) -> BatchSizes:
    """The defaults, with the WARNING of spec §3, when reading the tenant row failed."""
    text = str(exc).strip()
    log.warning(
        "tenant %s: loading the batch sizes failed (%s: %s); using the defaults "
        "download_batch_size=%d upload_batch_size=%d",
        tenant_id,
        type(exc).__name__,
        text.splitlines()[0] if text else "",
        DEFAULT_DOWNLOAD_BATCH_SIZE,
        DEFAULT_UPLOAD_BATCH_SIZE,
    )
    return BatchSizes(source="default")

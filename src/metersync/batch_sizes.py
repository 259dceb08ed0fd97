"""Batch-size configuration: the per-tenant sizes, their defaults and their validation (spec §3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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

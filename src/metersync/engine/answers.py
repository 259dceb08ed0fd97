"""How the upload reads a Client System's answer to one batch: which readings it confirmed,
which it rejected one by one, and — MeterTrack's skips name meters, not readings — which of its
skips can be attributed to readings with certainty. Pure functions of the batch and the answer:
no SQL, no HTTP; the upload cycle (:mod:`metersync.engine.upload`) marks what they return.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc

from metersync.errors import InconsistentResponseError

__all__ = ["Answer", "OddAnswerError", "SkipAttribution", "attribute_skips", "read_answer"]

METER_COLUMN = "meter_id"


class Answer(Protocol):
    """What the upload needs of a Client System's answer (``client.upload_readings``)."""

    inserted: int
    duplicates: int
    rejected: dict[str, str]


class OddAnswerError(Exception):
    """An answer that cannot be trusted (ids outside the batch, counts that do not add up);
    ``cause`` is the :class:`InconsistentResponseError` the cycle reports it as."""

    def __init__(self, message: str, cause: InconsistentResponseError) -> None:
        super().__init__(message)
        self.cause = cause


def read_answer(
    tenant_id: int, batch_no: int, ids: pa.Array, n: int, result: Answer
) -> tuple[pa.Array, dict[str, str]]:
    """The ids to mark synchronized and the rejections (id text → error) of an answer to the
    batch ``ids`` (``n`` readings); :class:`OddAnswerError` when the answer is odd."""
    rejected = dict(result.rejected or {})
    confirmed_ids = ids
    if rejected:
        try:
            rej_bytes = [uuid.UUID(s).bytes for s in rejected]
        except (ValueError, TypeError, AttributeError):
            rej_bytes = []
        if len(rej_bytes) != len(rejected) or not set(rej_bytes) <= set(ids.to_pylist()):
            raise OddAnswerError(
                f"tenant {tenant_id}: batch {batch_no}: the Client System "
                "rejected ids that were not in the batch; answer treated as failed, "
                "nothing marked",
                InconsistentResponseError("rejected ids outside the batch"),
            )
        value_set = pa.array(rej_bytes, type=pa.binary(16))
        confirmed_ids = pc.filter(ids, pc.invert(pc.is_in(ids, value_set=value_set)))
    if result.inserted + result.duplicates != len(confirmed_ids):
        raise OddAnswerError(
            f"tenant {tenant_id}: batch {batch_no}: counts do not add up "
            f"({result.inserted} inserted + {result.duplicates} duplicates + "
            f"{len(rejected)} rejected != {n} sent); nothing marked",
            InconsistentResponseError("counts do not add up"),
        )
    return confirmed_ids, rejected


@dataclass(frozen=True, slots=True)
class SkipAttribution:
    """MeterTrack's skips attributed to readings: ``confirmed_ids`` (meters without errors),
    ``rejected_ids`` with their ``texts`` (every reading of the meter skipped), ``held`` (ids
    and texts of meters with fewer errors than readings: which ones is unknown)."""

    confirmed_ids: pa.Array
    rejected_ids: pa.Array | None
    texts: list[str]
    held: tuple[pa.Array, list[str]] | None


def attribute_skips(batch: pa.RecordBatch, ids: pa.Array, result: Any) -> SkipAttribution | None:
    """Attribute an answer's skipped readings (``result.skipped``, ``result.meter_errors``) to
    the readings of ``batch`` (ids ``ids``) where that is certain; ``None`` when it is not
    (errors naming no meter of the batch, fewer errors than skips): the whole batch is then
    held in doubt by the caller."""
    errors: Sequence[Any] = getattr(result, "meter_errors", ())
    meters = batch.column(METER_COLUMN)
    per_meter: dict[int, list[str]] = {}
    for e in errors:
        per_meter.setdefault(e.meter_id, []).append(e.error)
    counts: dict[int, int] = {}
    if per_meter and None not in per_meter:
        wanted = pa.array(list(per_meter), type=meters.type)
        picked = meters.filter(pc.is_in(meters, value_set=wanted))
        for item in pc.value_counts(picked).to_pylist():
            counts[item["values"]] = item["counts"]
    certain = (
        len(errors) == result.skipped
        and None not in per_meter
        and all(m in counts and len(t) <= counts[m] for m, t in per_meter.items())
    )
    if not certain:
        return None
    whole = [m for m, t in per_meter.items() if len(t) == counts[m]]
    doubtful = [m for m, t in per_meter.items() if len(t) < counts[m]]
    in_errored = pc.is_in(meters, value_set=pa.array(list(per_meter), type=meters.type))
    confirmed_ids = ids.filter(pc.invert(in_errored))
    rejected_ids = None
    texts: list[str] = []
    if whole:
        mask = pc.is_in(meters, value_set=pa.array(whole, type=meters.type))
        rejected_ids = ids.filter(mask)
        meter_of = meters.filter(mask).to_pylist()
        texts = [f"skipped by the Client System: {'; '.join(per_meter[m])}" for m in meter_of]
    held = None
    if doubtful:
        mask = pc.is_in(meters, value_set=pa.array(doubtful, type=meters.type))
        held_texts = [
            f"partial batch: meter {m}: {len(per_meter[m])} of {counts[m]} readings "
            f"skipped, which ones is unknown: {'; '.join(per_meter[m])}"
            for m in meters.filter(mask).to_pylist()
        ]
        held = (ids.filter(mask), held_texts)
    return SkipAttribution(confirmed_ids, rejected_ids, texts, held)

"""In-doubt readings: the operator's resolution (``metersync resolve``).

Readings sent to a non-idempotent Client System whose outcome is unknown are held
``sync_status = 'in_doubt'`` by the upload cycle (:mod:`metersync.engine.upload`) and never
resent automatically. :func:`resolve_in_doubt` releases them once an operator checked the
Client System: sent again, or marked synchronized — never while they were held for less than
the safety window (:func:`check_held_long_enough`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc

from metersync.errors import ConfigError

__all__ = [
    "RESOLVE_MIN_HELD_SECONDS",
    "HeldTooBrieflyError",
    "ResolveResult",
    "check_held_long_enough",
    "resolve_in_doubt",
]

# The upload's logger, as before this module was split out of it (log configuration and
# filters keep working).
log = logging.getLogger("metersync.engine.upload")


@dataclass(frozen=True, slots=True)
class ResolveResult:
    """What :func:`resolve_in_doubt` did for one tenant."""

    tenant_id: int
    action: str
    in_doubt_before: int
    resolved: int
    ids: list[str] = field(default_factory=list)


#: How long (seconds) readings must have been held in doubt before :func:`resolve_in_doubt`
#: acts on them (setting ``resolve_min_held_seconds``). A non-idempotent Client System may
#: still be storing a batch after the client gave up on it (read timeout; a crash with the POST
#: on the wire): MeterTrack stores about 1 s per 100 readings, so a 10,000-reading batch can
#: take minutes, and an operator who looks before it finished finds nothing and resends a
#: second copy.
RESOLVE_MIN_HELD_SECONDS = 600.0


class HeldTooBrieflyError(ConfigError):
    """``metersync resolve`` refused: readings were held in doubt for less than the safety
    window, so the Client System may still be storing them (``--force`` overrides)."""


def check_held_long_enough(
    tenant_id: int, held_s: pa.Array, min_held_seconds: float, *, now: datetime | None = None
) -> None:
    """Raise :class:`HeldTooBrieflyError` when any of ``held_s`` (seconds each reading has
    been held in doubt) is below ``min_held_seconds``, saying how many and when the first and
    the last of them become resolvable."""
    if min_held_seconds <= 0 or not len(held_s):
        return
    young = pc.filter(held_s, pc.less(held_s, min_held_seconds))
    if not len(young):
        return
    first = min_held_seconds - pc.max(young).as_py()
    last = min_held_seconds - pc.min(young).as_py()
    now = now or datetime.now(UTC)

    def at(seconds: float) -> str:
        return f"{seconds:.0f} s (at {(now + timedelta(seconds=seconds)):%Y-%m-%d %H:%M:%S} UTC)"

    when = (
        f"They become resolvable in {at(last)}"
        if last - first < 1
        else f"The first becomes resolvable in {at(first)}, all in {at(last)}"
    )
    raise HeldTooBrieflyError(
        f"tenant {tenant_id}: {len(young)} of {len(held_s)} in-doubt reading(s) were held less "
        f"than {min_held_seconds:g} s ago; the Client System may still be storing them (a "
        f"non-idempotent one can commit a batch after the client gave up), so looking now can "
        f"miss readings that are about to appear and a resend would duplicate them. {when}; "
        "nothing was changed. Wait, check the Client System again, then resolve; "
        "--force overrides (setting resolve_min_held_seconds)"
    )


async def resolve_in_doubt(
    db: Any,
    tenant_id: int,
    action: Literal["resend", "mark_synchronized"],
    *,
    ids: Sequence[Any] | pa.Array | None = None,
    min_held_seconds: float = RESOLVE_MIN_HELD_SECONDS,
) -> ResolveResult:
    """Release a tenant's in-doubt readings after an operator checked the Client System.

    ``action="resend"``: they were NOT stored there — back to the queue (``pending``, or
    ``failed`` if they had been rejected before), sent by the next upload.
    ``action="mark_synchronized"``: they ARE stored there — marked synchronized.
    ``ids``: only these readings (UUID text, ``uuid.UUID``, 16 bytes or an Arrow array); default
    all of the tenant's in-doubt readings (those listed now: a batch an upload claims meanwhile
    is not touched). ONE statement besides listing them.
    ``min_held_seconds``: refuse (:class:`HeldTooBrieflyError`, nothing changed) when any of
    them has been held in doubt for less (:data:`RESOLVE_MIN_HELD_SECONDS`); ``0`` only when
    the caller knows the Client System is idle (``metersync resolve --force``).
    """
    if action not in ("resend", "mark_synchronized"):
        raise ConfigError(f"action must be 'resend' or 'mark_synchronized', got {action!r}")
    before, held = await db.in_doubt_held(tenant_id)
    listed = [str(uuid.UUID(bytes=b)) for b in before.to_pylist()]
    if ids is not None:
        from metersync.store.database import id_array

        wanted = id_array(ids)
        unknown = pc.invert(pc.is_in(wanted, value_set=before))
        if len(wanted) and pc.any(unknown).as_py():
            bad = wanted.filter(unknown)[0].as_py()
            raise ConfigError(f"tenant {tenant_id}: reading {uuid.UUID(bytes=bad)} is not in doubt")
        listed = [str(uuid.UUID(bytes=b)) for b in wanted.to_pylist()]
        held = held.filter(pc.is_in(before, value_set=wanted))
        target: Any = wanted
    else:
        # The ids listed (and checked) now, not "all": a batch an upload claims between the
        # listing and the release is young and may be on the wire.
        target = before
    check_held_long_enough(tenant_id, held, min_held_seconds)
    if action == "resend":
        done = await db.release_in_doubt(tenant_id, target)
    else:
        done = await db.mark_in_doubt_synchronized(tenant_id, target)
    log.warning(
        "tenant %s: %d in-doubt readings resolved by the operator: %s",
        tenant_id,
        done,
        "sent again by the next upload" if action == "resend" else "marked synchronized",
    )
    return ResolveResult(tenant_id, action, len(before), int(done), listed)

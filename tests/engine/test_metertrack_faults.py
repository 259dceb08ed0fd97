"""Hypothesis over fault schedules against the MeterTrack emulation (issue 10, item 8).

Each example: a fresh tenant with a few dozen readings, then 1–4 upload cycles, each under a
fault drawn from what the original Client System does — 500 "Batch upload error" (nothing
stored, retried), a 503 from the error handler (not stored, but nothing says so), a reply that
comes after the client's read timeout (stored), a connection dropped after the commit
(stored), retries spent — with one or two POSTs in flight. After every cycle:

* no reading is stored twice (the emulation stores every copy it gets);
* every reading the Client System holds is synchronized or held ``in_doubt`` locally — none is
  pending, which would mean a resend, i.e. a second copy;
* nothing is marked synchronized that the Client System does not hold.

Then the operator resolves the in-doubt readings from what the Client System holds
(``resolve_in_doubt``) and the queue drains: every reading exactly once, none lost.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fix_engine import Engine
from metersync.engine.upload import resolve_in_doubt

FAULTS = st.sampled_from(
    [
        "",
        "fail=1:500",  # Batch upload error: proves nothing stored, retried
        "fail=3:500",  # ... more often than the retries allow: released, cycle ends
        "fail=1:503",  # error-handler body: outcome unknown (nothing stored)
        "delay=0.6:1",  # stored, answered after the read timeout: unknown
        "drop_after_commit=1",  # stored, connection closed: unknown
        "drop_after_commit=2",
    ]
)
SCHEDULE = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


async def check(eng: Engine, tenant: int, where: str) -> tuple[set[str], set[str]]:
    """The invariants; returns (stored ids, in-doubt ids)."""
    copies = eng.server.copies(tenant)
    twice = {k: v for k, v in copies.items() if v > 1}
    assert not twice, f"{where}: stored more than once: {twice}"
    stored = set(copies)
    synced = await eng.local_ids(tenant, "is_synchronized")
    held = await eng.local_ids(tenant, "sync_status = 'in_doubt'")
    assert synced <= stored, f"{where}: marked without confirmation: {synced - stored}"
    exposed = stored - synced - held
    assert not exposed, f"{where}: stored but pending (would be resent): {exposed}"
    return stored, held


@SCHEDULE
@given(
    n=st.integers(min_value=1, max_value=30),
    size=st.integers(min_value=1, max_value=10),
    in_flight=st.sampled_from([1, 2]),
    schedule=st.lists(FAULTS, min_size=1, max_size=4),
)
async def test_fault_schedules_never_store_twice_and_lose_nothing(
    mt: Engine, n: int, size: int, in_flight: int, schedule: list[str]
) -> None:
    tenant = await mt.tenant(upload=size)
    await mt.seed(tenant, n)
    try:
        for i, fault in enumerate(schedule):
            mt.server.set_faults(fault) if fault else mt.server.clear_faults()
            async with mt.client_for(
                tenant, read_timeout=0.3, read_timeout_per_reading=0.0, max_retries=2
            ) as client:
                report = await mt.uploader(tenant, client=client, max_in_flight=in_flight).upload()
            assert report.in_doubt == 0 or report.error is not None
            await check(mt, tenant, f"cycle {i} ({fault or 'no fault'})")
    finally:
        mt.server.clear_faults()
    # The operator looks at the Client System and resolves every held reading.
    stored, held = await check(mt, tenant, "before resolution")
    there, missing = sorted(held & stored), sorted(held - stored)
    if there:
        assert (
            await resolve_in_doubt(
                mt.db, tenant, "mark_synchronized", ids=there, min_held_seconds=0
            )
        ).resolved == len(there)
    if missing:
        resent = await resolve_in_doubt(mt.db, tenant, "resend", ids=missing, min_held_seconds=0)
        assert resent.resolved == len(missing)
    async with mt.client_for(tenant) as client:
        report = await mt.uploader(tenant, client=client).upload()
    assert (report.error, report.in_doubt) == (None, 0)
    stored, held = await check(mt, tenant, "after resolution")
    assert not held
    assert len(stored) == n, f"{n - len(stored)} readings lost"
    assert await mt.status_counts(tenant) == {"synchronized:true": n}

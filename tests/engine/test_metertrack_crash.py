"""SIGKILL of the uploader against the non-idempotent MeterTrack emulation (issue 10, item 2).

The worker process (``tests/reliability/_worker.py``, the public library) is killed by a
failpoint exactly between the Client System's answer and the mark, and before a POST. The
claimed readings are then held ``in_doubt``: the next worker never resends them (zero
duplicates on the emulation, which stores every copy it gets), and the operator's resolution —
look at the Client System, mark what is there, resend what is not — ends with every reading
stored exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from fix_engine import Engine
from fix_server import ServerHandle
from metersync.engine.upload import resolve_in_doubt
from metersync.store.database import SyncDatabase

WORKER = Path(__file__).resolve().parent.parent / "reliability" / "_worker.py"
REPO = Path(__file__).resolve().parent.parent.parent


def run_worker(eng: Engine, tenant: int, failpoints: str | None = None) -> int:
    """Run one upload worker to its end (or its SIGKILL); its exit code."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERSYNC_")}
    env.update({"METERSYNC_DSN": eng.dsn, "METERSYNC_API_URL": eng.server.base_url})
    if "METERSYNC_IMPL" in os.environ:
        env["METERSYNC_IMPL"] = os.environ["METERSYNC_IMPL"]
    if failpoints:
        env["METERSYNC_FAILPOINTS"] = failpoints
    proc = subprocess.run(
        [sys.executable, str(WORKER), "upload", str(tenant), "--deadline", "60"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"worker exit {proc.returncode}: {proc.stderr[-3000:]}")
    return proc.returncode


@pytest.mark.parametrize(
    "point",
    [
        "upload.after_fetch",
        "upload.before_post",
        "upload.after_post",
        "upload.before_mark",
        "upload.after_mark",
    ],
)
async def test_sigkill_leaves_the_batch_in_doubt_and_nothing_is_stored_twice(
    mt: Engine, point: str
) -> None:
    tenant = await mt.tenant(upload=10)
    await mt.seed(tenant, 60)
    assert run_worker(mt, tenant, f"{point}=2") == -signal.SIGKILL
    held = await mt.local_ids(tenant, "sync_status = 'in_doubt'")
    assert held, "the killed batch must be held in_doubt"
    synced = await mt.local_ids(tenant, "is_synchronized")
    stored = mt.server.copies(tenant)
    assert set(stored.values()) <= {1}
    assert synced <= set(stored)  # nothing marked without the Client System's confirmation
    if point in ("upload.after_post", "upload.before_mark"):
        assert held & set(stored), "the answered batch is on the Client System"
    # A new worker drains the queue but never resends the held readings.
    assert run_worker(mt, tenant) == 0
    stored = mt.server.copies(tenant)
    assert set(stored.values()) == {1}
    assert await mt.local_ids(tenant, "sync_status = 'in_doubt'") == held
    # The operator looks at the Client System: marks what is there, resends what is not.
    there = [i for i in held if i in stored]
    missing = [i for i in held if i not in stored]
    if there:
        done = await resolve_in_doubt(
            mt.db, tenant, "mark_synchronized", ids=there, min_held_seconds=0
        )
        assert done.resolved == len(there)
    if missing:
        done = await resolve_in_doubt(
            mt.db, tenant, "resend", ids=[uuid.UUID(i) for i in missing], min_held_seconds=0
        )
        assert done.resolved == len(missing)
        assert run_worker(mt, tenant) == 0
    stored = mt.server.copies(tenant)
    assert len(stored) == 60 and set(stored.values()) == {1}, "exactly once"
    print(
        f"\nSIGKILL at {point}#2: held in_doubt {len(held)} (on the Client System: {len(there)}, "
        f"never sent: {len(missing)}); duplicates 0; stored {len(stored)} of 60"
    )
    assert await mt.status_counts(tenant) == {"synchronized:true": 60}


def test_random_sigkills_under_faults_never_store_twice(
    engine_dsn: str, metertrack_server: ServerHandle
) -> None:
    """Workers killed at random moments while the emulation answers late, drops connections
    after committing or fails batches (the reliability harness's MeterTrackWorld checks)."""
    import asyncio
    import random
    import time

    sys.path.insert(0, str(WORKER.parent))
    from _harness import MeterTrackWorld, finish, sigkill, wait_for_line

    world = MeterTrackWorld(engine_dsn, metertrack_server)
    tenant = 700_000 + random.randrange(100_000)
    world.add_tenant(tenant, upload=7)
    rng = random.Random(5)
    plans = ("delay=0.2", "drop_after_commit=2", "fail=1:500,delay=0.1", "random=0.3:503", "")
    kills = 0
    for i in range(6):
        world.server.set_faults(f"{plans[i % len(plans)]},seed={i}".strip(","))
        world.seed(tenant, rng.randint(10, 40))
        proc = world.spawn("upload", [tenant], args=["--read-timeout", "1.0"])
        wait_for_line(proc, "ready")
        time.sleep(rng.uniform(0.0, 0.5))
        kills += sigkill(proc)
        world.check_metertrack([tenant], where=f"after random SIGKILL {i}")
    assert kills >= 2, f"only {kills} of 6 workers were still running when killed"
    world.server.clear_faults()
    marked, resent = world.resolve_from_truth(tenant)
    proc = world.spawn("upload", [tenant], args=["--deadline", "60"])
    _, err = finish(proc)
    assert proc.returncode == 0, err[-2000:]
    world.check_metertrack([tenant], final=True, where="after resolution and a final run")
    assert asyncio.run(_count(engine_dsn, tenant)) == world.seeded[tenant]
    print(f"\nrandom kills: {kills}; in doubt resolved: {marked} marked, {resent} resent")


async def _count(dsn: str, tenant: int) -> int:
    async with await SyncDatabase.connect(dsn) as db:
        (row,) = await db.queue_status(tenant)
        return row.synchronized

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
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fix_engine import Engine
from fix_server import ServerHandle
from metersync.engine.upload import resolve_in_doubt
from metersync.store.database import SyncDatabase

WORKER = Path(__file__).resolve().parent.parent / "reliability" / "_worker.py"
REPO = Path(__file__).resolve().parent.parent.parent


@pytest.fixture
async def mt(engine_dsn: str, metertrack_server: ServerHandle) -> AsyncIterator[Engine]:
    db = await SyncDatabase.connect(engine_dsn)
    eng = Engine(db, engine_dsn, metertrack_server)
    try:
        yield eng
    finally:
        await eng.aclose()
        await db.close()


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
        done = await resolve_in_doubt(mt.db, tenant, "mark_synchronized", ids=there)
        assert done.resolved == len(there)
    if missing:
        done = await resolve_in_doubt(mt.db, tenant, "resend", ids=[uuid.UUID(i) for i in missing])
        assert done.resolved == len(missing)
        assert run_worker(mt, tenant) == 0
    stored = mt.server.copies(tenant)
    assert len(stored) == 60 and set(stored.values()) == {1}, "exactly once"
    print(
        f"\nSIGKILL at {point}#2: held in_doubt {len(held)} (on the Client System: {len(there)}, "
        f"never sent: {len(missing)}); duplicates 0; stored {len(stored)} of 60"
    )
    assert await mt.status_counts(tenant) == {"synchronized:true": 60}

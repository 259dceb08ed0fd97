"""Crash safety of the upload path: SIGKILL the uploader at every phase, then prove nothing is
lost, nothing is marked without confirmation and the Client System holds exactly one copy.

(a) deterministic kills at each named failpoint (``metersync._failpoints``): after fetch, before
    the POST, after the Client System answered but before the mark, inside the mark before the
    UPDATE, after the UPDATE;
(b) kills at random moments while the reference server delays answers, drops connections after
    committing (the lost-response case), fails with 503 or throttles with 429 — which covers
    "during the POST" and "after the server committed but before the response".

After every kill the invariants of ``_harness.World.check`` hold; after a final undisturbed run
every reading is on the Client System exactly once and marked synchronized locally.
"""

from __future__ import annotations

import random
import signal
import time

import pytest
from _harness import World, finish, last_json, sigkill, wait_for_line

UPLOAD_POINTS = (
    "upload.after_fetch",
    "upload.before_post",
    "upload.after_post",
    "upload.before_mark",
    "upload.after_mark",
)
# After these the Client System holds readings the site has not marked yet: the window the
# idempotent re-send must close.
SERVER_AHEAD = {"upload.after_post", "upload.before_mark"}

FAULT_PLANS = (
    "delay=0.15",
    "drop_after_commit=2",
    "random=0.3:503",
    "delay=0.3,drop_after_commit=1",
    "rate429=0.3:0.05",
    "delay=1.3:4",  # longer than the worker's read timeout: timeouts, then retries
    "delay=0.05,random=0.2:502",
    "miscount=2,delay=0.02",
    "legacy=3,delay=0.02",
    "",
)


def _setup(world: World, per_tenant: int) -> list[int]:
    world.add_tenant(11, upload=10)
    world.add_tenant(12, upload=37)
    world.seed(11, per_tenant)
    world.seed(12, per_tenant)
    return [11, 12]


def _complete(world: World, tenants: list[int]) -> dict[str, object]:
    """Run one undisturbed worker to the end and check the exactly-once outcome."""
    world.server.clear_faults()
    proc = world.spawn("upload", tenants, args=["--deadline", "300"])
    out, err = finish(proc, timeout=400)
    assert proc.returncode == 0, err[-3000:]
    assert last_json(out)["done"] is True
    world.check(tenants, final=True, where="after the final run")
    stats = world.server.stats()
    total = sum(world.seeded[t] for t in tenants)
    # Every reading was inserted exactly once over the whole test (re-sends count as duplicates).
    assert stats["inserted"] == total, stats
    assert stats["total_rows"] == total
    return stats


def _failpoint_kills(world: World, tenants: list[int], hits: tuple[int, ...]) -> int:
    kills = 0
    for point in UPLOAD_POINTS:
        for hit in hits:
            proc = world.spawn("upload", tenants, failpoints=f"{point}={hit}")
            _, err = finish(proc)
            assert proc.returncode == -signal.SIGKILL, (
                f"failpoint {point}={hit} was never reached (exit {proc.returncode}); is it "
                f"wired into the engine?\n{err[-2000:]}"
            )
            kills += 1
            states = world.check(tenants, where=f"after SIGKILL at {point}#{hit}")
            if point in SERVER_AHEAD:
                ahead = sum(len(s.server - s.local_synced) for s in states.values())
                assert ahead > 0, f"{point}: the server should hold readings not yet marked"
    return kills


def _random_kills(world: World, tenants: list[int], rounds: int, seed: int) -> int:
    """``rounds`` workers killed at a random moment; returns how many were still running."""
    rng = random.Random(seed)
    kills = 0
    for i in range(rounds):
        plan = FAULT_PLANS[i % len(FAULT_PLANS)]
        world.server.set_faults(f"{plan},seed={i}" if plan else f"seed={i}")
        for t in tenants:  # collectors keep writing: the queue never runs dry
            world.seed(t, rng.randint(5, 60))
        proc = world.spawn("upload", tenants, args=["--read-timeout", "1.0"])
        wait_for_line(proc, "ready")
        time.sleep(rng.uniform(0.0, 0.6))
        kills += sigkill(proc)
        world.check(tenants, where=f"after random SIGKILL {i} (faults: {plan or 'none'})")
    assert kills >= rounds // 2, f"only {kills} of {rounds} workers were still running"
    return kills


def test_upload_survives_kills_at_every_failpoint_and_at_random(world: World) -> None:
    tenants = _setup(world, 600)
    kills = _failpoint_kills(world, tenants, hits=(1, 3))
    kills += _random_kills(world, tenants, 4, seed=1)
    stats = _complete(world, tenants)
    assert kills >= 12
    print(
        f"\nupload kills survived: {kills}; readings moved: {stats['inserted']}; "
        f"faults injected: {stats['faults_injected']}; duplicates absorbed: "
        f"{stats['duplicates_seen']}"
    )


@pytest.mark.stress
def test_upload_survives_kills_full(world: World) -> None:
    tenants = _setup(world, 3000)
    kills = _failpoint_kills(world, tenants, hits=(1, 2, 3, 5, 8))
    kills += _random_kills(world, tenants, 45, seed=7)
    stats = _complete(world, tenants)
    assert kills >= 48
    print(
        f"\nupload kills survived: {kills}; readings moved: {stats['inserted']}; "
        f"faults injected: {stats['faults_injected']}; duplicates absorbed: "
        f"{stats['duplicates_seen']}"
    )

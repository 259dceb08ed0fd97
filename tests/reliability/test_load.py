"""Load and concurrency: 4 ``metersync sync --all-tenants`` processes over many tenants.

A recording proxy between the workers and the reference server notes every batch upload's time
window and ids. Proved: no reading is ever in two uploads whose windows overlap (the per-tenant
lock works across processes), every reading is delivered exactly once, a SIGKILLed worker's
tenants are picked up by the others (its session advisory locks die with it), no advisory lock
is left once the workers stop. Throughput is printed (never asserted).

Reduced form (``make test``): 4 workers x 8 tenants x 500 readings. Full form (``make stress``):
20 tenants and ``METERSYNC_STRESS_READINGS`` readings in all (default 2,000,000).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from _harness import REPO, World, advisory_locks, sessions
from _proxy import RecordingProxy, overlapping_ids

SIZES = (10, 25, 50, 100, 250, 37, 64, 500)


def _run_load(
    world: World,
    tenants: int,
    per_tenant: int,
    *,
    timeout: float,
    sizes: tuple[int, ...] = SIZES,
    post_delay: float | None = None,
) -> dict[str, float]:
    ids = [200 + i for i in range(tenants)]
    for i, t in enumerate(ids):
        world.add_tenant(t, upload=sizes[i % len(sizes)], download=5000)
        remaining = per_tenant
        while remaining:
            chunk = min(remaining, 100_000)
            world.seed(t, chunk)
            remaining -= chunk
    total = tenants * per_tenant
    if post_delay is not None:
        # A small load drains faster than the 0.2 s poll below can see it half done (the run
        # then ends before a worker is killed): each POST answered this much later.
        world.server.set_faults(f"delay={post_delay}")
    proxy = RecordingProxy(world.api_url).start()
    env = world.worker_env(METERSYNC_API_URL=proxy.base_url)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "metersync", "-q", "sync", "--all-tenants", "--interval", "0.3"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for _ in range(4)
    ]
    started = time.monotonic()
    killed = False
    try:
        deadline = started + timeout
        while time.monotonic() < deadline:
            pending = world.pending(ids)
            if not killed and pending < total * 0.85:
                # Mid-run, one worker dies without any cleanup; its tenants must not stay locked.
                os.kill(procs[0].pid, signal.SIGKILL)
                procs[0].communicate(timeout=30)
                killed = True
            if pending == 0:
                break
            time.sleep(0.2)
        elapsed = time.monotonic() - started
        assert killed, "the run finished before a worker could be killed; raise the load"
        assert world.pending(ids) == 0, f"{world.pending(ids)} readings never delivered"
    finally:
        for p in procs[1:]:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        outcomes = [(p.returncode, *p.communicate(timeout=120)) for p in procs[1:]]
        for p in procs:
            if p.poll() is None:
                p.kill()
        proxy.stop()
        if post_delay is not None:
            world.server.clear_faults()
    for p, (_, _, err) in zip(procs[1:], outcomes, strict=True):
        assert p.returncode == 0, err[-2000:]
    world.check(ids, final=True, where="after the load run")
    flights = proxy.snapshot()
    overlaps = overlapping_ids(flights)
    assert not overlaps, f"{len(overlaps)} readings in flight twice at once, e.g. {overlaps[:2]}"
    assert sum(len(f.ids) for f in flights if f.status == 200) >= total
    assert advisory_locks(world.sync_dsn) == 0, "advisory locks left behind"
    stats = world.server.stats()
    assert stats["inserted"] == total
    figures = {
        "readings": total,
        "seconds": round(elapsed, 1),
        "readings_per_s": round(total / elapsed),
        "batches": len(flights),
        "duplicates_seen": stats["duplicates_seen"],
    }
    print(f"\nload: {figures}")
    return figures


def test_four_workers_eight_tenants(world: World) -> None:
    _run_load(world, 8, 500, timeout=240, post_delay=0.02)


@pytest.mark.stress
def test_four_workers_twenty_tenants_full(world: World) -> None:
    total = int(os.environ.get("METERSYNC_STRESS_READINGS", "2000000"))
    _run_load(world, 20, total // 20, timeout=7200, sizes=(100, 250, 500, 1000, 2000, 5000))


def test_sessions_do_not_grow_with_tenants(world: World) -> None:
    """One sync process over many tenants keeps a small, fixed number of database sessions.

    Several processes share one PostgreSQL (max_connections is 100 by default): sessions that
    grow with the tenant count (say, a LISTEN connection per tenant) cap how many tenants a
    deployment can serve long before CPU or I/O do.
    """
    ids = [300 + i for i in range(20)]
    for t in ids:
        world.add_tenant(t, upload=50, server=True)
        world.seed(t, 5)
    proc = subprocess.Popen(
        [sys.executable, "-m", "metersync", "-q", "sync", "--all-tenants", "--interval", "0.5"],
        env=world.worker_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    peak = 0
    try:
        deadline = time.monotonic() + 90
        while world.pending(ids) and time.monotonic() < deadline:
            peak = max(peak, sessions(world.sync_dsn))
            time.sleep(0.2)
        for _ in range(5):  # a few more samples while it loops
            peak = max(peak, sessions(world.sync_dsn))
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert world.pending(ids) == 0
    # Fixed by --concurrency (default 4 pooled connections) plus the one LISTEN connection,
    # whatever the tenant count.
    assert peak <= 4 + 1, f"one sync process over {len(ids)} tenants held {peak} database sessions"

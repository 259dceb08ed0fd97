"""Soak: the ``metersync sync`` loop under random faults, with collectors writing all along.

Sampled every second: the worker's RSS (psutil) and its database sessions (pg_stat_activity).
Proved: RSS growth after warm-up < 10 %, the session count never grows past its warm-up level
(no leaked connections), the loop stops cleanly on SIGTERM leaving no advisory lock and no
session, and every reading ends on the Client System exactly once.

``make test`` runs 20 seconds; ``make stress`` runs 10 minutes (``METERSYNC_SOAK_SECONDS``).
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import subprocess
import sys
import time

import psutil
import pytest
from _harness import REPO, World, advisory_locks, sessions

FAULTS = (
    "random=0.2:503,seed={i}",
    "delay=0.05:20",
    "drop_after_commit=2",
    "rate429=0.2:0.05,seed={i}",
    "fail=3:502",
    "",
)
TENANTS = (71, 72, 73)


def _soak(world: World, seconds: float) -> dict[str, float]:
    for t, size in zip(TENANTS, (20, 50, 7), strict=True):
        world.add_tenant(t, upload=size, download=500)
        world.seed(t, 300)
    rng = random.Random(5)
    proc = subprocess.Popen(
        [sys.executable, "-m", "metersync", "-q", "sync", "--all-tenants", "--interval", "0.2"],
        env=world.worker_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    ps = psutil.Process(proc.pid)
    # The clock starts once the loop is really cycling (imports and start-up are not soak).
    first = world.pending(TENANTS)
    deadline = time.monotonic() + 120
    while world.pending(TENANTS) >= first and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    rss: list[tuple[float, int]] = []
    session_samples: list[tuple[float, int]] = []
    started = time.monotonic()
    i = 0
    try:
        while (now := time.monotonic() - started) < seconds:
            if i % 2 == 0:
                world.server.set_faults(FAULTS[(i // 2) % len(FAULTS)].format(i=i))
            for t in TENANTS:
                world.seed(t, rng.randint(0, 40))
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            rss.append((now, ps.memory_info().rss))
            session_samples.append((now, sessions(world.sync_dsn)))
            i += 1
            time.sleep(1.0)
        world.server.clear_faults()
        deadline = time.monotonic() + 120
        while world.pending(TENANTS) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert world.pending(TENANTS) == 0, "the loop did not drain the queue once faults stopped"
        time.sleep(1.0)  # a couple of quiet cycles
        settled = sessions(world.sync_dsn)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert proc.returncode == 0, f"exit {proc.returncode} after SIGTERM: {err[-2000:]}"
    world.check(TENANTS, final=True, where="after the soak")
    assert advisory_locks(world.sync_dsn) == 0, "advisory locks left after stop"
    assert sessions(world.sync_dsn) == 0, "database sessions left after the worker exited"
    # Warm-up: imports, connection pools, pymalloc arenas and the first full cycles under every
    # kind of fault. Growth compares the median RSS just after it with the last fifth.
    warm = seconds * 0.3
    base = [v for t, v in rss if warm <= t < seconds * 0.45] or [rss[len(rss) // 3][1]]
    tail = [v for t, v in rss if t >= seconds * 0.8] or [rss[-1][1]]
    growth = statistics.median(tail) / statistics.median(base) - 1.0
    # A leak accumulates: after the faults stop, the loop holds no more sessions than it did
    # once warm, and at no time more than one transient extra (a reconnect in progress).
    warm_sessions = max(v for t, v in session_samples if t < warm)
    late_sessions = max(v for t, v in session_samples if t >= warm)
    assert settled <= warm_sessions, (
        f"database sessions grew from {warm_sessions} to {settled}: leaked connections"
    )
    assert late_sessions <= warm_sessions + 1, f"{late_sessions} sessions at peak: a leak"
    assert growth < 0.10, f"RSS grew {growth:.1%} after warm-up"
    stats = world.server.stats()
    figures = {
        "seconds": seconds,
        "rss_mb_after_warmup": round(statistics.median(base) / 2**20, 1),
        "rss_growth_pct": round(growth * 100, 2),
        "sessions": late_sessions,
        "readings": sum(world.seeded[t] for t in TENANTS),
        "faults_injected": sum(stats["faults_injected"].values()),
    }
    print(f"\nsoak: {figures} faults={stats['faults_injected']}")
    return figures


def test_soak_20_seconds(world: World) -> None:
    _soak(world, 20.0)


@pytest.mark.stress
def test_soak_full(world: World) -> None:
    _soak(world, float(os.environ.get("METERSYNC_SOAK_SECONDS", "600")))

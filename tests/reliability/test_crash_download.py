"""Crash safety of the download path: SIGKILL the downloader mid-page, then prove each reading
is in the sync database once and the stored cursor always matches the committed rows
(``_harness.check_download`` says exactly what "matches" means).
"""

from __future__ import annotations

import random
import signal
import time

import pytest
from _harness import (
    PAGE,
    World,
    check_download,
    finish,
    last_json,
    load_on_server,
    sigkill,
    wait_for_line,
)

from metersync.engine.download import UNIT_PAGES

DOWNLOAD_POINTS = ("download.after_fetch_page", "download.before_commit", "download.after_commit")
TENANT = 21


def _failpoint_kills(world: World, hits: tuple[int, ...]) -> int:
    kills = 0
    for point in DOWNLOAD_POINTS:
        for hit in hits:
            before = check_download(world, TENANT, where=f"before {point}#{hit}")
            proc = world.spawn("download", [TENANT], failpoints=f"{point}={hit}")
            _, err = finish(proc)
            assert proc.returncode == -signal.SIGKILL, (
                f"failpoint {point}={hit} was never reached (exit {proc.returncode})\n{err[-2000:]}"
            )
            kills += 1
            after = check_download(world, TENANT, where=f"after SIGKILL at {point}#{hit}")
            # Pages before the fatal hit committed; the fatal one only if it was committed. A
            # fetch is one page; a commit stores the pages waiting for it, UNIT_PAGES at most.
            if point == "download.after_fetch_page":
                expected_pages = hit - 1
            else:
                commits = hit if point == "download.after_commit" else hit - 1
                expected_pages = commits * UNIT_PAGES
            assert after - before <= expected_pages * PAGE
    return kills


def _random_kills(world: World, rounds: int, seed: int) -> int:
    """``rounds`` workers killed at a random moment; returns how many were still running."""
    rng = random.Random(seed)
    kills = 0
    for i in range(rounds):
        world.server.set_faults(f"path=/api/sync/readings,delay=0.02,seed={i}")
        load_on_server(world, TENANT, rng.randint(20, 120), seed=10_000 + seed * 100 + i)
        proc = world.spawn("download", [TENANT])
        wait_for_line(proc, "ready")
        time.sleep(rng.uniform(0.0, 0.5))
        kills += sigkill(proc)
        check_download(world, TENANT, where=f"after random SIGKILL {i}")
    assert kills >= 1, f"none of {rounds} workers was still running when killed"
    return kills


def _complete(world: World) -> int:
    world.server.clear_faults()
    proc = world.spawn("download", [TENANT])
    out, err = finish(proc, timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert last_json(out)["done"] is True
    n = check_download(world, TENANT, final=True, where="after the final run")
    # Downloaded readings are stored synchronized: an upload cycle has nothing to send.
    proc = world.spawn("upload", [TENANT])
    out, err = finish(proc)
    assert proc.returncode == 0, err[-3000:]
    assert last_json(out)["readings"] == 0
    return n


def test_download_survives_kills_mid_page(world: World) -> None:
    world.add_tenant(TENANT, download=PAGE, upload=17)
    load_on_server(world, TENANT, 800, seed=1)
    kills = _failpoint_kills(world, hits=(2,))
    kills += _random_kills(world, 3, seed=1)
    n = _complete(world)
    assert kills >= 4
    print(f"\ndownload kills survived: {kills}; readings downloaded: {n}")


@pytest.mark.stress
def test_download_survives_kills_full(world: World) -> None:
    world.add_tenant(TENANT, download=PAGE, upload=17)
    load_on_server(world, TENANT, 6000, seed=1)
    kills = _failpoint_kills(world, hits=(1, 2, 3, 5, 8))
    kills += _random_kills(world, 25, seed=3)
    n = _complete(world)
    assert kills >= 16
    print(f"\ndownload kills survived: {kills}; readings downloaded: {n}")

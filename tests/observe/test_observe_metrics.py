"""The hooks of metersync.observe: what they export, that they never raise, what they cost."""

from __future__ import annotations

import logging
import time

import pytest
from _scrape import get, sample, scrape

from metersync import observe
from metersync.errors import ConfigError
from metersync.observe import metrics

# Tenant ids of this module only: the registry is process-wide, so values are compared as
# deltas or on series no other test touches.
T1, T2 = 880_001, 880_002


def value(name: str, **labels: object) -> float:
    """A sample of the registry (0 when the series does not exist)."""
    got = observe.REGISTRY.get_sample_value(name, {k: str(v) for k, v in labels.items()})
    return got or 0.0


def test_hooks_count_per_batch_and_per_cycle() -> None:
    before = value("metersync_readings_uploaded_total", tenant_id=T1)
    observe.readings("uploaded", T1, 1000)
    observe.readings("uploaded", T1, 250)
    observe.readings("rejected", T1, 3)
    observe.readings("downloaded", T1, 0)  # nothing to count: no series change
    assert value("metersync_readings_uploaded_total", tenant_id=T1) == before + 1250
    assert value("metersync_readings_rejected_total", tenant_id=T1) >= 3

    n0 = value("metersync_batch_phase_seconds_count", tenant_id=T1, phase="post")
    s0 = value("metersync_batch_phase_seconds_sum", tenant_id=T1, phase="post")
    observe.phase("post", T1, 0.2)
    observe.phase("post", T1, 0.05)
    assert value("metersync_batch_phase_seconds_count", tenant_id=T1, phase="post") == n0 + 2
    assert value("metersync_batch_phase_seconds_sum", tenant_id=T1, phase="post") == pytest.approx(
        s0 + 0.25
    )
    # 0.05 falls in the 0.05 bucket, 0.2 does not.
    assert value("metersync_batch_phase_seconds_bucket", tenant_id=T1, phase="post", le="0.05") >= 1

    c0 = value(
        "metersync_cycles_total",
        tenant_id=T1,
        operation="upload",
        outcome="error",
        error_kind="RemoteUnavailableError",
    )
    observe.cycle(T1, "upload", "error", "RemoteUnavailableError")
    observe.cycle(T1, "download", "ok", None)
    assert (
        value(
            "metersync_cycles_total",
            tenant_id=T1,
            operation="upload",
            outcome="error",
            error_kind="RemoteUnavailableError",
        )
        == c0 + 1
    )
    assert (
        value(
            "metersync_cycles_total",
            tenant_id=T1,
            operation="download",
            outcome="ok",
            error_kind="none",
        )
        >= 1
    )
    stamp = value("metersync_last_cycle_timestamp_seconds", tenant_id=T1, operation="download")
    assert abs(stamp - time.time()) < 5

    st0 = value("metersync_sql_statements_total", tenant_id=T1)
    observe.statements(T1, 7)
    assert value("metersync_sql_statements_total", tenant_id=T1) == st0 + 7


def test_batch_size_source_change_replaces_the_series() -> None:
    observe.batch_sizes(T2, 1000, 5000, "default")
    assert value("metersync_batch_size", tenant_id=T2, direction="upload", source="default") == 1000
    observe.batch_sizes(T2, 2000, 4000, "tenant")
    assert value("metersync_batch_size", tenant_id=T2, direction="upload", source="tenant") == 2000
    assert (
        value("metersync_batch_size", tenant_id=T2, direction="download", source="tenant") == 4000
    )
    # The old source's series is gone, so sum by tenant never counts two sizes.
    assert (
        observe.REGISTRY.get_sample_value(
            "metersync_batch_size",
            {"tenant_id": str(T2), "direction": "upload", "source": "default"},
        )
        is None
    )


def test_profile_shows_only_the_current_one() -> None:
    observe.profile("metertrack")
    observe.profile("metersync")
    assert value("metersync_client_profile", profile="metersync") == 1
    assert (
        observe.REGISTRY.get_sample_value("metersync_client_profile", {"profile": "metertrack"})
        is None
    )


def test_bad_calls_are_logged_once_and_never_raise(caplog: pytest.LogCaptureFixture) -> None:
    metrics._warned.clear()
    with caplog.at_level(logging.WARNING, logger="metersync.observe"):
        observe.phase("warp", T1, 0.1)
        observe.phase("warp", T1, 0.1)
        observe.readings("teleported", T1, 5)
        observe.phase("post", T1, "slow")  # type: ignore[arg-type]
        observe.readings("uploaded", T1, -1)  # a counter cannot go down
    messages = [r.getMessage() for r in caplog.records]
    assert sum("unknown batch phase 'warp'" in m for m in messages) == 1
    assert any("unknown readings kind 'teleported'" in m for m in messages)
    assert any("phase() failed" in m for m in messages)
    assert any("readings() failed" in m for m in messages)
    assert (
        observe.REGISTRY.get_sample_value(
            "metersync_batch_phase_seconds_count", {"tenant_id": str(T1), "phase": "warp"}
        )
        is None
    )


def test_pushed_queue_rows_are_exported_and_parse() -> None:
    rows = [
        {
            "tenant_id": T1,
            "pending": 12,
            "failed": 1,
            "quarantined": 2,
            "in_doubt": 0,
            "oldest_pending_age_s": 42.5,
        },
        {
            "tenant_id": T2,
            "pending": 0,
            "failed": 0,
            "quarantined": 0,
            "in_doubt": 5,
            "oldest_pending_age_s": None,
        },
    ]
    observe.queue(rows)
    with observe.serve(0) as server:
        samples = scrape(server.url)
    assert sample(samples, "metersync_readings_pending", tenant_id=T1) == 12
    assert sample(samples, "metersync_readings_failed", tenant_id=T1) == 1
    assert sample(samples, "metersync_readings_quarantined", tenant_id=T1) == 2
    assert sample(samples, "metersync_oldest_pending_age_seconds", tenant_id=T1) == 42.5
    assert sample(samples, "metersync_readings_in_doubt", tenant_id=T2) == 5
    assert sample(samples, "metersync_oldest_pending_age_seconds", tenant_id=T2) == 0
    assert sample(samples, "metersync_sync_database_up") == 1
    observe.queue([])


def test_serve_binds_loopback_and_answers_404_elsewhere() -> None:
    with observe.serve(0) as server:
        assert server.host == "127.0.0.1"
        assert get(f"{server.url}/nope")[0] == 404
        # A second server on the same port: a clear error naming the address.
        with pytest.raises(ConfigError, match=rf"127\.0\.0\.1:{server.port}"):
            observe.serve(server.port)
    with pytest.raises(ValueError, match=r"0\.\.65535"):
        observe.serve(70_000)


def test_hook_cost_is_per_batch_cheap() -> None:
    """The hooks a batch makes (4 phases, 1 readings count) cost microseconds, not a fetch."""
    n = 20_000
    started = time.perf_counter()
    for _ in range(n):
        observe.phase("fetch", T1, 0.001)
        observe.phase("encode", T1, 0.001)
        observe.phase("post", T1, 0.001)
        observe.phase("mark", T1, 0.001)
        observe.readings("uploaded", T1, 1000)
    per_batch = (time.perf_counter() - started) / n
    # ~10 µs on the reference machine; a 1000-reading batch takes ≥ 10 ms end to end.
    assert per_batch < 200e-6, f"{per_batch * 1e6:.1f} µs per batch of hook calls"


async def test_timed_records_a_task_when_it_ends_not_when_cancelled() -> None:
    import asyncio

    n0 = value("metersync_batch_phase_seconds_count", tenant_id=T2, phase="download_page")
    s0 = value("metersync_batch_phase_seconds_sum", tenant_id=T2, phase="download_page")
    task = observe.timed(asyncio.ensure_future(asyncio.sleep(0.05)), "download_page", T2)
    await task
    await asyncio.sleep(0)  # done callbacks run on the next loop turn
    assert (
        value("metersync_batch_phase_seconds_count", tenant_id=T2, phase="download_page") == n0 + 1
    )
    took = value("metersync_batch_phase_seconds_sum", tenant_id=T2, phase="download_page") - s0
    assert 0.04 <= took < 2

    cancelled = observe.timed(asyncio.ensure_future(asyncio.sleep(10)), "download_page", T2)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    await asyncio.sleep(0)
    assert (
        value("metersync_batch_phase_seconds_count", tenant_id=T2, phase="download_page") == n0 + 1
    )


def test_recording_off_creates_no_series_and_ends_with_the_block() -> None:
    """``recording(False)`` (the one-shot commands): no series is created or changed inside,
    /healthz liveness still is, and recording is back as it was after the block."""
    t3 = 880_003
    with observe.recording(False):
        observe.readings("uploaded", t3, 10)
        observe.phase("post", t3, 0.1)
        observe.cycle(t3, "upload", "ok", None)
        observe.statements(t3, 4)
        observe.batch_sizes(t3, 100, 200, "tenant")
        observe.profile("metertrack")
        assert observe.ACTIVITY.snapshot().get(t3) is not None  # liveness kept
    for name in (
        "metersync_readings_uploaded_total",
        "metersync_statements_total",
        "metersync_batch_phase_seconds_count",
    ):
        labels = {"tenant_id": str(t3)} | ({"phase": "post"} if "phase" in name else {})
        assert observe.REGISTRY.get_sample_value(name, labels) is None, name
    assert (
        observe.REGISTRY.get_sample_value("metersync_client_profile", {"profile": "metertrack"})
        is None
    )
    observe.readings("uploaded", t3, 10)  # on again after the block
    assert value("metersync_readings_uploaded_total", tenant_id=t3) == 10
    observe.profile("metertrack")  # not skipped as "already current" after an unrecorded call
    assert value("metersync_client_profile", profile="metertrack") == 1
    observe.profile("metersync")

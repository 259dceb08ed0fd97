"""How long readings have been held in doubt, and the wait ``metersync resolve`` enforces.

MeterTrack may commit a batch after the client gave up on it (read timeout while it is still
storing; a crash with the POST on the wire). An operator who looks too early finds nothing and
``--resend`` duplicates the batch. So each in-doubt reading records when it was claimed or held
(``meter_reading.in_doubt_since``), ``status`` shows how long that was (not the reading's age)
and ``resolve`` refuses readings held for less than ``resolve_min_held_seconds`` unless
``--force``. "After the window" is made by setting the column back, not by sleeping.
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pytest

from fix_engine import Engine
from metersync.cli import main
from metersync.engine.upload import HeldTooBrieflyError, check_held_long_enough, resolve_in_doubt

HELD = (
    "SELECT meter_reading_id::text, sync_status, is_synchronized, in_doubt_since "
    "FROM meter_reading WHERE tenant_id = %s ORDER BY meter_reading_id"
)


def _cli(mt: Engine, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["--dsn", mt.dsn, *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def _age_back(mt: Engine, tenant: int, seconds: float, ids: list[str] | None = None) -> None:
    """Pretend the readings (``ids``, default all) were held ``seconds`` ago (no sleeping)."""
    await mt.scalar(
        "UPDATE meter_reading SET in_doubt_since = now() - make_interval(secs => %s) "
        "WHERE tenant_id = %s AND sync_status = 'in_doubt' "
        "AND (%s::text[] IS NULL OR meter_reading_id = ANY(%s::text[]::uuid[]))",
        seconds,
        tenant,
        ids,
        ids,
    )


async def _hold_by_read_timeout(mt: Engine, tenant: int) -> Any:
    """Upload 10 readings (2 days old) into a reply that comes too late: held in doubt."""
    await mt.seed(tenant, 10)
    await mt.scalar(
        "UPDATE meter_reading SET created_at = now() - interval '2 days' WHERE tenant_id = %s",
        tenant,
    )
    started = await mt.scalar("SELECT clock_timestamp()")
    mt.server.set_faults("delay=1.0:1")  # stores the batch, then answers after the timeout
    client = mt.client(tenant, read_timeout=0.4, read_timeout_per_reading=0.0)
    report = await mt.uploader(tenant, client=client).upload()
    mt.server.clear_faults()
    assert report.in_doubt == 10, report
    return started


async def test_a_read_timeout_records_when_the_batch_was_held_and_status_shows_that_age(
    mt: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    tenant = await mt.tenant(upload=10)
    started = await _hold_by_read_timeout(mt, tenant)
    rows = await mt.rows(HELD, tenant)
    assert {r[1] for r in rows} == {"in_doubt"}
    since = {r[3] for r in rows}
    assert None not in since
    # Set by the hold after the read timeout (0.4 s), not only by the claim before the POST.
    assert all(s - started >= timedelta(seconds=0.35) for s in since), (started, since)
    code, out, _ = await asyncio.to_thread(_cli, mt, capsys, "status", "--tenant", str(tenant),
                                           "--json")  # fmt: skip
    assert code == 0
    (row,) = json.loads(out)["tenants"]
    assert row["in_doubt"] == 10
    # How long it has been held (seconds), not the reading's age (2 days).
    assert 0 <= row["oldest_in_doubt_age_s"] < 120, row
    assert row["oldest_in_doubt_at"] is not None
    code, out, err = await asyncio.to_thread(_cli, mt, capsys, "status", "--tenant", str(tenant))
    assert code == 0
    assert "held in doubt" in out
    assert "10m" in err  # the info line names the wait before resolving


async def test_resend_right_away_is_refused_and_changes_nothing_then_works_after_the_window(
    mt: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    tenant = await mt.tenant(upload=10)
    await mt.seed(tenant, 10)
    mt.server.set_faults("fail=1:503")  # no verdict: held, though not stored
    assert (await mt.uploader(tenant).upload()).in_doubt == 10
    mt.server.clear_faults()
    before = await mt.rows(HELD, tenant)
    code, _, err = await asyncio.to_thread(
        _cli, mt, capsys, "resolve", "--tenant", str(tenant), "--resend"
    )
    assert code == 2, err
    assert re.search(r"10 of 10 in-doubt reading\(s\) were held less than 600 s ago", err), err
    assert re.search(
        r"(first becomes|They become) resolvable in \d+ s \(at 20\d\d-\d\d-\d\d ", err
    ), err
    assert "--force" in err
    with pytest.raises(HeldTooBrieflyError, match="10 of 10"):
        await resolve_in_doubt(mt.db, tenant, "resend")
    assert await mt.rows(HELD, tenant) == before  # nothing changed
    # Five of them were held 11 minutes ago: those may be resent, the whole lot may not.
    five = sorted(r[0] for r in before)[:5]
    await _age_back(mt, tenant, 660, five)
    code, _, err = await asyncio.to_thread(
        _cli, mt, capsys, "resolve", "--tenant", str(tenant), "--resend"
    )
    assert code == 2 and "5 of 10" in err, err
    argv = ["resolve", "--tenant", str(tenant), "--resend", "--json"]
    for i in five:
        argv += ["--id", i]
    code, out, err = await asyncio.to_thread(_cli, mt, capsys, *argv)
    assert code == 0, err
    assert json.loads(out)["tenants"][0]["resolved"] == 5
    # A shorter window (setting) or --force releases the rest.
    code, out, err = await asyncio.to_thread(
        _cli, mt, capsys, "resolve", "--tenant", str(tenant), "--resend", "--force", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["tenants"][0]["resolved"] == 5
    after = await mt.rows(HELD, tenant)
    assert {(r[1], r[3]) for r in after} == {("pending", None)}  # released: the stamp cleared
    report = await mt.uploader(tenant).upload()
    assert (report.error, report.confirmed) == (None, 10)
    assert set(mt.server.copies(tenant).values()) == {1} and len(mt.server.copies(tenant)) == 10
    final = await mt.rows(HELD, tenant)
    assert {(r[1], r[2], r[3]) for r in final} == {("synchronized", True, None)}


async def test_mark_synchronized_waits_too_and_clears_the_stamp(
    mt: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    tenant = await mt.tenant(upload=10)
    await _hold_by_read_timeout(mt, tenant)
    code, _, err = await asyncio.to_thread(
        _cli, mt, capsys, "resolve", "--tenant", str(tenant), "--mark-synchronized"
    )
    assert code == 2 and "10 of 10" in err, err
    code, _, err = await asyncio.to_thread(
        _cli, mt, capsys, "resolve", "--tenant", str(tenant), "--mark-synchronized",
        "--min-held-seconds", "3600",
    )  # fmt: skip
    assert code == 2 and "less than 3600 s" in err, err
    await _age_back(mt, tenant, 601)
    code, out, err = await asyncio.to_thread(
        _cli, mt, capsys, "resolve", "--tenant", str(tenant), "--mark-synchronized", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["tenants"][0]["resolved"] == 10
    rows = await mt.rows(HELD, tenant)
    assert {(r[1], r[2], r[3]) for r in rows} == {("synchronized", True, None)}
    assert set(mt.server.copies(tenant).values()) == {1} and len(mt.server.copies(tenant)) == 10


async def test_all_tenants_are_checked_before_any_is_changed(
    mt: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    # Earlier tests of this module leave young holds: the operator settles those first.
    code, _, err = await asyncio.to_thread(
        _cli, mt, capsys, "resolve", "--all", "--mark-synchronized", "--force"
    )
    assert code == 0, err
    old, young = await mt.tenant(upload=10), await mt.tenant(upload=10)
    for t in (old, young):
        await mt.seed(t, 10)
        mt.server.set_faults("fail=1:503")
        assert (await mt.uploader(t).upload()).in_doubt == 10
    mt.server.clear_faults()
    await _age_back(mt, old, 3600)
    before = [await mt.rows(HELD, t) for t in (old, young)]
    code, _, err = await asyncio.to_thread(_cli, mt, capsys, "resolve", "--all", "--resend")
    assert code == 2 and f"tenant {young}: 10 of 10" in err, err
    assert [await mt.rows(HELD, t) for t in (old, young)] == before


def test_the_refusal_says_how_many_and_when_the_first_and_the_last_become_resolvable() -> None:
    held = pa.array([700.0, 500.0, 100.0])  # seconds each reading has been held
    now = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    with pytest.raises(HeldTooBrieflyError) as refused:
        check_held_long_enough(7, held, 600, now=now)
    text = str(refused.value)
    assert text.startswith("tenant 7: 2 of 3 in-doubt reading(s) were held less than 600 s ago")
    assert (
        "The first becomes resolvable in 100 s (at 2026-12-01 08:01:40 UTC), "
        "all in 500 s (at 2026-12-01 08:08:20 UTC)"
    ) in text
    check_held_long_enough(7, held, 0, now=now)  # the guard off (--force)
    check_held_long_enough(7, pa.array([600.0, 601.0]), 600, now=now)  # all old enough
    check_held_long_enough(7, pa.array([], pa.float64()), 600, now=now)  # nothing held

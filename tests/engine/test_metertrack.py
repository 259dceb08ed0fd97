"""Upload against the emulation of the original MeterTrack Client System (issue 10).

The emulation (``metertrack_server``) is not idempotent: a resend stores a second copy. It keeps
the id each reading was sent with, so ``copies()`` counts the rows per reading: the tests prove
exactly once (every reading stored once, none twice) through faults, and that readings whose
outcome is unknown are held ``in_doubt``, never resent, until ``resolve_in_doubt``.
"""

from __future__ import annotations

import math
import uuid
from decimal import Decimal

import httpx
import psycopg
import pytest

from fix_engine import Engine, RecordingTransport
from fix_server import ServerHandle
from metersync.engine.upload import resolve_in_doubt
from metersync.errors import AuthError
from metersync.remote.profiles import METERTRACK_MAX_BODY_BYTES
from metersync.store.database import SyncDatabase


def copies(eng: Engine, tenant_id: int) -> dict[str, int]:
    """Rows the emulation holds per sent reading id."""
    return eng.server.copies(tenant_id)


async def assert_exactly_once(eng: Engine, tenant_id: int, n: int) -> None:
    """Every one of the tenant's ``n`` readings is stored once and marked synchronized."""
    got = copies(eng, tenant_id)
    assert len(got) == n, f"{len(got)} distinct readings on the Client System, {n} expected"
    assert set(got.values()) == {1}, {k: v for k, v in got.items() if v != 1}
    assert await eng.local_ids(tenant_id) == set(got)
    assert await eng.status_counts(tenant_id) == {"synchronized:true": n}


async def test_profile_is_negotiated_from_the_health_answer(mt: Engine) -> None:
    tenant = await mt.tenant()
    client = mt.client(tenant)
    assert await client.health() is True  # {"status":"OK"} is reachable
    profile = await client.profile()
    assert (profile.name, profile.idempotent, profile.download, profile.site_filter) == (
        "metertrack",
        False,
        False,
        False,
    )
    assert profile.max_body_bytes == METERTRACK_MAX_BODY_BYTES
    forced = mt.client(tenant, client_profile="metersync", max_body_bytes=65536)
    assert (await forced.profile()).idempotent is True  # configured, not assumed
    assert (await forced.profile()).max_body_bytes == 65536


async def test_nulls_omitted_and_18_digit_numerics_stored_exactly(mt: Engine) -> None:
    tenant = await mt.tenant(upload=40)
    await mt.seed(tenant, 100, null_fraction=0.4)
    biggest = Decimal("99999999999999.9999")
    target = await mt.scalar(
        "UPDATE meter_reading SET active_energy = %s, power = %s WHERE meter_reading_id = "
        "(SELECT meter_reading_id FROM meter_reading WHERE tenant_id = %s LIMIT 1) "
        "RETURNING meter_reading_id::text",
        biggest,
        Decimal("-12345678901234.5678"),
        tenant,
    )
    assert target is not None
    report = await mt.uploader(tenant).upload()
    assert (report.error, report.profile, report.in_doubt) == (None, "metertrack", 0)
    assert (report.confirmed, report.inserted, report.batches) == (100, 100, 3)
    await assert_exactly_once(mt, tenant, 100)
    with psycopg.connect(mt.server.dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT active_energy, power FROM mt_meter_reading WHERE sent_meter_reading_id = %s",
            (str(await mt.scalar(
                "SELECT meter_reading_id::text FROM meter_reading WHERE active_energy = %s "
                "AND tenant_id = %s", biggest, tenant)),),
        ).fetchone()  # fmt: skip
        nulls = conn.execute(
            "SELECT count(*) FILTER (WHERE voltage_thd IS NULL) FROM mt_meter_reading "
            "WHERE tenant_id = %s",
            (tenant,),
        ).fetchone()[0]
    assert row == (biggest, Decimal("-12345678901234.5678"))
    local_nulls = await mt.scalar(
        "SELECT count(*) FROM meter_reading WHERE tenant_id = %s AND voltage_thd IS NULL", tenant
    )
    assert nulls == local_nulls > 0  # nulls travelled (as absent keys) and stayed nulls


async def test_a_10000_reading_wide_batch_is_split_below_10_mb(mt: Engine) -> None:
    tenant = await mt.tenant(upload=10_000)
    await mt.seed(tenant, 10_000, null_fraction=0.0)
    transport = RecordingTransport()
    report = await mt.uploader(tenant, client=mt.client(tenant, transport=transport)).upload()
    assert report.error is None
    # ~1.3 KB per wide reading: about 13 MB for the batch, so at least two bodies.
    assert len(transport.posted) >= 2 and sum(transport.posted) == 10_000
    assert report.statements <= 2 * math.ceil(10_000 / 10_000) + 10
    stats = mt.server.stats()
    assert stats["requests_per_status"].get("500") is None  # never over the limit
    await assert_exactly_once(mt, tenant, 10_000)


async def test_401_stops_the_cycle_and_touches_nothing(mt: Engine) -> None:
    tenant = await mt.tenant(upload=10, server=False)  # the Client System does not know the key
    await mt.seed(tenant, 25)
    before = await mt.rows(
        "SELECT meter_reading_id, sync_status, retry_count, last_error FROM meter_reading "
        "WHERE tenant_id = %s ORDER BY 1",
        tenant,
    )
    with pytest.raises(AuthError, match="Invalid API key"):
        await mt.uploader(tenant).upload()
    after = await mt.rows(
        "SELECT meter_reading_id, sync_status, retry_count, last_error FROM meter_reading "
        "WHERE tenant_id = %s ORDER BY 1",
        tenant,
    )
    assert after == before  # the claim was undone: every reading exactly as before
    # One GET /health (the profile) and ONE upload attempt.
    assert mt.server.stats()["requests_per_status"] == {"200": 1, "401": 1}


async def test_500_batch_upload_error_is_retried_and_stored_once(mt: Engine) -> None:
    tenant = await mt.tenant(upload=20)
    await mt.seed(tenant, 50)
    mt.server.set_faults("fail=2:500")  # "Batch upload error", recordsProcessed 0: nothing stored
    report = await mt.uploader(tenant).upload()
    assert (report.error, report.in_doubt) == (None, 0)
    # One GET /health (the profile), two failed attempts, three stored batches.
    assert mt.server.stats()["requests_per_status"] == {"500": 2, "200": 4}
    await assert_exactly_once(mt, tenant, 50)


async def test_read_timeout_holds_the_batch_in_doubt_and_never_resends_it(mt: Engine) -> None:
    tenant = await mt.tenant(upload=10)
    await mt.seed(tenant, 30)
    mt.server.set_faults("delay=1.5:1")  # stores the first batch, then answers too late
    client = mt.client(tenant, read_timeout=0.5, read_timeout_per_reading=0.0)
    report = await mt.uploader(tenant, client=client).upload()
    assert report.in_doubt == 10 and report.confirmed == 0
    assert "resolve" in (report.error or "")
    held = await mt.local_ids(tenant, "sync_status = 'in_doubt'")
    assert len(held) == 10
    assert all("outcome unknown" in e for (e,) in await mt.rows(
        "SELECT last_error FROM meter_reading WHERE tenant_id = %s AND sync_status = 'in_doubt'",
        tenant))  # fmt: skip
    # The next cycles send the rest, never the held batch.
    mt.server.clear_faults()
    report = await mt.uploader(tenant).upload()
    assert (report.error, report.confirmed) == (None, 20)
    assert set(copies(mt, tenant).values()) == {1}  # the delayed batch is there once
    assert held <= set(copies(mt, tenant))
    # The operator looked: they are on the Client System.
    result = await resolve_in_doubt(mt.db, tenant, "mark_synchronized", min_held_seconds=0)
    assert (result.in_doubt_before, result.resolved) == (10, 10)
    await assert_exactly_once(mt, tenant, 30)


async def test_5xx_without_a_verdict_is_in_doubt_and_resend_releases_it(mt: Engine) -> None:
    tenant = await mt.tenant(upload=10)
    await mt.seed(tenant, 10)
    mt.server.set_faults("fail=1:503")  # the error handler's body: it does not say "failed"
    report = await mt.uploader(tenant).upload()
    assert report.in_doubt == 10
    assert "503" in (report.error or "")
    assert copies(mt, tenant) == {}  # (not stored, but the client could not know)
    report = await mt.uploader(tenant).upload()
    assert report.readings_sent == 0  # held: not resent automatically
    result = await resolve_in_doubt(mt.db, tenant, "resend", min_held_seconds=0)
    assert result.resolved == 10
    report = await mt.uploader(tenant).upload()
    assert report.confirmed == 10
    await assert_exactly_once(mt, tenant, 10)


async def test_connection_dropped_after_commit_is_in_doubt(mt: Engine) -> None:
    tenant = await mt.tenant(upload=10)
    await mt.seed(tenant, 25)
    mt.server.set_faults("drop_after_commit=1")
    report = await mt.uploader(tenant).upload()
    assert report.in_doubt == 10
    mt.server.clear_faults()
    await mt.uploader(tenant).upload()
    assert set(copies(mt, tenant).values()) == {1} and len(copies(mt, tenant)) == 25
    await resolve_in_doubt(mt.db, tenant, "mark_synchronized", min_held_seconds=0)
    await assert_exactly_once(mt, tenant, 25)


async def test_skipped_readings_are_rejected_when_attributable_else_held(mt: Engine) -> None:
    tenant = await mt.tenant(upload=200)
    batch = await mt.seed(tenant, 200, meters=400)  # most meters have one reading
    meters = batch.column("meter_id").to_pylist()
    single = next(m for m in meters if meters.count(m) == 1)
    multi = next((m for m in meters if meters.count(m) > 1), None)
    assert multi is not None
    ids = [str(uuid.UUID(bytes=b)) for b in batch.column("meter_reading_id").to_pylist()]
    one_of_multi = ids[meters.index(multi)]
    # The Client System skips the lone reading of `single` and ONE of `multi`'s readings; its
    # errors name the meters only.
    mt.server.set_faults(f"reject=meter_id:{single},reject=meter_reading_id:{one_of_multi}")
    report = await mt.uploader(tenant, max_batches=1).upload()
    # `single`: skipped without doubt (its only reading) → rejected, the failed path.
    assert report.rejected == 1
    failed = await mt.rows(
        "SELECT meter_id, last_error FROM meter_reading WHERE tenant_id = %s "
        "AND sync_status = 'failed'",
        tenant,
    )
    assert [m for m, _ in failed] == [single]
    assert "skipped by the Client System" in failed[0][1]
    # `multi`: 1 error for several readings: which one is unknown → all of them held in doubt
    # with the server's words; the batch counts as partial and the cycle says so.
    assert report.in_doubt == meters.count(multi)
    assert report.partial_batches == 1
    assert "resolve" in (report.error or "")
    held = await mt.rows(
        "SELECT meter_id, last_error FROM meter_reading WHERE tenant_id = %s "
        "AND sync_status = 'in_doubt'",
        tenant,
    )
    assert {m for m, _ in held} == {multi}
    assert all("23514" in e or "check constraint" in e for _, e in held), held[0][1]
    # Every other reading was confirmed; nothing was stored twice.
    synced = await mt.scalar(
        "SELECT count(*) FROM meter_reading WHERE tenant_id = %s AND is_synchronized", tenant
    )
    assert synced == report.confirmed == 200 - 1 - meters.count(multi)
    assert set(copies(mt, tenant).values()) == {1}
    assert len(copies(mt, tenant)) == 200 - 2


async def test_uploader_statements_per_batch_match_the_idempotent_profile(mt: Engine) -> None:
    tenant = await mt.tenant(upload=50)
    await mt.seed(tenant, 500)
    report = await mt.uploader(tenant).upload()
    # The claim IS the fetch (one statement) and the mark ends the claim: no extra statement.
    assert report.statements <= 2 * math.ceil(500 / 50) + 10
    assert uuid.UUID(next(iter(copies(mt, tenant))))  # sent ids are the site's ids
    await assert_exactly_once(mt, tenant, 500)


async def test_400_field_errors_reject_that_reading_and_send_the_rest(
    fresh_dsn: str, metertrack_server: ServerHandle
) -> None:
    # A site whose voltage_thd column is text (an old schema): one value is not a number, so
    # the Client System refuses the whole batch with a field error naming that reading.
    db = await SyncDatabase.connect(fresh_dsn)
    eng = Engine(db, fresh_dsn, metertrack_server)
    try:
        await db.migrate()
        await eng.scalar("ALTER TABLE meter_reading ALTER COLUMN voltage_thd TYPE text")
        await db.layout(refresh=True)
        tenant = await eng.tenant(upload=30)
        await eng.seed(tenant, 30, null_fraction=0.0)
        bad = await eng.scalar(
            "UPDATE meter_reading SET voltage_thd = 'n/a' WHERE meter_reading_id = (SELECT "
            "meter_reading_id FROM meter_reading WHERE tenant_id = %s ORDER BY created_at "
            "OFFSET 7 LIMIT 1) RETURNING meter_reading_id::text",
            tenant,
        )
        transport = RecordingTransport()
        client = eng.client(tenant, transport=transport)
        report = await eng.uploader(tenant, client=client).upload()
        assert (report.error, report.rejected, report.confirmed) == (None, 1, 29)
        assert transport.posted == [30, 29]  # the 400, then the rest at once
        failed = await eng.rows(
            "SELECT meter_reading_id::text, retry_count, last_error FROM meter_reading "
            "WHERE tenant_id = %s AND sync_status = 'failed'",
            tenant,
        )
        assert len(failed) == 1 and failed[0][:2] == (bad, 1)
        assert "voltage_thd must be numeric" in failed[0][2]  # the server's own words
        got = copies(eng, tenant)
        assert len(got) == 29 and set(got.values()) == {1} and bad not in got
    finally:
        await eng.aclose()
        await db.close()


async def test_status_shows_in_doubt_and_the_resolve_command_releases_it(
    mt: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio
    import json

    from metersync.cli import main

    tenant = await mt.tenant(upload=10)
    await mt.seed(tenant, 10)
    mt.server.set_faults("drop_after_commit=1")
    assert (await mt.uploader(tenant).upload()).in_doubt == 10

    def cli(*args: str) -> tuple[int, dict]:
        code = main(["--dsn", mt.dsn, *args])
        return code, json.loads(capsys.readouterr().out)

    code, doc = await asyncio.to_thread(cli, "status", "--tenant", str(tenant), "--json")
    assert code == 0
    (row,) = doc["tenants"]
    assert (row["in_doubt"], row["pending"], row["synchronized"]) == (10, 0, 0)
    assert row["oldest_in_doubt_age_s"] is not None
    code, doc = await asyncio.to_thread(
        cli, "resolve", "--tenant", str(tenant), "--mark-synchronized", "--json", "--force"
    )
    assert code == 0
    assert doc["tenants"] == [
        {
            "tenant_id": tenant,
            "action": "mark_synchronized",
            "in_doubt_before": 10,
            "resolved": 10,
            "in_doubt_after": 0,
        }
    ]
    await assert_exactly_once(mt, tenant, 10)
    # Bad input is a usage error naming what is missing.
    assert main(["--dsn", mt.dsn, "resolve", "--tenant", str(tenant)]) == 2
    assert "--resend or --mark-synchronized" in capsys.readouterr().err


class _LoseThirdAnswer(RecordingTransport):
    """The real transport, but the answer to the 3rd upload is lost on the way back (the
    Client System stored the batch): the client sees a read error after sending."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        if request.url.path.endswith("/batch") and len(self.posted) == 3:
            await response.aread()
            raise httpx.ReadError("connection reset by peer (test)")
        return response


@pytest.mark.parametrize("in_flight", [1, 2])
async def test_unknown_outcome_mid_cycle_settles_the_other_flights(
    mt: Engine, in_flight: int
) -> None:
    tenant = await mt.tenant(upload=10)
    await mt.seed(tenant, 80)
    transport = _LoseThirdAnswer()
    client = mt.client(tenant, transport=transport)
    report = await mt.uploader(tenant, client=client, max_in_flight=in_flight).upload()
    assert report.in_doubt == 10 and "outcome unknown" in (report.error or "")
    # The flight after the lost one (in_flight=2) was awaited and settled, not cancelled;
    # anything fetched and claimed but not sent went back to the queue.
    held = await mt.local_ids(tenant, "sync_status = 'in_doubt'")
    assert len(held) == 10
    stored = copies(mt, tenant)
    assert set(stored.values()) == {1} and held <= set(stored)
    assert await mt.local_ids(tenant, "is_synchronized") == set(stored) - held
    counts = await mt.status_counts(tenant)
    assert counts.get("pending:false", 0) == 80 - len(stored)
    # The next cycle sends the rest and never the held batch.
    report = await mt.uploader(tenant).upload()
    assert report.error is None
    stored = copies(mt, tenant)
    assert len(stored) == 80 and set(stored.values()) == {1}
    await resolve_in_doubt(mt.db, tenant, "mark_synchronized", min_held_seconds=0)
    await assert_exactly_once(mt, tenant, 80)


async def test_requeue_never_releases_in_doubt_readings(mt: Engine) -> None:
    tenant = await mt.tenant(upload=10)
    await mt.seed(tenant, 10)
    mt.server.set_faults("drop_after_commit=1")
    assert (await mt.uploader(tenant).upload()).in_doubt == 10
    assert await mt.db.requeue(tenant) == 0  # `metersync requeue --all`
    ids = await mt.db.in_doubt_ids(tenant)
    assert await mt.db.requeue(tenant, ids) == 0
    assert len(await mt.db.in_doubt_ids(tenant)) == 10


async def test_read_timeout_grows_with_the_batch_so_a_slow_healthy_server_finishes(
    engine_dsn: str, pg_admin_dsn: str
) -> None:
    from fix_pg import create_database, drop_database
    from metersync.server import AdminClient, ServerThread

    # MeterTrack's worst measured pace: ~11 ms per reading (1.1 s per 100).
    cs_dsn = create_database(pg_admin_dsn, "ms_mt_slow")
    thread = ServerThread(cs_dsn, profile="metertrack", reading_delay_ms=11).start()
    db = await SyncDatabase.connect(engine_dsn)
    try:
        with AdminClient(thread.admin_url, thread.admin_token) as admin:
            eng = Engine(db, engine_dsn, ServerHandle(thread, admin, cs_dsn))
            tenant = await eng.tenant(upload=100)
            await eng.seed(tenant, 200)
            # 0.5 s alone would cut every batch off; + 30 ms per reading gives 3.5 s per batch.
            scaled = eng.client(tenant, read_timeout=0.5, read_timeout_per_reading=0.03)
            report = await eng.uploader(tenant, client=scaled, max_batches=1).upload()
            assert (report.error, report.confirmed, report.in_doubt) == (None, 100, 0)
            # Without the allowance the same healthy server is cut off mid-batch: in doubt.
            flat = eng.client(tenant, read_timeout=0.5, read_timeout_per_reading=0.0)
            report = await eng.uploader(tenant, client=flat, max_batches=1).upload()
            assert report.in_doubt == 100
            await eng.aclose()
    finally:
        await db.close()
        thread.stop()
        drop_database(pg_admin_dsn, cs_dsn)


async def test_upload_command_says_what_to_do_when_readings_are_in_doubt(mt: Engine) -> None:
    import asyncio
    import os
    import subprocess
    import sys

    tenant = await mt.tenant(upload=10)
    await mt.seed(tenant, 10)
    mt.server.set_faults("drop_after_commit=1")
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERSYNC_")}
    env |= {"METERSYNC_DSN": mt.dsn, "METERSYNC_API_URL": mt.server.base_url}
    cmd = [sys.executable, "-m", "metersync", "--client-profile", "metertrack", "upload"]
    proc = await asyncio.to_thread(
        subprocess.run, [*cmd, "--tenant", str(tenant)], env=env, capture_output=True, text=True
    )
    assert proc.returncode not in (0, 1), proc.stderr  # a documented, non-success exit code
    assert f"metersync resolve --tenant {tenant}" in proc.stderr
    assert len(await mt.local_ids(tenant, "sync_status = 'in_doubt'")) == 10

"""Issue 11 item 3: when recording rejections fails after the confirmed readings were marked,
the report (and so ``sync_log``) counts the readings that were marked, not 0."""

from __future__ import annotations

from fix_engine import Engine

# Makes the rejection UPDATE of one tenant fail in the database itself (no mock): the marks
# of confirmed readings (sync_status 'synchronized') still go through.
_TRIGGER = """
CREATE OR REPLACE FUNCTION refuse_failed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'rejections refused for this test';
END $$;
CREATE TRIGGER refuse_failed_{t} BEFORE UPDATE ON meter_reading FOR EACH ROW
WHEN (NEW.tenant_id = {t} AND NEW.sync_status = 'failed') EXECUTE FUNCTION refuse_failed();
"""


async def test_a_failed_rejection_mark_keeps_the_confirmed_count(engine: Engine) -> None:
    tenant = await engine.tenant(upload=20)
    seeded = await engine.seed(tenant, 20, meters=4)
    meter = seeded.column("meter_id")[0].as_py()
    bad = sum(1 for m in seeded.column("meter_id").to_pylist() if m == meter)
    assert 0 < bad < 20
    engine.server.set_faults(f"reject=meter_id:{meter}")
    await engine.scalar(_TRIGGER.format(t=tenant))
    try:
        report = await engine.uploader(tenant, max_batches=1).upload()
    finally:
        await engine.scalar(f"DROP TRIGGER refuse_failed_{tenant} ON meter_reading")
    assert report.error is not None and "marking batch 1 failed" in report.error
    synced = await engine.local_ids(tenant, "is_synchronized")
    assert len(synced) == 20 - bad  # the confirmed readings were marked...
    assert report.confirmed == 20 - bad  # ...and the report says so
    assert report.inserted == 20 - bad and report.rejected == 0
    assert (report.batches, report.readings_sent) == (1, 20)

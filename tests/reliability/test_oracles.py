"""The checks the reliability tests rely on must themselves catch what they claim to catch:
a reading marked without confirmation, a half-marked reading, a reading never delivered, a page
stored without its cursor, and two uploads of one reading at the same time.
"""

from __future__ import annotations

import psycopg
import pytest
from _harness import World, check_download, load_on_server
from _proxy import Flight, overlapping_ids

TENANT = 81


def _sql(dsn: str, sql: str, *params: object) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql, params)


def test_upload_oracle_catches_loss_and_half_marks(world: World) -> None:
    world.add_tenant(TENANT, upload=10)
    world.seed(TENANT, 5)
    world.check([TENANT])
    with pytest.raises(AssertionError, match="never reached the server"):
        world.check([TENANT], final=True)
    # Marked synchronized without the Client System holding it: the loss we hunt.
    _sql(
        world.sync_dsn,
        "UPDATE meter_reading SET is_synchronized = true, sync_status = 'synchronized' "
        "WHERE meter_reading_id = (SELECT meter_reading_id FROM meter_reading LIMIT 1)",
    )
    with pytest.raises(AssertionError, match="does not hold"):
        world.check([TENANT])
    _sql(world.sync_dsn, "UPDATE meter_reading SET is_synchronized = false")
    with pytest.raises(AssertionError, match="half-marked"):
        world.check([TENANT])


def test_download_oracle_catches_a_page_without_its_cursor(world: World) -> None:
    world.add_tenant(TENANT, download=50)
    load_on_server(world, TENANT, 120, seed=9)
    assert check_download(world, TENANT) == 0
    # Rows of the first page committed but no cursor stored: inconsistent.
    with psycopg.connect(world.cs_dsn, autocommit=True) as conn:
        ids = [
            r[0]
            for r in conn.execute(
                "SELECT meter_reading_id::text FROM cs_meter_reading WHERE tenant_id = %s "
                "ORDER BY seq LIMIT 50",
                (TENANT,),
            ).fetchall()
        ]
    _sql(
        world.sync_dsn,
        "INSERT INTO meter_reading (meter_reading_id, tenant_id, meter_id, is_synchronized, "
        "sync_status) SELECT unnest(%s::uuid[]), %s, 1, true, 'synchronized'",
        ids,
        TENANT,
    )
    with pytest.raises(AssertionError, match="matches no committed page boundary"):
        check_download(world, TENANT)


def test_overlap_oracle() -> None:
    a = Flight(0.0, 1.0, "k", [b"x", b"y"], 200)
    b = Flight(2.0, 3.0, "k", [b"x"], 200)
    assert overlapping_ids([a, b]) == []
    c = Flight(0.5, 1.5, "k", [b"y"], 200)
    assert [rid for rid, _, _ in overlapping_ids([a, b, c])] == [b"y"]

"""Nothing lost includes nothing altered: extreme but valid readings go up from site A and come
down into site B (same tenant, a fresh sync database) with every value exactly as stored.

Values at the edges of ``numeric(18,4)`` (18 significant digits, more than a float64 holds),
the smallest step, negative values, nulls, and timestamps with microseconds.
"""

from __future__ import annotations

from decimal import Decimal

import psycopg
from _harness import World, finish, last_json, migrate, run

from fix_pg import create_database, drop_database

TENANT = 91
EDGE = [
    ("00000000-0000-4000-8000-000000000001", Decimal("99999999999999.9999"), Decimal("0.0001")),
    ("00000000-0000-4000-8000-000000000002", Decimal("-99999999999999.9999"), Decimal("-0.0001")),
    ("00000000-0000-4000-8000-000000000003", Decimal("12345678901234.5678"), None),
    ("00000000-0000-4000-8000-000000000004", Decimal("100000000000.0001"), Decimal("0")),
    ("00000000-0000-4000-8000-000000000005", Decimal("1.5"), Decimal("42")),
]
SELECT = (
    "SELECT meter_reading_id::text, created_at, meter_id, meter_element_id, active_energy, power "
    "FROM meter_reading WHERE tenant_id = %s ORDER BY meter_reading_id"
)


def test_edge_values_round_trip_between_sites(world: World, pg_admin_dsn: str) -> None:
    key = world.add_tenant(TENANT, upload=3, download=2)
    with psycopg.connect(world.sync_dsn, autocommit=True) as conn:
        for i, (rid, energy, power) in enumerate(EDGE):
            conn.execute(
                "INSERT INTO meter_reading (meter_reading_id, tenant_id, created_at, meter_id, "
                "meter_element_id, active_energy, power) VALUES (%s, %s, "
                "'2026-03-01 12:34:56.123456+00'::timestamptz + %s * interval '1 microsecond',"
                " %s, %s, %s, %s)",
                (rid, TENANT, i, 2**62 + i, None if i % 2 else -(2**62), energy, power),
            )
        sent = conn.execute(SELECT, (TENANT,)).fetchall()
    world.seeded[TENANT] = len(EDGE)
    proc = world.spawn("upload", [TENANT])
    out, err = finish(proc)
    assert proc.returncode == 0, err[-2000:]
    world.check([TENANT], final=True)

    site_b = create_database(pg_admin_dsn, "ms_site_b")
    try:
        run(migrate(site_b))
        other = World(site_b, world.server)
        run(_add(site_b, key))
        other.keys[TENANT] = key
        proc = other.spawn("download", [TENANT])
        out, err = finish(proc)
        assert proc.returncode == 0, err[-2000:]
        assert last_json(out)["done"] is True
        reports = [line for line in out.splitlines() if '"op": "download"' in line]
        assert all('"error": null' in line for line in reports), reports
        with psycopg.connect(site_b, autocommit=True) as conn:
            received = conn.execute(SELECT, (TENANT,)).fetchall()
    finally:
        drop_database(pg_admin_dsn, site_b)
    assert received == sent


async def _add(dsn: str, key: str) -> None:
    from metersync.store.database import SyncDatabase

    async with await SyncDatabase.connect(dsn) as db:
        await db.add_tenant(TENANT, "site b", key, upload_batch_size=3, download_batch_size=2)

"""Extra ``meter_reading`` columns of every SPEC §2 type through the reference server (issue 11,
item 8): the real upload engine sends them, the server stores them exactly, and the real
download engine brings them back equal, value for value."""

from __future__ import annotations

import asyncio
import json
import uuid
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from fix_engine import Engine, _migrate

EXTRA_COLUMNS = {
    "x_text": "text",
    "x_varchar": "varchar(40)",
    "x_bool": "boolean",
    "x_date": "date",
    "x_ts": "timestamp",
    "x_tstz": "timestamptz",
    "x_int2": "int2",
    "x_int4": "int4",
    "x_int8": "int8",
    "x_float4": "float4",
    "x_float8": "float8",
    "x_numeric_scaled": "numeric(30,9)",
    "x_numeric_plain": "numeric",
    "x_uuid": "uuid",
}

# Row values (SQL literals) including the awkward ones: quotes, backslashes, braces, unicode,
# extremes of each integer type; plain ``numeric`` beyond float64 and decimal128, with the
# trailing zeros of its display scale.
ROWS: list[dict[str, str]] = [
    {
        "x_text": "'plain'",
        "x_varchar": "'v'",
        "x_bool": "true",
        "x_date": "'2025-02-28'",
        "x_ts": "'2025-02-28 13:14:15.123456'",
        "x_tstz": "'2025-02-28 13:14:15.5+02'",
        "x_int2": "-32768",
        "x_int4": "2147483647",
        "x_int8": "-9223372036854775808",
        "x_float4": "1.5",
        "x_float8": "0.1",
        "x_numeric_scaled": "'123456789012345678901.123456789'",
        "x_numeric_plain": "'123456789012345678901234567890.123456789012345678901234567890'",
        "x_uuid": "'6f1c2a36-0d33-4a5e-9d6e-7b1f0e7c2a11'",
    },
    {
        "x_text": "E'quote \" backslash \\\\ brace } { caf\\u00e9 \\u2603'",
        "x_varchar": "''",
        "x_bool": "false",
        "x_date": "'0001-01-01'",
        "x_ts": "'1999-12-31 23:59:59'",
        "x_tstz": "'1970-01-01 00:00:00+00'",
        "x_int2": "32767",
        "x_int4": "-2147483648",
        "x_int8": "9223372036854775807",
        "x_float4": "-0.25",
        "x_float8": "-1e300",
        "x_numeric_scaled": "'-0.000000001'",
        "x_numeric_plain": "'-0.000000000000000000000000000000000001000'",
        "x_uuid": "'00000000-0000-0000-0000-000000000000'",
    },
    {name: "NULL" for name in EXTRA_COLUMNS},
    {
        "x_text": '\'{"not": "json"}\'',
        "x_varchar": "'x'",
        "x_bool": "NULL",
        "x_date": "'2024-02-29'",
        "x_ts": "NULL",
        "x_tstz": "'2024-02-29 00:00:00.000001+00'",
        "x_int2": "0",
        "x_int4": "0",
        "x_int8": "0",
        "x_float4": "0",
        "x_float8": "123456789.125",
        "x_numeric_scaled": "0",
        "x_numeric_plain": "'1e60'",
        "x_uuid": "NULL",
    },
    # A plain numeric may be infinite (no JSON number form: it travels as a string).
    {**{name: "NULL" for name in EXTRA_COLUMNS}, "x_numeric_plain": "'-Infinity'"},
]


@pytest.fixture(scope="module")
def engine_dsn(module_dsn: str) -> str:
    """This module's sync database: migrated, then ``meter_reading`` gets the extra columns."""
    asyncio.run(_migrate(module_dsn))
    with psycopg.connect(module_dsn, autocommit=True) as conn:
        for name, kind in EXTRA_COLUMNS.items():
            conn.execute(f"ALTER TABLE meter_reading ADD COLUMN {name} {kind}")
    return module_dsn


async def _insert(engine: Engine, tenant_id: int) -> list[str]:
    ids = []
    cols = ", ".join(EXTRA_COLUMNS)
    for i, row in enumerate(ROWS):
        rid = str(uuid.uuid4())
        ids.append(rid)
        values = ", ".join(row[name] for name in EXTRA_COLUMNS)
        await engine.scalar(
            f"INSERT INTO meter_reading (meter_reading_id, created_at, tenant_id, meter_id, {cols})"
            f" VALUES (%s, '2025-01-01T00:00:00Z'::timestamptz + %s * interval '1 s', %s, 1,"
            f" {values})",
            rid,
            i,
            tenant_id,
        )
    return ids


async def _values(engine: Engine, tenant_id: int) -> list[tuple[Any, ...]]:
    cols = ", ".join(EXTRA_COLUMNS)
    return await engine.rows(
        f"SELECT {cols} FROM meter_reading WHERE tenant_id = %s ORDER BY created_at", tenant_id
    )


async def test_every_supported_type_goes_up_and_comes_back_exactly(engine: Engine) -> None:
    source = await engine.tenant(upload=10)
    ids = await _insert(engine, source)
    report = await engine.uploader(source).upload()
    assert report.error is None, report.error
    assert (report.confirmed, report.rejected) == (len(ROWS), 0)
    assert engine.server.rows(source) == len(ROWS)

    # Stored exactly: the measurements text holds every literal's digits and every string.
    with psycopg.connect(engine.server.dsn) as conn:
        stored = dict(
            conn.execute(
                "SELECT meter_reading_id::text, measurements FROM cs_meter_reading"
                " WHERE tenant_id = %s",
                (source,),
            ).fetchall()
        )
    first = json.loads(stored[ids[0]], parse_float=Decimal)
    assert first["x_numeric_scaled"] == Decimal("123456789012345678901.123456789")
    plain = "123456789012345678901234567890.123456789012345678901234567890"
    assert first["x_numeric_plain"] == Decimal(plain)
    assert f'"x_numeric_plain":{plain},' in stored[ids[0]]  # sent as a number, digit for digit
    assert first["x_bool"] is True and first["x_date"] == "2025-02-28"
    second = json.loads(stored[ids[1]], parse_float=Decimal)
    assert second["x_text"] == 'quote " backslash \\ brace } { caf\u00e9 \u2603'
    assert second["x_int8"] == 9223372036854775807
    fourth = json.loads(stored[ids[3]])
    assert fourth["x_text"] == '{"not": "json"}' and fourth["x_bool"] is None

    # The same readings under another tenant on the server, then downloaded by the engine.
    target = await engine.tenant(download=2)
    with psycopg.connect(engine.server.dsn) as conn:
        rows = conn.execute(
            "SELECT created_at, meter_id, measurements FROM cs_meter_reading"
            " WHERE tenant_id = %s ORDER BY seq",
            (source,),
        ).fetchall()
    body = b",".join(
        b'{"meter_reading_id":"%s","created_at":"%s","meter_id":%d,"meter_element_id":null,%s'
        % (
            str(uuid.uuid4()).encode(),
            created.isoformat().encode(),
            meter,
            measurements.encode()[1:],
        )
        for created, meter, measurements in rows
    )
    response = engine.server.admin._http.post(
        "/readings",
        content=b'{"tenant_id":%d,"readings":[%s]}' % (target, body),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 200 and response.json()["inserted"] == len(ROWS)
    down = await engine.downloader(target).download()
    assert down.error is None, down.error
    assert down.inserted == len(ROWS)
    assert await _values(engine, target) == await _values(engine, source)
    # Plain numeric: the same digits and display scale (Decimal equality ignores trailing zeros).
    texts = [
        await engine.rows(
            "SELECT x_numeric_plain::text FROM meter_reading WHERE tenant_id = %s"
            " ORDER BY created_at",
            tenant,
        )
        for tenant in (source, target)
    ]
    assert texts[0] == [
        ("123456789012345678901234567890.123456789012345678901234567890",),
        ("-0.000000000000000000000000000000000001000",),
        (None,),
        ("1" + "0" * 60,),
        ("-Infinity",),
    ]
    assert texts[1] == texts[0]


def test_plain_numeric_literals_are_kept_exactly(engine: Engine) -> None:
    """Numbers beyond a float64 (60 digits; 400 digits, which orjson refuses as infinite) and
    below it (1e-36) are stored and served as the literal that was sent."""
    server = engine.server
    _, key = server.new_tenant()
    literals = [
        b"123456789012345678901234567890.123456789012345678901234567890",
        b"0.000000000000000000000000000000000001",
        b"1" + b"0" * 399,
        b"-1" + b"0" * 399 + b".5",
    ]
    readings = [
        b'{"meter_reading_id":"%s","created_at":"2025-01-01T00:00:00Z","meter_id":1,'
        b'"meter_element_id":null,"x_numeric_plain":%s,"x_text":"t","x_bool":false}'
        % (str(uuid.uuid4()).encode(), literal)
        for literal in literals
    ]
    answer = server.admin._http.post(
        server.base_url + "/sync/readings/batch",
        content=b'{"readings":[' + b",".join(readings) + b"]}",
        headers={"X-API-Key": key, "Content-Type": "application/json"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["inserted"] == len(literals)
    page = server.admin._http.get(
        server.base_url + "/sync/readings?limit=10", headers={"X-API-Key": key}
    ).content
    for literal in literals:
        assert b'"x_numeric_plain":' + literal + b',"x_text":"t","x_bool":false}' in page

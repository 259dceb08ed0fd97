"""Download page validation: every bad reading is refused with a message naming what is wrong."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import orjson
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metersync.errors import MalformedPageError
from metersync.model import MEASUREMENT_COLUMNS
from metersync.remote.page import loads_page, page_to_batch

TENANT = 7
DEC = pa.decimal128(18, 4)
SCHEMA = pa.schema(
    [
        pa.field("meter_reading_id", pa.binary(16), nullable=False),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("meter_id", pa.int64(), nullable=False),
        pa.field("meter_element_id", pa.int64()),
        *(pa.field(name, DEC) for name in MEASUREMENT_COLUMNS),
    ]
)
MAX_NUMERIC = Decimal("99999999999999.9999")


def reading(**overrides: Any) -> dict[str, Any]:
    r: dict[str, Any] = {
        "meter_reading_id": str(uuid.uuid4()),
        "created_at": "2026-01-02T03:04:05.123456Z",
        "meter_id": 12,
        "meter_element_id": None,
        "active_energy": Decimal("12.5000"),
        "frequency": Decimal("50.0100"),
    }
    r.update(overrides)
    return r


def convert(readings: list[Any], limit: int = 100) -> pa.RecordBatch:
    return page_to_batch(readings, schema=SCHEMA, tenant_id=TENANT, limit=limit)


def test_valid_page_converts_every_field() -> None:
    rid = str(uuid.uuid4())
    rows = [
        reading(meter_reading_id=rid.upper(), created_at="2026-01-02T05:04:05+02:00"),
        reading(tenant_id=TENANT, meter_element_id=3, power=-250000),
    ]
    batch = convert(rows)
    assert batch.schema == SCHEMA
    assert batch.num_rows == 2
    assert batch.column("meter_reading_id")[0].as_py() == uuid.UUID(rid).bytes
    # +02:00 is converted to UTC.
    assert batch.column("created_at")[0].as_py().isoformat() == "2026-01-02T03:04:05+00:00"
    assert batch.column("meter_element_id").to_pylist() == [None, 3]
    assert batch.column("power").to_pylist() == [None, Decimal("-250000.0000")]
    assert batch.column("active_energy")[0].as_py() == Decimal("12.5000")
    assert batch.column("voltage_a_n").null_count == 2  # absent measurement → null


def test_empty_page() -> None:
    assert convert([]).num_rows == 0


def test_page_longer_than_asked_is_refused() -> None:
    with pytest.raises(MalformedPageError, match="3 readings but at most 2"):
        convert([reading(), reading(), reading()], limit=2)


@pytest.mark.parametrize(
    ("overrides", "field", "problem"),
    [
        ({"meter_reading_id": "not-a-uuid"}, "meter_reading_id", "not a UUID"),
        ({"meter_reading_id": "{" + str(uuid.uuid4())[:34] + "}"}, "meter_reading_id", "UUID"),
        ({"meter_reading_id": 5}, "meter_reading_id", "expected a UUID string"),
        ({"created_at": "2026-01-02T03:04:05"}, "created_at", "without a UTC offset"),
        ({"created_at": "yesterday"}, "created_at", "not an ISO-8601"),
        ({"created_at": "2026-01-02"}, "created_at", "with a time"),
        ({"created_at": 1767323045}, "created_at", "expected an ISO-8601"),
        ({"meter_id": "12"}, "meter_id", "expected an integer, got string"),
        ({"meter_id": True}, "meter_id", "expected an integer, got boolean"),
        ({"meter_id": 1.5}, "meter_id", "expected an integer"),
        ({"meter_id": 2**63}, "meter_id", "out of range"),
        ({"meter_element_id": "x"}, "meter_element_id", "expected an integer"),
        ({"active_energy": "12.5"}, "active_energy", "expected a number, got string"),
        ({"active_energy": True}, "active_energy", "expected a number, got boolean"),
        ({"active_energy": [1]}, "active_energy", "expected a number"),
        ({"active_energy": Decimal("1.23456")}, "active_energy", "more than 4 decimal places"),
        ({"active_energy": Decimal("100000000000000")}, "active_energy", "out of range"),
        ({"active_energy": Decimal("NaN")}, "active_energy", "not a finite number"),
        ({"active_energy": float("inf")}, "active_energy", "not a finite number"),
        ({"active_energy": 99999999999999.9999}, "active_energy", "lost precision"),
    ],
)
def test_bad_value_names_reading_field_and_problem(
    overrides: dict[str, Any], field: str, problem: str
) -> None:
    rows = [reading(), reading(**overrides)]
    with pytest.raises(MalformedPageError) as info:
        convert(rows)
    message = str(info.value)
    assert "reading 1" in message
    assert repr(field) in message
    assert problem in message
    assert f"tenant {TENANT}" in message


def test_missing_required_field() -> None:
    bad = reading()
    del bad["created_at"]
    with pytest.raises(
        MalformedPageError, match=r"reading 0 .*missing required field.*'created_at'"
    ):
        convert([bad])


def test_null_required_field() -> None:
    with pytest.raises(MalformedPageError, match=r"field 'meter_id' is null"):
        convert([reading(meter_id=None)])


def test_unknown_field_is_an_error_naming_it() -> None:
    with pytest.raises(MalformedPageError, match=r"unknown field\(s\) 'colour'"):
        convert([reading(colour="blue")])


def test_not_an_object() -> None:
    with pytest.raises(MalformedPageError, match=r"reading 1 is an array, not an object"):
        convert([reading(), [1, 2]])
    with pytest.raises(MalformedPageError, match=r"'readings' is string"):
        page_to_batch("nope", schema=SCHEMA, tenant_id=TENANT, limit=5)  # type: ignore[arg-type]


def test_other_tenants_reading_is_refused() -> None:
    rows = [reading(tenant_id=TENANT), reading(tenant_id=TENANT + 1)]
    with pytest.raises(MalformedPageError, match=rf"reading 1 .*belongs to tenant {TENANT + 1}"):
        convert(rows)
    with pytest.raises(MalformedPageError, match="belongs to tenant"):
        convert([reading(tenant_id=str(TENANT))])


def test_duplicate_id_within_page() -> None:
    rid = str(uuid.uuid4())
    rows = [reading(meter_reading_id=rid), reading(), reading(meter_reading_id=rid.upper())]
    with pytest.raises(MalformedPageError, match=r"reading 2 .*repeats reading 0"):
        convert(rows)


def test_short_floats_are_exact_and_accepted() -> None:
    # A float with at most 15 significant digits is exactly what the sender wrote.
    batch = convert([reading(active_energy=221.0955, frequency=50)])
    assert batch.column("active_energy")[0].as_py() == Decimal("221.0955")
    assert batch.column("frequency")[0].as_py() == Decimal("50.0000")


def test_loads_page_keeps_every_digit_and_refuses_nan() -> None:
    raw = b'{"readings":[{"x": 99999999999999.9999, "y": -0.0001, "z": 12}],"next_cursor":null}'
    doc = loads_page(raw)
    assert doc["readings"][0] == {"x": MAX_NUMERIC, "y": Decimal("-0.0001"), "z": 12}
    # orjson (floats) would have lost the last digits:
    assert Decimal(repr(orjson.loads(raw)["readings"][0]["x"])) != MAX_NUMERIC
    with pytest.raises(ValueError, match="NaN"):
        loads_page(b'{"x": NaN}')


def test_extreme_values_round_trip_exactly() -> None:
    extremes = [MAX_NUMERIC, -MAX_NUMERIC, Decimal("0.0001"), Decimal("-0.0001"), Decimal(0)]
    meters = [2**63 - 1, -(2**63), 0, 1, 2]
    # As JSON text parsed exactly, the way a download page arrives.
    text = (
        "["
        + ",".join(
            f'{{"meter_reading_id":"{uuid.uuid4()}","created_at":"9999-12-31T23:59:59.999999Z",'
            f'"meter_id":{m},"active_energy":{v}}}'
            for v, m in zip(extremes, meters, strict=True)
        )
        + "]"
    )
    batch = convert(loads_page(text))
    assert batch.column("active_energy").to_pylist() == extremes
    assert batch.column("meter_id").to_pylist() == meters
    assert batch.column("created_at")[0].as_py().year == 9999


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.decimals(min_value=-MAX_NUMERIC, max_value=MAX_NUMERIC, places=4, allow_nan=False),
        min_size=1,
        max_size=20,
    )
)
def test_any_numeric_18_4_survives_json_text(values: list[Decimal]) -> None:
    body = (
        '{"readings":['
        + ",".join(
            f'{{"meter_reading_id":"{uuid.uuid4()}","created_at":"2026-01-01T00:00:00Z",'
            f'"meter_id":1,"power":{v}}}'
            for v in values
        )
        + "]}"
    )
    batch = convert(loads_page(body)["readings"])
    assert batch.column("power").to_pylist() == values

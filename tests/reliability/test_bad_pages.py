"""Bad download pages fed straight to the parser: every kind of garbage is a clear error.

The end-to-end form (a crafted page served over HTTP to the real ``DownloadManager``, nothing
written, cursor unchanged) lives in ``test_bad_input_e2e.py``; here hypothesis throws thousands of
corrupted pages (as JSON text, the way they arrive) at :func:`metersync.remote.page.parse_page`.
"""

from __future__ import annotations

import math
import uuid
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from fix_server import json_text
from metersync.errors import MalformedPageError
from metersync.remote.page import parse_page
from metersync.tools.synthetic import reading_batch

TENANT = 7
SCHEMA: pa.Schema = reading_batch(1).schema
MEASUREMENTS = [f.name for f in SCHEMA][4:]
NUMERIC_MAX = Decimal("99999999999999.9999")  # numeric(18,4)

# Every mutation kind this module throws at the validator (counted in the reliability report).
MUTATIONS = (
    "wrong_type",
    "missing_required",
    "extra_field",
    "duplicate_id",
    "numeric_too_big",
    "numeric_too_precise",
    "huge_string",
    "nan_infinity",
    "other_tenant",
    "too_many_rows",
    "not_an_object",
    "bad_uuid",
    "bad_timestamp",
    "int_out_of_range",
    "bool_as_number",
    "null_required",
)

_uuids = st.uuids(version=4).map(str)
_decimals = st.decimals(
    min_value=-NUMERIC_MAX, max_value=NUMERIC_MAX, places=4, allow_nan=False, allow_infinity=False
)
_timestamps = st.datetimes(
    min_value=__import__("datetime").datetime(2000, 1, 1),
    max_value=__import__("datetime").datetime(2100, 1, 1),
).map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))


def page_to_batch(page: Any, *, schema: pa.Schema, tenant_id: int, limit: int) -> pa.RecordBatch:
    """The page's readings as the Client System would send them, through the one parser."""
    body = json_text({"readings": page, "next_cursor": "c"}).encode()
    return parse_page(body, schema, tenant_id=tenant_id, limit=limit)[0]


@st.composite
def readings(draw: st.DrawFn) -> dict[str, Any]:
    """One valid reading as the Client System sends it (numbers exact)."""
    r: dict[str, Any] = {
        "meter_reading_id": draw(_uuids),
        "created_at": draw(_timestamps),
        "meter_id": draw(st.integers(1, 2**40)),
        "meter_element_id": draw(st.none() | st.integers(1, 2**40)),
    }
    for name in draw(st.lists(st.sampled_from(MEASUREMENTS), max_size=6, unique=True)):
        r[name] = draw(st.none() | _decimals)
    return r


@st.composite
def valid_pages(draw: st.DrawFn) -> list[dict[str, Any]]:
    page = draw(st.lists(readings(), min_size=1, max_size=8))
    ids = [r["meter_reading_id"] for r in page]
    if len(set(ids)) != len(ids):  # uuid4 collisions are impossible in practice; keep it valid
        for r in page:
            r["meter_reading_id"] = str(uuid.uuid4())
    return page


_garbage = st.one_of(
    st.booleans(),
    st.integers(),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.floats(allow_nan=True, allow_infinity=True),
)


@st.composite
def mutated_pages(draw: st.DrawFn) -> tuple[str, list[Any], int, tuple[int, str, int] | None]:
    """A valid page with exactly one kind of damage: (kind, page, limit, huge).

    ``huge`` = (row, field, length) asks the test to put a huge string there (built in the test so
    that hypothesis never prints a megabyte).
    """
    huge: tuple[int, str, int] | None = None
    page: list[Any] = draw(valid_pages())
    limit = max(len(page), draw(st.integers(1, 20)))
    kind = draw(st.sampled_from(MUTATIONS))
    i = draw(st.integers(0, len(page) - 1))
    r = page[i]
    if kind == "wrong_type":
        field = draw(
            st.sampled_from(["meter_reading_id", "created_at", "meter_id", MEASUREMENTS[0]])
        )
        bad = draw(_garbage)
        # A value of the right type is not damage: filter those out.
        if field == "meter_id" and type(bad) is int:
            bad = str(bad)
        if field in ("meter_reading_id", "created_at") and type(bad) is str:
            bad = [bad]
        if field == MEASUREMENTS[0] and (
            type(bad) is int or (type(bad) is float and math.isfinite(bad))
        ):
            bad = {"n": bad}  # any finite JSON number is a valid numeric value (or a range error)
        r[field] = bad
    elif kind == "missing_required":
        del r[draw(st.sampled_from(["meter_reading_id", "created_at", "meter_id"]))]
    elif kind == "extra_field":
        name = draw(st.text(min_size=1, max_size=30).filter(lambda s: s not in SCHEMA.names))
        if name == "tenant_id":
            name = "tenant_id_x"
        r[name] = draw(_garbage)
    elif kind == "duplicate_id":
        dup = dict(draw(readings()))
        dup["meter_reading_id"] = r["meter_reading_id"]
        page.insert(draw(st.integers(0, len(page))), dup)
        limit = max(limit, len(page))
    elif kind == "numeric_too_big":
        sign = draw(st.sampled_from([1, -1]))
        r[MEASUREMENTS[1]] = sign * (
            NUMERIC_MAX + draw(st.sampled_from([Decimal("0.0001"), 1, 10**20]))
        )
    elif kind == "numeric_too_precise":
        r[MEASUREMENTS[2]] = Decimal("1.00001") + draw(st.integers(0, 1000))
    elif kind == "huge_string":
        field = draw(
            st.sampled_from(["meter_reading_id", "created_at", MEASUREMENTS[3], "x" * 10_000])
        )
        huge = (i, field, draw(st.integers(100_000, 1_000_000)))
    elif kind == "nan_infinity":
        r[MEASUREMENTS[4]] = draw(
            st.sampled_from([math.nan, math.inf, -math.inf, Decimal("NaN"), Decimal("Infinity")])
        )
    elif kind == "other_tenant":
        r["tenant_id"] = draw(st.integers().filter(lambda t: t != TENANT) | st.just(str(TENANT)))
    elif kind == "too_many_rows":
        limit = len(page) - 1 if len(page) > 1 else 0
        if limit == 0:
            page.append(draw(readings()))
            limit = 1
    elif kind == "not_an_object":
        page[i] = draw(_garbage.filter(lambda v: type(v) is not dict) | st.none())
    elif kind == "bad_uuid":
        r["meter_reading_id"] = draw(
            st.sampled_from(
                [
                    "",
                    "not-a-uuid",
                    "{" + str(uuid.uuid4()) + "}",
                    uuid.uuid4().hex,
                    "urn:uuid:" + str(uuid.uuid4()),
                    str(uuid.uuid4())[:-1] + "g",
                    str(uuid.uuid4()) + "0",
                ]
            )
        )
    elif kind == "bad_timestamp":
        r["created_at"] = draw(
            st.sampled_from(
                ["2026-13-01T00:00:00Z", "2026-01-01", "yesterday", "2026-01-01T25:00:00Z", "", "0"]
            )
        )
    elif kind == "int_out_of_range":
        r["meter_id"] = draw(st.sampled_from([2**63, -(2**63) - 1, 10**30]))
    elif kind == "bool_as_number":
        field = draw(st.sampled_from(["meter_id", MEASUREMENTS[5]]))
        r[field] = draw(st.booleans())
    elif kind == "null_required":
        r[draw(st.sampled_from(["meter_reading_id", "created_at", "meter_id"]))] = None
    return kind, page, limit, huge


@settings(max_examples=150, deadline=None)
@given(valid_pages())
def test_valid_pages_convert_exactly(page: list[dict[str, Any]]) -> None:
    batch = page_to_batch(page, schema=SCHEMA, tenant_id=TENANT, limit=len(page))
    assert batch.num_rows == len(page)
    assert batch.schema.equals(SCHEMA)
    got_ids = [str(uuid.UUID(bytes=b)) for b in batch.column("meter_reading_id").to_pylist()]
    assert got_ids == [r["meter_reading_id"] for r in page]
    for name in MEASUREMENTS:
        assert batch.column(name).to_pylist() == [r.get(name) for r in page]


_DAMAGE_SETTINGS = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    # No shrinking: a failing page is reported as found (shrinking megabyte strings takes
    # minutes); the message names the mutation kind.
    "phases": [Phase.explicit, Phase.reuse, Phase.generate],
}


@settings(max_examples=400, **_DAMAGE_SETTINGS)
@given(mutated_pages())
def test_every_damaged_page_is_a_clear_error(
    case: tuple[str, list[Any], int, tuple[int, str, int] | None],
) -> None:
    _check_damaged(case)


@pytest.mark.stress
@settings(max_examples=10_000, **_DAMAGE_SETTINGS)
@given(mutated_pages())
def test_every_damaged_page_is_a_clear_error_full(
    case: tuple[str, list[Any], int, tuple[int, str, int] | None],
) -> None:
    _check_damaged(case)


def _check_damaged(case: tuple[str, list[Any], int, tuple[int, str, int] | None]) -> None:
    kind, page, limit, huge = case
    if huge is not None:
        row, field, length = huge
        page[row][field] = "7" * length
    with pytest.raises(MalformedPageError) as info:
        page_to_batch(page, schema=SCHEMA, tenant_id=TENANT, limit=limit)
    message = str(info.value)
    assert message.startswith(f"download page for tenant {TENANT}"), (kind, message)
    # A clear error is one line of reasonable size, even for a megabyte of garbage.
    assert len(message) < 1000, (kind, len(message))


@pytest.mark.parametrize(
    "raw",
    [
        b'{"readings": [{"active_energy": NaN}]}',
        b'{"readings": [{"active_energy": Infinity}]}',
        b'{"readings": [{"active_energy": -Infinity}]}',
    ],
)
def test_parse_page_refuses_nan_and_infinity(raw: bytes) -> None:
    with pytest.raises(MalformedPageError, match="not valid JSON at byte 32"):
        parse_page(raw, SCHEMA, tenant_id=TENANT, limit=5)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_parse_page_on_random_bytes_raises_malformed_page_only(raw: bytes) -> None:
    with pytest.raises(MalformedPageError):
        parse_page(raw, SCHEMA, tenant_id=TENANT, limit=5)


def test_parse_page_invalid_utf8_is_a_clear_error() -> None:
    with pytest.raises(MalformedPageError, match="invalid UTF-8"):
        parse_page(
            b'{"readings": [{"meter_reading_id": "\xff\xfe"}]}', SCHEMA, tenant_id=TENANT, limit=5
        )


def test_full_precision_numeric_survives_exact_parsing() -> None:
    """numeric(18,4) has 18 significant digits; a float64 has 15-17. Nothing may be rounded."""
    rid = str(uuid.uuid4())
    raw = (
        b'{"readings": [{"meter_reading_id": "' + rid.encode() + b'", '
        b'"created_at": "2026-01-01T00:00:00.000000Z", "meter_id": 1, '
        b'"active_energy": 99999999999999.9999, "power": -12345678901234.5678}], '
        b'"next_cursor": null}'
    )
    batch, cursor = parse_page(raw, SCHEMA, tenant_id=TENANT, limit=1)
    assert cursor is None
    assert batch.column("active_energy")[0].as_py() == Decimal("99999999999999.9999")
    assert batch.column("power")[0].as_py() == Decimal("-12345678901234.5678")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("x" * 100_000, 1),  # an unknown field with a huge name
        ("tenant_id", "x" * 100_000),  # a huge foreign tenant value
        ("meter_reading_id", "7" * 100_000),
        ("created_at", "7" * 100_000),
        ("active_energy", "7" * 100_000),
    ],
    ids=["huge-field-name", "huge-tenant", "huge-id", "huge-timestamp", "huge-numeric-text"],
)
def test_error_for_huge_strings_is_short(field: str, value: Any) -> None:
    """A hostile page must not turn into a 100 KB log line (the error is logged and stored)."""
    r = {
        "meter_reading_id": str(uuid.uuid4()),
        "created_at": "2026-01-01T00:00:00.000000Z",
        "meter_id": 1,
    }
    r[field] = value
    with pytest.raises(MalformedPageError) as info:
        page_to_batch([r], schema=SCHEMA, tenant_id=TENANT, limit=1)
    assert len(str(info.value)) < 1000

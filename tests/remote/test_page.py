"""Download pages → Arrow: exact values, clear errors, and two twins that agree byte for byte.

Every test runs against both implementations (the compiled ``metersync.codec._page`` and its
pure-Python twin ``metersync.codec._page_py``); a hypothesis test feeds both the same valid,
damaged and byte-mangled pages and requires equal batches or the same error message.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from types import ModuleType
from typing import Any

import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fix_server import json_text
from metersync import codec
from metersync.codec import _page_py, _types
from metersync.errors import MalformedPageError
from metersync.model import MEASUREMENT_COLUMNS
from metersync.remote import page as page_api
from metersync.tools.synthetic import reading_batch

try:
    from metersync.codec import _page as _page_c
except ImportError:  # pragma: no cover - a build without the compiled core
    _page_c = None  # type: ignore[assignment]

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
# Every column type the parser supports, for the twin comparison.
WIDE = pa.schema(
    [
        pa.field("meter_reading_id", pa.uuid()),
        pa.field("created_at", pa.timestamp("us", tz="UTC")),
        pa.field("meter_id", pa.int64()),
        pa.field("small", pa.int16()),
        pa.field("medium", pa.int32()),
        pa.field("ratio", pa.float32()),
        pa.field("reading", pa.float64()),
        pa.field("ok", pa.bool_()),
        pa.field("note", pa.string()),
        pa.field("long_note", pa.large_string()),
        pa.field("day", pa.date32()),
        pa.field("local", pa.timestamp("us")),
        pa.field("amount", pa.decimal128(38, 10)),
        pa.field("whole", pa.decimal128(5, 0)),
    ]
)
MAX_NUMERIC = Decimal("99999999999999.9999")

TWINS = [pytest.param(_page_py, id="python")]
if _page_c is not None:
    TWINS.insert(0, pytest.param(_page_c, id="c"))


@pytest.fixture(params=TWINS)
def twin(request: pytest.FixtureRequest) -> ModuleType:
    return request.param


def body(readings: Any, cursor: Any = "next") -> bytes:
    return json_text({"readings": readings, "next_cursor": cursor}).encode()


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


def parse(
    twin: ModuleType, readings: Any, limit: int = 100, **kwargs: Any
) -> tuple[pa.RecordBatch, str | None]:
    kwargs.setdefault("tenant_id", TENANT)
    return twin.parse_page(body(readings), SCHEMA, limit=limit, **kwargs)


def refused(twin: ModuleType, readings: Any, limit: int = 100, **kwargs: Any) -> str:
    with pytest.raises(MalformedPageError) as info:
        parse(twin, readings, limit, **kwargs)
    return str(info.value)


def test_valid_page_converts_every_field(twin: ModuleType) -> None:
    rid = str(uuid.uuid4())
    rows = [
        reading(meter_reading_id=rid.upper(), created_at="2026-01-02T05:04:05+02:00"),
        reading(tenant_id=TENANT, meter_element_id=3, power=-250000, voltage_thd=Decimal("1E+2")),
    ]
    batch, cursor = parse(twin, rows)
    assert cursor == "next"
    assert batch.schema == SCHEMA
    assert batch.num_rows == 2
    assert batch.column("meter_reading_id")[0].as_py() == uuid.UUID(rid).bytes
    # +02:00 is converted to UTC.
    assert batch.column("created_at")[0].as_py().isoformat() == "2026-01-02T03:04:05+00:00"
    assert batch.column("created_at")[1].as_py() == dt.datetime(
        2026, 1, 2, 3, 4, 5, 123456, tzinfo=dt.UTC
    )
    assert batch.column("meter_element_id").to_pylist() == [None, 3]
    assert batch.column("power").to_pylist() == [None, Decimal("-250000.0000")]
    assert batch.column("voltage_thd").to_pylist() == [None, Decimal("100.0000")]
    assert batch.column("active_energy")[0].as_py() == Decimal("12.5000")
    assert batch.column("voltage_a_n").null_count == 2  # absent measurement → null


def test_the_public_entry_point_uses_the_active_twin() -> None:
    batch, cursor = page_api.parse_page(body([reading()], None), SCHEMA, tenant_id=TENANT, limit=1)
    assert (batch.num_rows, cursor) == (1, None)


def test_empty_page_and_cursor_forms(twin: ModuleType) -> None:
    assert parse(twin, [])[0].num_rows == 0
    assert (
        twin.parse_page(b'{"next_cursor":null,"readings":[]}', SCHEMA, tenant_id=1, limit=5)[1]
        is None
    )
    # Escapes in the cursor are decoded; unknown top-level keys are ignored.
    page = b' {"x":[1,{"y":null}], "readings" : [ ], "next_cursor":"a\\u00e9\\/b"} \n'
    assert twin.parse_page(page, SCHEMA, tenant_id=1, limit=5)[1] == "a\u00e9/b"


def test_shape_only_parse_counts_readings(twin: ModuleType) -> None:
    batch, cursor = twin.parse_page(
        b'{"readings":[{"anything":1},{}],"next_cursor":"c"}', None, tenant_id=None, limit=2
    )
    assert (batch.num_rows, batch.num_columns, cursor) == (2, 0, "c")


def test_page_longer_than_asked_is_refused(twin: ModuleType) -> None:
    message = refused(twin, [reading(), reading(), reading()], limit=2)
    assert "more than 2 readings but at most 2 were asked for" in message


@pytest.mark.parametrize(
    ("overrides", "field", "problem"),
    [
        ({"meter_reading_id": "not-a-uuid"}, "meter_reading_id", "not a UUID"),
        ({"meter_reading_id": "{" + str(uuid.uuid4())[:34] + "}"}, "meter_reading_id", "UUID"),
        ({"meter_reading_id": 5}, "meter_reading_id", "expected a UUID string"),
        ({"created_at": "2026-01-02T03:04:05"}, "created_at", "without a UTC offset"),
        ({"created_at": "yesterday"}, "created_at", "not an ISO-8601"),
        ({"created_at": "2026-01-02"}, "created_at", "not an ISO-8601"),
        ({"created_at": "2026-02-30T00:00:00Z"}, "created_at", "not an ISO-8601"),
        ({"created_at": "2026-01-02T03:04:05.1234567Z"}, "created_at", "not an ISO-8601"),
        ({"created_at": 1767323045}, "created_at", "expected an ISO-8601"),
        ({"meter_id": "12"}, "meter_id", "expected an integer, got string"),
        ({"meter_id": True}, "meter_id", "expected an integer, got boolean"),
        ({"meter_id": 1.5}, "meter_id", "expected an integer"),
        ({"meter_id": Decimal("1E+3")}, "meter_id", "expected an integer"),
        ({"meter_id": 2**63}, "meter_id", "out of range"),
        ({"meter_id": 10**40}, "meter_id", "out of range"),
        ({"meter_element_id": "x"}, "meter_element_id", "expected an integer"),
        ({"active_energy": "12.5"}, "active_energy", "expected a number, got string"),
        ({"active_energy": True}, "active_energy", "expected a number, got boolean"),
        ({"active_energy": [1]}, "active_energy", "expected a number, got an array"),
        ({"active_energy": Decimal("1.23456")}, "active_energy", "more than 4 decimal places"),
        ({"active_energy": Decimal("100000000000000")}, "active_energy", "out of range"),
        ({"active_energy": Decimal("1E+14")}, "active_energy", "out of range"),
        ({"active_energy": Decimal("1E-5")}, "active_energy", "more than 4 decimal places"),
    ],
)
def test_bad_value_names_reading_field_and_problem(
    twin: ModuleType, overrides: dict[str, Any], field: str, problem: str
) -> None:
    rows = [reading(), reading(**overrides)]
    message = refused(twin, rows)
    assert "reading 1" in message
    assert repr(field) in message
    assert problem in message
    assert message.startswith(f"download page for tenant {TENANT}: ")


def test_the_error_names_the_id_once_it_was_read(twin: ModuleType) -> None:
    rid = str(uuid.uuid4())
    message = refused(twin, [reading(meter_reading_id=rid, meter_id="x")])
    assert f"reading 0 (id {rid}): field 'meter_id'" in message


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"", "at byte 0: unexpected end"),
        (b"[]", "found '[' where '{' (a page is a JSON object) was expected"),
        (b'{"readings":[],"next_cursor":null} x', "byte 35: found 'x' where the end"),
        (b'{"readings":[{"active_energy": NaN}]}', "found 'N' where a value was expected"),
        (b'{"readings":[{"active_energy": -Infinity}]}', "invalid number"),
        (b'{"readings":[{"a":"\x01"}]}', "invalid string"),
        (b'{"readings":[{"a":"\\ud800"}]}', "invalid string"),
        (b'{"readings":{},"next_cursor":null}', "'readings' is an object, not an array"),
        (b'{"readings":[]}', "no 'next_cursor'"),
        (b'{"next_cursor":"c"}', "no 'readings' array"),
        (b'{"readings":[],"next_cursor":5}', "'next_cursor' is number 5, not a string or null"),
        (b'{"readings":[],"readings":[],"next_cursor":null}', 'holds "readings" twice'),
        (b'{"readings":[1],"next_cursor":null}', "reading 0 is number 1, not an object"),
        (b'{"readings":[{"a":' + b"[" * 70 + b"]" * 70 + b"}]}", "nested deeper than 64"),
    ],
)
def test_malformed_json_is_a_clear_error(twin: ModuleType, raw: bytes, problem: str) -> None:
    with pytest.raises(MalformedPageError) as info:
        twin.parse_page(raw, SCHEMA, tenant_id=TENANT, limit=5, unknown_fields="all")
    assert problem in str(info.value)


def test_missing_required_field(twin: ModuleType) -> None:
    bad = reading()
    del bad["created_at"]
    del bad["meter_id"]
    message = refused(twin, [bad])
    assert "reading 0 (id " in message
    assert "missing required field(s) 'created_at', 'meter_id'" in message


def test_null_required_field(twin: ModuleType) -> None:
    assert "field 'meter_id' is null" in refused(twin, [reading(meter_id=None)])


def test_a_field_twice_in_one_reading_is_refused(twin: ModuleType) -> None:
    raw = body([reading()]).replace(b'"meter_id":12', b'"meter_id":12,"meter_id":13')
    with pytest.raises(MalformedPageError, match="field 'meter_id' appears twice"):
        twin.parse_page(raw, SCHEMA, tenant_id=TENANT, limit=5)


def test_unknown_field_is_refused_unless_allowed(twin: ModuleType) -> None:
    assert 'unknown field "colour"' in refused(twin, [reading(colour="blue")])
    rows = [reading(colour="blue", site={"a": [1, 2]})]
    assert 'unknown field "site"' in refused(twin, rows, unknown_fields=["colour"])
    batch, _ = parse(twin, rows, unknown_fields=["colour", "site"])
    assert batch.num_rows == 1 and "colour" not in batch.schema.names
    assert parse(twin, rows, unknown_fields="all")[0].num_rows == 1
    with pytest.raises(ValueError, match="unknown_fields"):
        parse(twin, rows, unknown_fields="some")


def test_not_an_object(twin: ModuleType) -> None:
    assert "reading 1 is an array, not an object" in refused(twin, [reading(), [1, 2]])
    assert "'readings' is string \"nope\"" in refused(twin, "nope")


def test_other_tenants_reading_is_refused(twin: ModuleType) -> None:
    message = refused(twin, [reading(tenant_id=TENANT), reading(tenant_id=TENANT + 1)])
    assert "reading 1 (id " in message and f"belongs to tenant {TENANT + 1}, not to 7" in message
    assert "belongs to tenant" in refused(twin, [reading(tenant_id=str(TENANT))])
    assert "belongs to tenant" in refused(twin, [reading(tenant_id=10**30)])
    # Without a tenant to check, any integer tenant_id is accepted.
    assert parse(twin, [reading(tenant_id=99)], tenant_id=None)[0].num_rows == 1


def test_duplicate_id_within_page(twin: ModuleType) -> None:
    rid = str(uuid.uuid4())
    rows = [reading(meter_reading_id=rid), reading(), reading(meter_reading_id=rid.upper())]
    assert f"reading 2 (id {rid}): meter_reading_id repeats reading 0" in refused(twin, rows)


def test_text_escapes_and_nul(twin: ModuleType) -> None:
    r = {"meter_reading_id": str(uuid.uuid4()), "created_at": "2026-01-01T00:00:00Z"}
    r |= {"meter_id": 1, "note": 'a\u00e9\U0001f600\n"\\/', "long_note": "\u20ac"}
    page = body([r]).replace(b"\\n", b"\\n\\u00e9\\ud83d\\ude00")
    batch, _ = twin.parse_page(page, WIDE, tenant_id=None, limit=1)
    assert batch.column("note")[0].as_py() == 'a\u00e9\U0001f600\n\u00e9\U0001f600"\\/'
    assert batch.column("long_note")[0].as_py() == "\u20ac"
    with pytest.raises(MalformedPageError, match="NUL"):
        twin.parse_page(body([{**r, "note": "a\u0000"}]), WIDE, tenant_id=None, limit=1)


def test_extreme_values_round_trip_exactly(twin: ModuleType) -> None:
    extremes = [MAX_NUMERIC, -MAX_NUMERIC, Decimal("0.0001"), Decimal("-0.0001"), Decimal(0)]
    meters = [2**63 - 1, -(2**63), 0, 1, 2]
    rows = [
        reading(active_energy=v, meter_id=m, created_at="9999-12-31T23:59:59.999999Z")
        for v, m in zip(extremes, meters, strict=True)
    ]
    batch, _ = parse(twin, rows)
    assert batch.column("active_energy").to_pylist() == extremes
    assert batch.column("meter_id").to_pylist() == meters
    assert batch.column("created_at")[0].as_py().year == 9999
    # Spellings of the same numbers: exponents, trailing zeros, a negative zero.
    text = body([reading(power=Decimal(0))]).replace(b'"power":0', b'"power":-0.000e+99999999999')
    assert twin.parse_page(text, SCHEMA, tenant_id=7, limit=1)[0].column("power")[0].as_py() == 0
    text = body([reading(power=Decimal(0))]).replace(b'"power":0', b'"power":0.12345000e2')
    got = twin.parse_page(text, SCHEMA, tenant_id=7, limit=1)[0].column("power")[0].as_py()
    assert got == Decimal("12.3450")


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.decimals(min_value=-MAX_NUMERIC, max_value=MAX_NUMERIC, places=4, allow_nan=False),
        min_size=1,
        max_size=20,
    )
)
def test_any_numeric_18_4_survives_json_text(values: list[Decimal]) -> None:
    rows = [reading(power=v) for v in values]
    for twin in (_page_py, _page_c) if _page_c is not None else (_page_py,):
        batch, _ = parse(twin, rows)
        assert batch.column("power").to_pylist() == values


def test_c_constants_match_the_twin() -> None:
    if _page_c is None:
        pytest.skip("compiled core not built")
    for name, value in _page_c.CODES.items():
        source = _types if name.startswith("KIND_") else _page_py
        assert getattr(source, name) == value, name


# -- the twins agree ------------------------------------------------------------------------------

_json_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.decimals(allow_nan=False, allow_infinity=False, places=None).filter(
        lambda d: abs(d.adjusted()) < 60
    ),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(
        [
            "2026-01-02T03:04:05Z",
            "2026-01-02 03:04:05.5+01:30",
            "2024-02-29T23:59:59.999999999z",
            "2023-02-29T00:00Z",
            "2026-01-02T03:04",
            "2026-01-02",
            "0000-01-01T00:00:00Z",
            str(uuid.uuid4()),
            str(uuid.uuid4()).upper(),
            "\u0000",
        ]
    ),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@st.composite
def wide_readings(draw: st.DrawFn) -> dict[str, Any]:
    r: dict[str, Any] = {
        "meter_reading_id": draw(st.uuids().map(str)),
        "created_at": "2026-01-01T00:00:00Z",
        "meter_id": draw(st.integers(-(2**63), 2**63 - 1)),
    }
    for name in draw(st.lists(st.sampled_from(WIDE.names), max_size=6, unique=True)):
        r[name] = draw(_json_values)
    if draw(st.booleans()):
        r["tenant_id"] = draw(st.sampled_from([TENANT, TENANT + 1, "7", 7.0]))
    if draw(st.integers(0, 9)) == 0:
        r[draw(st.text(min_size=1, max_size=4))] = 1
    return r


@st.composite
def pages(draw: st.DrawFn) -> bytes:
    rows = draw(st.lists(wide_readings(), max_size=5))
    if rows and draw(st.booleans()):
        rows.append(dict(rows[0]))  # a duplicate id
    text = body(rows, draw(st.none() | st.text(max_size=5)))
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(["delete", "insert", "truncate"]))
        if action == "delete":
            text = text[:at] + text[at + 1 :]
        elif action == "insert":
            text = (
                text[:at]
                + draw(st.sampled_from(list(b'{}[],:"\\ 0-e.\xff\x00'))).to_bytes()
                + text[at:]
            )
        else:
            text = text[:at]
    return text


def _outcome(twin: ModuleType, raw: bytes, schema: pa.Schema | None, **kwargs: Any) -> Any:
    try:
        batch, cursor = twin.parse_page(raw, schema, tenant_id=TENANT, **kwargs)
    except MalformedPageError as exc:
        return ("error", str(exc))
    return ("ok", batch, cursor)


@pytest.mark.skipif(_page_c is None, reason="compiled core not built")
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pages(),
    st.integers(0, 7),
    st.sampled_from([None, "all", ("zz", "a")]),
    st.booleans(),
)
def test_twins_agree_on_any_page(raw: bytes, limit: int, drop: Any, shape_only: bool) -> None:
    schema = None if shape_only else WIDE
    kw = {"limit": limit, "unknown_fields": drop}
    c, py = _outcome(_page_c, raw, schema, **kw), _outcome(_page_py, raw, schema, **kw)
    assert c[0] == py[0], (c, py)
    if c[0] == "error":
        assert c[1] == py[1]
        assert len(c[1]) < 1000
    else:
        assert c[1].schema == py[1].schema
        assert c[1].equals(py[1]), (c[1].to_pylist(), py[1].to_pylist())
        assert c[2] == py[2]


@pytest.mark.skipif(_page_c is None, reason="compiled core not built")
@settings(max_examples=400, deadline=None)
@given(
    st.from_regex(r"\A-?(0|[1-9][0-9]{0,24})(\.[0-9]{1,24})?([eE][+-]?[0-9]{1,3})?\Z"),
    st.sampled_from(["amount", "whole", "medium", "reading"]),
)
def test_twins_agree_on_every_spelling_of_a_number(number: str, column: str) -> None:
    r = {"meter_reading_id": str(uuid.uuid4()), "created_at": "2026-01-01T00:00:00Z"}
    raw = json_text({"readings": [{**r, "meter_id": 1, column: 0}], "next_cursor": None}).encode()
    raw = raw.replace(f'"{column}":0'.encode(), f'"{column}":{number}'.encode())
    c = _outcome(_page_c, raw, WIDE, limit=1)
    py = _outcome(_page_py, raw, WIDE, limit=1)
    assert c[0] == py[0] and (c[1] == py[1] if c[0] == "error" else c[1].equals(py[1]))
    if c[0] == "ok" and column == "amount":
        assert c[1].column("amount")[0].as_py() == Decimal(number)


@pytest.mark.parametrize("precision", [1, 5, 18, 19, 20, 36, 37, 38])
def test_decimal_precision_bounds_hold_at_every_width(twin: ModuleType, precision: int) -> None:
    """The largest value of numeric(p, 0) is stored, one more is refused — the compiled fast
    path takes 10^p from a table, in three ranges (<= 18, <= 36, above)."""
    schema = pa.schema(
        [
            pa.field("meter_reading_id", pa.binary(16), nullable=False),
            pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
            pa.field("meter_id", pa.int64(), nullable=False),
            pa.field("v", pa.decimal128(precision, 0)),
        ]
    )
    base = {"meter_reading_id": str(uuid.uuid4()), "created_at": "2026-01-01T00:00:00Z"}
    largest = 10**precision - 1
    for value, ok in ((largest, True), (largest + 1, False), (-largest, True)):
        raw = json_text({"readings": [{**base, "meter_id": 1, "v": 0}], "next_cursor": None})
        raw_bytes = raw.encode().replace(b'"v":0', f'"v":{value}'.encode())
        if ok:
            batch, _ = twin.parse_page(raw_bytes, schema, tenant_id=TENANT, limit=1)
            assert batch.column("v")[0].as_py() == Decimal(value)
        else:
            with pytest.raises(MalformedPageError, match="'v'"):
                twin.parse_page(raw_bytes, schema, tenant_id=TENANT, limit=1)


@pytest.mark.skipif(_page_c is None, reason="compiled core not built")
@pytest.mark.parametrize("order", ["schema", "reversed", "tenant_between", "twice"])
def test_twins_agree_whatever_the_key_order(order: str) -> None:
    """Keys in the schema's order take the compiled parser's in-place match; any other order,
    a tenant_id between them, or a key repeated right after it matched, the general path —
    both twins give the same batch or the same error."""
    rows = []
    for i in range(3):
        r = reading(meter_id=i)
        keys = list(r)
        if order == "reversed":
            keys.reverse()
        r = {k: r[k] for k in keys}
        if order == "tenant_between":
            r = {"meter_reading_id": r.pop("meter_reading_id"), "tenant_id": TENANT, **r}
        rows.append(r)
    raw = body(rows)
    if order == "twice":
        raw = raw.replace(b'"meter_id":1,', b'"meter_id":1,"meter_element_id":null,"meter_id":1,')
    c, py = _outcome(_page_c, raw, SCHEMA, limit=5), _outcome(_page_py, raw, SCHEMA, limit=5)
    assert c[0] == py[0] == ("error" if order == "twice" else "ok"), (c, py)
    if c[0] == "ok":
        assert c[1].equals(py[1]) and c[1].num_rows == 3
    else:
        assert c[1] == py[1]


@pytest.mark.skipif(_page_c is None, reason="compiled core not built")
def test_a_column_name_with_a_quote_is_matched_through_its_escape() -> None:
    """A name that is not plain ASCII (here a quote in it) never takes the in-place match: the
    key is decoded (its escape) and looked up, in both twins."""
    schema = pa.schema([*SCHEMA, pa.field('we"ird', pa.int64())])
    r = reading()
    raw = body([r]).replace(b'"frequency"', b'"we\\"ird":5,"frequency"')
    for twin in (_page_c, _page_py):
        batch, _ = twin.parse_page(raw, schema, tenant_id=TENANT, limit=1)
        assert batch.column('we"ird')[0].as_py() == 5


# -- peek_page: the engine's hint, never the page's meaning -------------------------------------


@pytest.mark.parametrize(
    ("body", "hint"),
    [
        (
            b'{"readings":[{"meter_reading_id":"a"},{"meter_reading_id":"b"}],"next_cursor":"c2Vx"}',
            ("c2Vx", 2),
        ),
        (b'{"readings": [], "next_cursor": null}\n', (None, 0)),
        (b'{"readings":[{"meter_reading_id":"a"}],"next_cursor" : "seq:1" } ', ("seq:1", 1)),
        # The cursor not at the end, or a token that would need unescaping: no hint.
        (b'{"next_cursor":"x","readings":[]}', None),
        (b'{"readings":[],"next_cursor":"a\\"b"}', None),
        (b'{"readings":[],"next_cursor":"x"', None),
        (b"", None),
    ],
)
def test_peek_page_reads_the_cursor_a_page_ends_with(body: bytes, hint: Any) -> None:
    assert page_api.peek_page(body) == hint


@given(
    n=st.integers(min_value=0, max_value=30),
    cursor=st.none() | st.from_regex(r"[A-Za-z0-9_\-=]{1,40}", fullmatch=True),
)
def test_peek_page_agrees_with_the_parse_on_our_own_pages(n: int, cursor: str | None) -> None:
    batch = reading_batch(n, seed=n, tenant_id=None)
    rows = codec.json_rows(batch)
    body = b'{"readings":' + rows + b',"next_cursor":' + orjson.dumps(cursor) + b"}"
    parsed, next_cursor = page_api.parse_page(body, batch.schema, tenant_id=None, limit=30)
    assert page_api.peek_page(body) == (next_cursor, parsed.num_rows) == (cursor, n)

"""The reference Client System: contract, validation, idempotency, faults, admin API, running."""

from __future__ import annotations

import asyncio
import gzip
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fix_server import ServerHandle
from metersync.errors import ClientSystemError, ConfigError
from metersync.server import (
    AdminClient,
    FaultPlan,
    ReferenceServer,
    RejectRule,
    ServerThread,
    serve_forever,
)
from metersync.server.app import decode_cursor, encode_cursor
from metersync.server.faults import FaultInjector
from metersync.server.validation import validate_reading

# One plain-HTTP client for the module: each httpx.get() would build a TLS context (~0.1 s).
HTTP = httpx.Client(verify=False, timeout=30.0)


@pytest.fixture(scope="module", autouse=True)
def _close_http() -> Iterator[None]:
    yield
    HTTP.close()


def reading(**overrides: Any) -> dict[str, Any]:
    base = {
        "meter_reading_id": str(uuid.uuid4()),
        "created_at": "2025-03-01T12:00:00.000000Z",
        "meter_id": 1,
        "meter_element_id": None,
        "power": 1.5,
    }
    return {**base, **overrides}


def post(server: ServerHandle, key: str | None, content: bytes, **headers: str) -> httpx.Response:
    if key is not None:
        headers["X-API-Key"] = key
    return HTTP.post(f"{server.base_url}/sync/readings/batch", content=content, headers=headers)


def get(server: ServerHandle, key: str | None, query: str) -> httpx.Response:
    headers = {"X-API-Key": key} if key else {}
    return HTTP.get(f"{server.base_url}/sync/readings?{query}", headers=headers)


# -- fault plans --------------------------------------------------------------------------


def test_fault_spec_parses_the_documented_example() -> None:
    plan = FaultPlan.from_spec(
        "fail=3:503,delay=0.2,drop_after_commit=2,rate429=0.1:1,reject=meter_id:13"
    )
    assert (plan.fail_count, plan.fail_status) == (3, 503)
    assert (plan.delay, plan.delay_count) == (0.2, None)
    assert plan.drop_after_commit == 2
    assert (plan.throttle_rate, plan.retry_after) == (0.1, 1.0)
    assert plan.reject == (RejectRule("meter_id", "13"),)
    assert not plan.empty and FaultPlan().empty
    full = FaultPlan.from_spec(
        "throttle=2:5,random=0.5:502,delay=1:2,miscount=1,legacy=1,malformed_page=1,"
        "oversize_page=2,garbage_page=3,path=/api/,seed=7,reject=a:b,reject=c:null"
    )
    assert (full.throttle_count, full.retry_after, full.delay_count, full.path) == (
        2,
        5.0,
        2,
        "/api/",
    )
    assert (full.fail_rate, full.fail_rate_status, full.seed) == (0.5, 502, 7)
    assert len(full.reject) == 2 and full.garbage_page == 3


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("explode=1", "unknown fault"),
        ("fail=3", "bad value"),
        ("fail=x:503", "bad value"),
        ("fail=-1:503", ">= 0"),
        ("fail=1:200", "HTTP error status"),
        ("random=1.5:503", "0..1"),
        ("delay", "KEY=VALUE"),
        ("path=api", "start with '/'"),
    ],
)
def test_fault_spec_errors(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        FaultPlan.from_spec(spec)


@settings(max_examples=50, deadline=None)
@given(
    fail=st.integers(0, 5),
    status=st.integers(400, 599),
    rate=st.floats(0, 1),
    delay=st.floats(0, 3),
    rules=st.lists(st.tuples(st.text(min_size=1), st.text()), max_size=3),
)
def test_fault_plan_json_round_trip(
    fail: int, status: int, rate: float, delay: float, rules: list[tuple[str, str]]
) -> None:
    plan = FaultPlan(
        fail_count=fail,
        fail_status=status,
        throttle_rate=rate,
        delay=delay,
        reject=tuple(RejectRule(f, v) for f, v in rules),
    )
    assert FaultPlan.from_dict(orjson.loads(orjson.dumps(plan.to_dict()))) == plan


def test_injector_counts_and_seeded_randomness() -> None:
    plan = FaultPlan(
        fail_count=2, fail_rate=0.5, fail_rate_status=502, seed=3, delay=0.1, delay_count=1
    )
    runs = []
    for _ in range(2):
        injector = FaultInjector(plan)
        runs.append([injector.before("/api/sync/readings/batch").status for _ in range(20)])
        assert injector.before("/api/health").status is None  # other paths untouched
    assert runs[0] == runs[1]  # seeded: reproducible
    assert runs[0][:2] == [503, 503]
    assert 502 in runs[0][2:] and None in runs[0][2:]
    assert (
        FaultInjector(FaultPlan(delay=0.1, delay_count=1)).before("/api/sync/readings/batch").delay
        == 0.1
    )
    once = FaultInjector(FaultPlan(delay=0.1, delay_count=1))
    assert [once.before("/api/sync/readings/batch").delay for _ in range(2)] == [0.1, 0.0]
    assert once.injected == {"delay": 1}


def test_reject_rule_matching() -> None:
    assert RejectRule("meter_id", "13").matches({"meter_id": 13})
    assert RejectRule("power", "1.5").matches({"power": 1.5})
    assert RejectRule("power", "null").matches({"power": None})
    assert not RejectRule("power", "null").matches({})
    assert not RejectRule("meter_id", "13").matches({"meter_id": 14})
    assert RejectRule("meter_reading_id", "abc").matches({"meter_reading_id": "abc"})


# -- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"meter_reading_id": "123"}, "UUID"),
        ({"meter_reading_id": None}, "UUID"),
        ({"created_at": "2025-03-01T12:00:00"}, "UTC offset"),
        ({"created_at": "2025-02-30T12:00:00Z"}, "not a valid timestamp"),
        ({"created_at": 1700000000}, "ISO 8601"),
        ({"meter_id": "1"}, "meter_id"),
        ({"meter_id": 1.0}, "meter_id"),
        ({"meter_id": True}, "meter_id"),
        ({"meter_id": 2**63}, "meter_id"),
        ({"meter_element_id": "x"}, "meter_element_id"),
        ({"tenant_id": 6}, "tenant_id"),
        ({"power": {"a": 1}}, "'power'"),
        ({"power": [1]}, "not list"),
        ({"power": float("inf")}, "out of range"),
    ],
)
def test_bad_readings(overrides: dict[str, Any], message: str) -> None:
    error = validate_reading(reading(**overrides), tenant_id=5)
    assert error is not None and message in error


def test_good_readings() -> None:
    assert validate_reading(reading(), 5) is None
    assert validate_reading(reading(tenant_id=5, meter_element_id=-3, x=None, y=2), 5) is None
    assert validate_reading(reading(created_at="2025-03-01 12:00:00.5+02:00"), 5) is None
    # Extra columns of any SPEC §2 type: text/date/timestamp/uuid as strings, booleans.
    extra = {"note": 'a "b"', "day": "2025-01-02", "flag": False, "big": 10**40}
    assert validate_reading(reading(**extra), 5) is None
    assert validate_reading(reading(**extra), 5, finite=True) is None
    assert validate_reading(["not", "a", "dict"], 5) == "reading is not a JSON object"


# -- the HTTP contract --------------------------------------------------------------------


def test_numbers_keep_their_text_and_shape_round_trips(reference_server: ServerHandle) -> None:
    tenant_id, key = reference_server.new_tenant()
    rid = str(uuid.uuid4())
    raw = (
        b'{"readings":[{"meter_reading_id":"' + rid.encode() + b'","created_at":'
        b'"2025-03-01T13:00:00.123456+01:00","meter_id":9223372036854775807,'
        b'"meter_element_id":-1,"active_energy":12.5000,"power":-0.0010,"current":null,'
        b'"tenant_id":' + str(tenant_id).encode() + b"}]}"
    )
    answer = post(reference_server, key, raw)
    assert answer.json() == {"success": True, "inserted": 1, "duplicates": 0, "rejected": []}
    page = get(reference_server, key, "limit=10")
    # The measurements come back as the text that went up (compact here), digits and all.
    assert b'"active_energy":12.5000' in page.content
    assert b'"power":-0.0010' in page.content
    (got,) = page.json()["readings"]
    assert got == {
        "meter_reading_id": rid,
        "created_at": "2025-03-01T12:00:00.123456Z",
        "meter_id": 2**63 - 1,
        "meter_element_id": -1,
        "active_energy": 12.5,
        "power": -0.001,
        "current": None,
        "tenant_id": tenant_id,
    }
    assert page.json()["next_cursor"] is not None  # resume point after the last reading


def test_repeated_id_in_one_batch_counts_as_duplicate(reference_server: ServerHandle) -> None:
    tenant_id, key = reference_server.new_tenant()
    one = reading()
    answer = post(reference_server, key, orjson.dumps({"readings": [one, {**one, "power": 9}]}))
    assert (answer.json()["inserted"], answer.json()["duplicates"]) == (1, 1)
    assert reference_server.rows(tenant_id) == 1


@pytest.mark.parametrize(
    "content",
    [b"{", b"[]", b'{"readings":5}', b'{"rows":[]}', b'{"readings":[{"power":"\\u0000"}]}'],
)
def test_bad_bodies_are_400(reference_server: ServerHandle, content: bytes) -> None:
    _, key = reference_server.new_tenant()
    answer = post(reference_server, key, content)
    if content.startswith(b'{"readings":[{'):
        # A bad reading is rejected on its own, not the batch.
        assert answer.status_code == 200 and len(answer.json()["rejected"]) == 1
    else:
        assert answer.status_code == 400
        assert answer.json()["success"] is False


def test_non_object_readings_rejected_individually(reference_server: ServerHandle) -> None:
    _, key = reference_server.new_tenant()
    answer = post(reference_server, key, b'{"readings":[1,"x",null,{}]}').json()
    assert [r["meter_reading_id"] for r in answer["rejected"]] == [
        "<reading 1>",
        "<reading 2>",
        "<reading 3>",
        "<reading 4>",
    ]


def test_nul_escapes_are_kept_as_text(reference_server: ServerHandle) -> None:
    # Readings are stored as JSON text (not jsonb, which refuses \u0000): a NUL escape in a
    # key, or elsewhere in the body, is no reason to refuse a good reading.
    _, key = reference_server.new_tenant()
    good = reading(**{"x\u0000": 7.2500})
    raw = orjson.dumps({"readings": [good], "note": "\u0000"}).replace(b"7.25", b"7.2500")
    answer = post(reference_server, key, raw)
    assert answer.json() == {"success": True, "inserted": 1, "duplicates": 0, "rejected": []}
    page = get(reference_server, key, "limit=10")
    assert b'"x\\u0000":7.2500' in page.content
    assert page.json()["readings"][0]["x\u0000"] == 7.25


_NUMBERS = b'"a":12.5000,"b":-0.0010,"c":99999999999999.9999,"d":null,"e":1E+2'


@pytest.mark.parametrize(
    "shape",
    [
        "canonical",  # identity members first, compact: the fast path
        "pretty",  # whitespace between tokens
        "reordered",  # identity members after the measurements
        "escaped_key",  # a key with an escape in it
        "brace_in_string",  # a rejected reading with "}" inside a string
        "nested",  # a rejected reading holding an object
        "extra_key",  # another top-level key after the readings
    ],
)
def test_exact_number_text_whatever_the_body_shape(
    reference_server: ServerHandle, shape: str
) -> None:
    tenant_id, key = reference_server.new_tenant()
    rid = str(uuid.uuid4())
    ident = (
        b'"meter_reading_id":"' + rid.encode() + b'","created_at":"2025-03-01T12:00:00Z",'
        b'"meter_id":5,"meter_element_id":null'
    )
    good = b"{" + ident + b"," + _NUMBERS + b"}"
    others: list[bytes] = []
    tail = b""
    if shape == "pretty":
        good = b'{\n  "meter_reading_id" : "' + rid.encode() + b'",\t"created_at": '
        good += b'"2025-03-01T12:00:00Z", "meter_id": 5, "meter_element_id": null, '
        good += _NUMBERS.replace(b",", b" ,\r\n ") + b"\n}"
    elif shape == "reordered":
        good = b"{" + _NUMBERS + b"," + ident + b',"tenant_id":' + str(tenant_id).encode() + b"}"
    elif shape == "escaped_key":
        good = b"{" + ident + b',"f\\u00e9e":1.10,' + _NUMBERS + b"}"
    elif shape == "brace_in_string":
        others = [b'{"meter_reading_id":"},{","power":1}']
    elif shape == "nested":
        others = [b'{"meter_reading_id":"' + str(uuid.uuid4()).encode() + b'","x":{"y":1}}']
    elif shape == "extra_key":
        tail = b',"note":{"z":2}'
    raw = b'{"readings":[' + b",".join([*others, good]) + b"]" + tail + b"}"
    if shape == "pretty":
        raw = b'{ "readings" : [ ' + good + b" ] }\n"
    answer = post(reference_server, key, raw).json()
    assert (answer["inserted"], answer["duplicates"], len(answer["rejected"])) == (
        1,
        0,
        len(others),
    )
    page = get(reference_server, key, "limit=10")
    for text in (b'"a":12.5000', b'"b":-0.0010', b'"c":99999999999999.9999', b'"e":1E+2'):
        assert text in page.content.replace(b" ", b"")
    (got,) = page.json()["readings"]
    assert got["meter_reading_id"] == rid and got["created_at"] == "2025-03-01T12:00:00.000000Z"
    assert (got["meter_id"], got["meter_element_id"], got["tenant_id"]) == (5, None, tenant_id)
    assert (got["a"], got["d"], got["e"]) == (12.5, None, 100.0)
    assert got.get("f\u00e9e", 1.1) == 1.1
    expected_keys = {"meter_reading_id", "created_at", "meter_id", "meter_element_id"}
    expected_keys |= {"tenant_id", "a", "b", "c", "d", "e"}
    if shape == "escaped_key":
        expected_keys.add("f\u00e9e")
    assert set(got) == expected_keys


def test_auth_and_health(reference_server: ServerHandle) -> None:
    assert HTTP.get(f"{reference_server.base_url}/health").json() == {
        "status": "ok",
        "contract": "metersync",
        "contract_version": 2,
        "idempotent": True,
        "download": True,
        "max_body_bytes": 64 * 1024 * 1024,
        "site_filter": True,
    }
    assert post(reference_server, None, b'{"readings":[]}').status_code == 401
    assert post(reference_server, "nobody", b'{"readings":[]}').status_code == 401
    assert get(reference_server, None, "limit=1").status_code == 401


def test_gzip_bodies(reference_server: ServerHandle) -> None:
    tenant_id, key = reference_server.new_tenant()
    content = gzip.compress(orjson.dumps({"readings": [reading(), reading()]}))
    answer = post(reference_server, key, content, **{"Content-Encoding": "gzip"})
    assert answer.json()["inserted"] == 2
    broken = post(reference_server, key, b"not gzip at all", **{"Content-Encoding": "gzip"})
    assert broken.status_code == 400
    assert reference_server.rows(tenant_id) == 2


@pytest.mark.parametrize(
    "query",
    [
        "",
        "limit=0",
        "limit=10001",
        "limit=abc",
        "limit=-1",
        "limit=5&after=%%%",
        "limit=5&after=eHl6",
    ],
)
def test_download_query_validation(reference_server: ServerHandle, query: str) -> None:
    _, key = reference_server.new_tenant()
    answer = get(reference_server, key, query)
    assert answer.status_code == 400


def test_cursor_round_trip() -> None:
    for seq in (0, 1, 2**40):
        assert decode_cursor(encode_cursor(seq)) == seq
    for bad in ("", "!!", "c2VxOg", "c2VxOi0x", "Zm9vOjE"):
        with pytest.raises(ValueError):
            decode_cursor(bad)


def test_tenant_key_replacement_and_hashing(reference_server: ServerHandle) -> None:
    reference_server.register_tenant(77, "first-secret-key", "seventy-seven")
    assert get(reference_server, "first-secret-key", "limit=1").status_code == 200
    reference_server.register_tenant(77, "second-secret-key", "seventy-seven")
    assert get(reference_server, "first-secret-key", "limit=1").status_code == 401
    assert get(reference_server, "second-secret-key", "limit=1").status_code == 200
    with pytest.raises(ClientSystemError, match="409"):
        reference_server.register_tenant(78, "second-secret-key")
    with psycopg.connect(reference_server.dsn) as conn:
        stored = conn.execute("SELECT tenant_id, api_key_sha256 FROM cs_tenant").fetchall()
    assert [t for t, _ in stored] == [77]
    assert "second-secret-key" not in stored[0][1] and len(stored[0][1]) == 64


@pytest.mark.parametrize(
    "payload",
    [
        {"tenant_id": "1", "api_key": "k"},
        {"tenant_id": 1, "api_key": ""},
        {"tenant_id": 1, "api_key": "k", "name": 3},
    ],
)
def test_admin_tenant_validation(reference_server: ServerHandle, payload: dict[str, Any]) -> None:
    answer = HTTP.post(
        f"{reference_server.admin_url}/tenants",
        content=orjson.dumps(payload),
        headers=reference_server.admin_headers,
    )
    assert answer.status_code == 400


def test_admin_faults_endpoint_validates(reference_server: ServerHandle) -> None:
    for bad in ({"spec": "nope=1"}, {"fail_count": -2}, {"unknown": 1}, [1]):
        answer = HTTP.post(
            f"{reference_server.admin_url}/faults",
            content=orjson.dumps(bad),
            headers=reference_server.admin_headers,
        )
        assert answer.status_code == 400, bad
    plan = reference_server.set_faults(FaultPlan(fail_count=1, fail_status=500))
    assert plan["fail_count"] == 1
    assert reference_server.stats()["fault_plan"]["fail_count"] == 1
    reference_server.clear_faults()
    assert reference_server.stats()["fault_plan"] == FaultPlan().to_dict()


def test_admin_load_bypasses_reject_rules(reference_server: ServerHandle) -> None:
    tenant_id, _ = reference_server.new_tenant()
    reference_server.set_faults("reject=meter_id:1")
    answer = reference_server.load_readings(tenant_id, [reading(), reading(meter_id="bad")])
    assert answer["inserted"] == 1 and len(answer["rejected"]) == 1
    assert reference_server.stats()["faults_injected"] == {}


def test_stats_and_reset(reference_server: ServerHandle) -> None:
    tenant_id, key = reference_server.new_tenant()
    reference_server.set_faults("fail=1:500")
    assert post(reference_server, key, b'{"readings":[]}').status_code == 500
    post(reference_server, key, orjson.dumps({"readings": [reading(), {"x": 1}]}))
    stats = reference_server.stats()
    assert stats["requests_per_status"] == {"500": 1, "200": 1}
    assert stats["faults_injected"] == {"fail": 1}
    assert (stats["batches_received"], stats["readings_received"], stats["rejected"]) == (1, 2, 1)
    assert (stats["total_rows"], stats["rows_per_tenant"]) == (1, {str(tenant_id): 1})
    reference_server.admin.reset()
    stats = reference_server.stats()
    assert (stats["total_rows"], stats["requests"], stats["requests_per_status"]) == (0, 0, {})
    assert post(reference_server, key, b'{"readings":[]}').status_code == 401  # tenants gone


def test_download_page_faults(reference_server: ServerHandle) -> None:
    tenant_id, key = reference_server.new_tenant()
    reference_server.load_readings(tenant_id, [reading() for _ in range(5)])
    reference_server.set_faults("oversize_page=1,malformed_page=1")
    oversize = get(reference_server, key, "limit=2").json()
    assert len(oversize["readings"]) == 3 and oversize["next_cursor"] is not None
    assert oversize["readings"][0]["meter_reading_id"] == "not-a-uuid"
    normal = get(reference_server, key, "limit=2").json()
    assert len(normal["readings"]) == 2
    # Oversize only when more exist: the last page is never padded.
    reference_server.set_faults("oversize_page=1")
    assert len(get(reference_server, key, "limit=5").json()["readings"]) == 5
    assert reference_server.stats()["faults_injected"] == {"oversize_page": 1, "malformed_page": 1}


async def test_concurrent_uploads_store_each_reading_once(reference_server: ServerHandle) -> None:
    tenant_id, key = reference_server.new_tenant()
    other_id, other_key = reference_server.new_tenant()
    batch = orjson.dumps({"readings": [reading() for _ in range(200)]})
    async with httpx.AsyncClient(base_url=reference_server.base_url) as http:

        async def send(api_key: str) -> dict[str, Any]:
            answer = await http.post(
                "/sync/readings/batch", content=batch, headers={"X-API-Key": api_key}
            )
            return answer.json()

        answers = await asyncio.gather(
            *[send(key) for _ in range(6)], *[send(other_key) for _ in range(2)]
        )
    for a in answers:
        assert a["inserted"] + a["duplicates"] + len(a["rejected"]) == 200
    mine, theirs = answers[:6], answers[6:]
    stored_mine = sum(a["inserted"] for a in mine)
    stored_theirs = sum(a["inserted"] for a in theirs)
    assert stored_mine + stored_theirs == 200
    assert reference_server.rows(tenant_id) == stored_mine
    assert reference_server.rows(other_id) == stored_theirs
    # Every id belongs to one tenant; the other tenant's uploads saw it rejected or duplicate.
    assert all(len(a["rejected"]) == 200 - a["inserted"] - a["duplicates"] for a in answers)


# -- running the server -------------------------------------------------------------------


@pytest.fixture
async def small_server(reference_server: ServerHandle) -> AsyncIterator[ReferenceServer]:
    """A second server on the same database, in this test's loop, with small limits."""
    server = ReferenceServer(
        reference_server.dsn, max_batch=3, max_body_bytes=2000, admin_token="adm-token"
    )
    async with server:
        yield server
    assert not server.running


async def test_in_loop_server_limits_and_admin_token(small_server: ReferenceServer) -> None:
    assert small_server.base_url == f"http://127.0.0.1:{small_server.port}/api"
    assert small_server.port > 0
    async with httpx.AsyncClient() as http:
        denied = await http.post(f"{small_server.admin_url}/tenants", content=b"{}")
        assert denied.status_code == 401
        assert (await http.get(f"{small_server.admin_url}/stats")).status_code == 401
        ok = await http.post(
            f"{small_server.admin_url}/tenants",
            content=orjson.dumps({"tenant_id": 5, "api_key": "small-key"}),
            headers={"X-Admin-Token": "adm-token"},
        )
        assert ok.status_code == 200
        url, headers = f"{small_server.base_url}/sync/readings/batch", {"X-API-Key": "small-key"}
        four = orjson.dumps({"readings": [reading() for _ in range(4)]})
        assert (await http.post(url, content=four, headers=headers)).status_code == 413
        big = orjson.dumps({"readings": [reading(pad=1.0, **{f"f{i}": i for i in range(200)})]})
        too_big = await http.post(url, content=big, headers=headers)
        assert too_big.status_code == 413 and "2000 bytes" in too_big.json()["error"]
        # The byte limit counts the decoded body: gzip does not get around it.
        zipped = await http.post(
            url, content=gzip.compress(big), headers={**headers, "Content-Encoding": "gzip"}
        )
        assert len(gzip.compress(big)) < 2000 and zipped.status_code == 413
        three = orjson.dumps({"readings": [reading() for _ in range(3)]})
        assert (await http.post(url, content=three, headers=headers)).json()["inserted"] == 3


async def test_in_loop_set_faults(small_server: ReferenceServer) -> None:
    small_server.set_faults(FaultPlan(fail_count=1, fail_status=502, path="/api/health"))
    async with httpx.AsyncClient(base_url=small_server.base_url) as http:
        assert (await http.get("/health")).status_code == 502
        health = await http.get("/health")
        assert health.status_code == 200
        # The advertised body limit is this server's own.
        assert health.json()["max_body_bytes"] == 2000


def test_server_thread_reports_start_failure(reference_server: ServerHandle) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        thread = ServerThread(reference_server.dsn, port=busy.getsockname()[1])
        with pytest.raises(OSError):
            thread.start()
    thread.stop()  # nothing running: a no-op


def test_server_thread_with_faults_and_admin_client(reference_server: ServerHandle) -> None:
    with ServerThread(
        reference_server.dsn, faults=FaultPlan.from_spec("fail=1:503,path=/api/health")
    ) as thread:
        assert HTTP.get(f"{thread.base_url}/health").status_code == 503
        with AdminClient(thread.admin_url, thread.admin_token) as admin:
            assert admin.stats()["faults_injected"] == {"fail": 1}
        assert HTTP.get(f"{thread.base_url}/health").status_code == 200
    with pytest.raises(httpx.ConnectError):
        HTTP.get(f"{thread.base_url}/health")


async def test_serve_forever_runs_until_cancelled(reference_server: ServerHandle) -> None:
    started: list[ReferenceServer] = []
    task = asyncio.create_task(serve_forever(reference_server.dsn, port=0, on_ready=started.append))
    for _ in range(200):
        if started:
            break
        await asyncio.sleep(0.02)
    (server,) = started
    async with httpx.AsyncClient() as http:
        health = (await http.get(f"{server.base_url}/health")).json()
        assert (health["status"], health["contract"]) == ("ok", "metersync")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not server.running
        with pytest.raises(httpx.ConnectError):
            await http.get(f"{server.base_url}/health")


_KINDS = st.sampled_from(["new", "repeat", "stored", "foreign", "bad_id", "bad_field"])


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(kinds=st.lists(_KINDS, max_size=30))
def test_counts_always_add_up(reference_server: ServerHandle, kinds: list[str]) -> None:
    """Any mix of new, repeated, stored, foreign and invalid readings: every reading is
    accounted for once, and the server holds each valid id once, for its owner only."""
    tenant_id, key = reference_server.new_tenant()
    foreign_id, _ = reference_server.new_tenant()
    stored, foreign = reading(), reading()
    reference_server.load_readings(tenant_id, [stored])
    reference_server.load_readings(foreign_id, [foreign])
    batch: list[dict[str, Any]] = []
    expect_inserted = expect_duplicates = 0
    expect_rejected: list[str] = []
    for i, kind in enumerate(kinds):
        news = [r for r, k in zip(batch, kinds, strict=False) if k == "new"]
        if kind == "repeat" and news:
            batch.append(news[0])
            expect_duplicates += 1
        elif kind == "stored":
            batch.append(stored)
            expect_duplicates += 1
        elif kind == "foreign":
            # Its first copy is rejected by id; later copies by position (never an id twice).
            first = foreign["meter_reading_id"] not in expect_rejected
            batch.append({**foreign, "meter_id": 99})
            expect_rejected.append(foreign["meter_reading_id"] if first else f"<reading {i + 1}>")
        elif kind == "bad_id":
            batch.append(reading(meter_reading_id=f"bad-{i}"))
            expect_rejected.append(f"bad-{i}")
        elif kind == "bad_field":
            bad = reading(power={"nested": "object"})
            batch.append(bad)
            expect_rejected.append(bad["meter_reading_id"])
        else:  # "new", or "repeat" with nothing to repeat yet
            kinds[i] = "new"
            batch.append(reading())
            expect_inserted += 1
    answer = post(reference_server, key, orjson.dumps({"readings": batch})).json()
    rejected = [r["meter_reading_id"] for r in answer["rejected"]]
    assert answer["inserted"] + answer["duplicates"] + len(rejected) == len(batch)
    assert (answer["inserted"], answer["duplicates"]) == (expect_inserted, expect_duplicates)
    assert sorted(rejected) == sorted(expect_rejected)
    per_tenant = reference_server.stats()["rows_per_tenant"]
    assert (per_tenant[str(tenant_id)], per_tenant[str(foreign_id)]) == (1 + expect_inserted, 1)


# -- site filter (issue 12) ----------------------------------------------------------------


def test_downloads_can_exclude_what_a_site_uploaded(reference_server: ServerHandle) -> None:
    tenant_id, key = reference_server.new_tenant()
    from_a = [reading() for _ in range(3)]
    from_b = [reading() for _ in range(2)]
    unsited = [reading()]
    assert post(reference_server, key, orjson.dumps({"readings": from_a[:2]}), **{
        "X-Metersync-Site": "site-a"
    }).json()["inserted"] == 2  # fmt: skip
    reference_server.load_readings(tenant_id, unsited)
    # Site B sends one of A's readings again: it stays A's (the first upload stored it).
    assert post(reference_server, key, orjson.dumps({"readings": [*from_b, from_a[0]]}), **{
        "X-Metersync-Site": "site-b"
    }).json()["duplicates"] == 1  # fmt: skip
    post(reference_server, key, orjson.dumps({"readings": from_a[2:]}), **{
        "X-Metersync-Site": "site-a"
    })  # fmt: skip
    ids = lambda rs: [r["meter_reading_id"] for r in rs]  # noqa: E731

    everything = get(reference_server, key, "limit=100").json()["readings"]
    assert ids(everything) == ids(from_a[:2] + unsited + from_b + from_a[2:])
    # Site A pages through what others uploaded, two at a time.
    seen: list[dict[str, Any]] = []
    cursor = ""
    for _ in range(5):
        query = "limit=2&exclude_site=site-a" + (f"&after={cursor}" if cursor else "")
        page = get(reference_server, key, query).json()
        seen += page["readings"]
        if page["next_cursor"] is None:
            break
        cursor = page["next_cursor"]
        if len(page["readings"]) < 2:
            break
    assert ids(seen) == ids(unsited + from_b)
    # The last cursor is past A's trailing reading: nothing comes again.
    after = get(reference_server, key, f"limit=2&exclude_site=site-a&after={cursor}").json()
    assert after == {"readings": [], "next_cursor": None}
    assert decode_cursor(cursor) == decode_cursor(
        get(reference_server, key, "limit=100").json()["next_cursor"]
    )
    only_a = get(reference_server, key, "limit=100&exclude_site=site-b").json()["readings"]
    assert ids(only_a) == ids(from_a[:2] + unsited + from_a[2:])
    with psycopg.connect(reference_server.dsn) as conn:
        sites = conn.execute(
            "SELECT site_id, count(*) FROM cs_meter_reading WHERE tenant_id = %s"
            " GROUP BY site_id ORDER BY site_id",
            (tenant_id,),
        ).fetchall()
    assert sites == [("site-a", 3), ("site-b", 2), (None, 1)]


def test_site_ids_are_checked(reference_server: ServerHandle) -> None:
    _, key = reference_server.new_tenant()
    assert get(reference_server, key, "limit=1&exclude_site=").status_code == 400
    too_long = post(reference_server, key, orjson.dumps({"readings": [reading()]}), **{
        "X-Metersync-Site": "x" * 201
    })  # fmt: skip
    assert too_long.status_code == 400 and "X-Metersync-Site" in too_long.json()["error"]


# -- the admin API is never open (issue 11, item 3) ---------------------------------------


@pytest.mark.parametrize("profile", ["metersync", "metertrack", "sink"])
def test_admin_api_requires_the_generated_token(
    reference_server: ServerHandle, profile: str
) -> None:
    with ServerThread(reference_server.dsn, host="0.0.0.0", profile=profile) as thread:
        token = thread.admin_token
        assert thread.server.admin_token_generated and len(token) >= 32
        url = f"{thread.admin_url}/stats"
        assert HTTP.get(url).status_code == 401
        assert HTTP.get(url, headers={"X-Admin-Token": token + "x"}).status_code == 401
        reset = HTTP.post(f"{thread.admin_url}/reset", headers={"X-Admin-Token": "wrong"})
        assert reset.status_code == 401
        assert HTTP.get(url, headers={"X-Admin-Token": token}).status_code == 200
        with AdminClient(thread.admin_url, token) as admin:
            admin.register_tenant(1, f"key-{profile}")
        with (
            AdminClient(thread.admin_url) as anonymous,
            pytest.raises(ClientSystemError, match="401"),
        ):
            anonymous.stats()
    # A token given is the one required (and not reported as generated).
    with ServerThread(reference_server.dsn, admin_token="chosen-token") as thread:
        assert not thread.server.admin_token_generated and thread.admin_token == "chosen-token"
        assert (
            HTTP.get(
                f"{thread.admin_url}/stats", headers={"X-Admin-Token": "chosen-token"}
            ).status_code
            == 200
        )


def test_admin_refusal_without_a_configured_token() -> None:
    from metersync.server.admin_auth import admin_refusal

    assert admin_refusal(None, "anything") == (
        "the admin API is disabled: this server has no admin token"
    )
    assert admin_refusal("t", None) is not None and admin_refusal("t", "u") is not None
    assert admin_refusal("t", "t") is None

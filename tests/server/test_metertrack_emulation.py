"""The MeterTrack emulation behaves as the original Client System does (issue 10, item 7).

One test (or more) per bullet of "The original Client System, as it behaves".
"""

from __future__ import annotations

import gzip
import re
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import orjson
import psycopg
import pytest

from fix_server import ServerHandle
from metersync.errors import ConfigError
from metersync.server import FaultPlan, ServerThread
from metersync.server.metertrack import MAX_BODY_BYTES
from metersync.server.metertrack_rules import js_number_text, validation_errors

HTTP = httpx.Client(timeout=30.0)
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture(scope="module", autouse=True)
def _close_http() -> Iterator[None]:
    yield
    HTTP.close()


def reading(**overrides: Any) -> dict[str, Any]:
    """A reading as metersync's metertrack profile sends it (nulls omitted, numeric strings)."""
    base: dict[str, Any] = {
        "meter_reading_id": str(uuid.uuid4()),
        "created_at": "2025-03-01T12:00:00.000000Z",
        "meter_id": 7,
        "power": "1.5000",
    }
    return {**base, **overrides}


def post(server: ServerHandle, key: str | None, body: Any, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    headers.setdefault("Content-Type", "application/json")
    if key is not None:
        headers["X-API-Key"] = key
    return HTTP.post(f"{server.base_url}/sync/readings/batch", content=content, headers=headers)


def db_rows(server: ServerHandle, tenant_id: int) -> list[tuple[Any, ...]]:
    with psycopg.connect(server.dsn) as conn:
        return conn.execute(
            "SELECT meter_reading_id, created_at, meter_id, power, voltage_a_b,"
            " sent_meter_reading_id FROM mt_meter_reading WHERE tenant_id = %s"
            " ORDER BY created_at, meter_reading_id",
            (tenant_id,),
        ).fetchall()


# -- auth ----------------------------------------------------------------------------------


def test_missing_unknown_and_inactive_keys_are_401(metertrack_server: ServerHandle) -> None:
    body = {"readings": [reading()]}
    missing = post(metertrack_server, None, body)
    assert (missing.status_code, missing.json()) == (
        401,
        {"success": False, "message": "API key required"},
    )
    unknown = post(metertrack_server, "nobody", body)
    assert (unknown.status_code, unknown.json()) == (
        401,
        {"success": False, "message": "Invalid API key"},
    )
    metertrack_server.admin.register_tenant(5, "sleeping-key", "asleep", active=False)
    inactive = post(metertrack_server, "sleeping-key", body)
    assert (inactive.status_code, inactive.json()["message"]) == (401, "Invalid API key")
    assert metertrack_server.stats()["total_rows"] == 0


# -- body parser ---------------------------------------------------------------------------


def _body_of_size(size: int) -> bytes:
    head = orjson.dumps({"readings": [reading()]})
    return head[:-1] + b" " * (size - len(head)) + b"}"


def test_body_limit_is_10_mib_after_gzip_and_over_it_is_500(
    metertrack_server: ServerHandle,
) -> None:
    tenant_id, key = metertrack_server.new_tenant()
    exact = _body_of_size(MAX_BODY_BYTES)
    assert len(exact) == 10_485_760
    assert post(metertrack_server, key, exact).json()["inserted"] == 1
    over = post(metertrack_server, key, _body_of_size(MAX_BODY_BYTES + 1))
    assert over.status_code == 500
    doc = over.json()
    assert set(doc) == {"success", "message", "timestamp"}
    assert (doc["success"], doc["message"]) == (False, "Internal server error")
    assert ISO_MS.match(doc["timestamp"])
    # gzip does not get around it: the limit counts the inflated body.
    zipped = gzip.compress(_body_of_size(MAX_BODY_BYTES + 1))
    assert len(zipped) < 100_000
    answer = post(metertrack_server, key, zipped, **{"Content-Encoding": "gzip"})
    assert answer.status_code == 500
    assert metertrack_server.rows(tenant_id) == 1


def test_not_json_is_500_and_other_content_types_have_no_readings(
    metertrack_server: ServerHandle,
) -> None:
    _, key = metertrack_server.new_tenant()
    broken = post(metertrack_server, key, b'{"readings": [')
    assert (broken.status_code, broken.json()["message"]) == (500, "Internal server error")
    plain = post(
        metertrack_server,
        key,
        orjson.dumps({"readings": [reading()]}),
        **{"Content-Type": "text/plain"},
    )
    assert (plain.status_code, plain.json()) == (
        400,
        {"success": False, "message": "No readings provided"},
    )


# -- validation ----------------------------------------------------------------------------


def test_null_fails_validation_with_the_field_path_and_nothing_is_stored(
    metertrack_server: ServerHandle,
) -> None:
    tenant_id, key = metertrack_server.new_tenant()
    batch = [reading(), reading(), reading(), reading(voltage_thd=None, power=True)]
    answer = post(metertrack_server, key, {"readings": batch})
    assert answer.status_code == 400
    assert answer.json() == {
        "success": False,
        "message": "Validation error",
        "errors": [
            {
                "type": "field",
                "msg": "power must be numeric",
                "path": "readings[3].power",
                "location": "body",
                "value": True,
            },
            {
                "type": "field",
                "msg": "voltage_thd must be numeric",
                "path": "readings[3].voltage_thd",
                "location": "body",
                "value": None,
            },
        ],
    }
    assert metertrack_server.rows(tenant_id) == 0  # the whole batch, not just reading 3


def test_meter_id_required_and_numeric() -> None:
    errors = validation_errors(
        [{"power": "1"}, {"meter_id": None}, {"meter_id": "12a"}, {"meter_id": "13"}, 5]
    )
    assert [(e["path"], e["msg"], e.get("value", "<absent>")) for e in errors] == [
        ("readings[0].meter_id", "meter_id is required", "<absent>"),
        ("readings[1].meter_id", "meter_id is required", None),
        ("readings[2].meter_id", "meter_id must be numeric", "12a"),
        ("readings[4].meter_id", "meter_id is required", "<absent>"),
    ]


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("12.5000", True),
        ("-3", True),
        (".5", True),
        ("+7", True),
        (12.5, True),
        (0, True),
        (None, False),
        ("", False),
        ("5.", False),
        ("1e5", False),
        (1e21, False),  # String(1e21) is "1e+21"
        (1e-7, False),  # "1e-7"
        (True, False),
        ({}, False),
        ("NaN", False),
        (" 1", False),
    ],
)
def test_is_numeric_sees_the_javascript_string(value: Any, ok: bool) -> None:
    errors = validation_errors([{"meter_id": 1, "meter_element_id": value}])
    assert (errors == []) is ok


def test_javascript_number_strings() -> None:
    cases = {
        12.5: "12.5",
        100.0: "100",
        1e21: "1e+21",
        1e20: "100000000000000000000",
        1.5e-7: "1.5e-7",
        0.000001: "0.000001",
        -0.0: "0",
        123456789012345678.0: "123456789012345680",
        12345678901234.5678: "12345678901234.568",
    }
    assert {x: js_number_text(x) for x in cases} == cases


def test_empty_list_is_400_no_readings(metertrack_server: ServerHandle) -> None:
    _, key = metertrack_server.new_tenant()
    for body in ({"readings": []}, {}, {"readings": {"a": 1}}):
        answer = post(metertrack_server, key, body)
        assert (answer.status_code, answer.json()) == (
            400,
            {"success": False, "message": "No readings provided"},
        )


# -- storage -------------------------------------------------------------------------------


def test_own_ids_arrival_time_and_no_deduplication(metertrack_server: ServerHandle) -> None:
    tenant_id, key = metertrack_server.new_tenant()
    batch = [reading(created_at="2001-01-01T00:00:00Z"), reading()]
    before = time.time()
    first = post(metertrack_server, key, {"readings": batch}, **{"Idempotency-Key": "same"})
    second = post(metertrack_server, key, {"readings": batch}, **{"Idempotency-Key": "same"})
    for answer in (first, second):
        assert answer.status_code == 200
        assert answer.json() == {
            "success": True,
            "recordsProcessed": 2,
            "message": "Batch upload completed: 2 inserted, 0 skipped",
            "inserted": 2,
            "skipped": 0,
            "errors": [],
        }
    rows = db_rows(metertrack_server, tenant_id)
    assert len(rows) == 4  # a duplicate POST stores two copies
    sent = {str(r["meter_reading_id"]) for r in batch}
    assert {str(r[0]) for r in rows}.isdisjoint(sent)  # its own ids
    assert len({r[0] for r in rows}) == 4
    assert all(r[1].timestamp() >= before - 1 for r in rows)  # arrival time, not 2001
    assert {r[5] for r in rows} == sent
    # The verification counts: 4 rows, 2 distinct sent ids, 2 duplicate copies.
    stats = metertrack_server.stats()
    assert (stats["total_rows"], stats["distinct_sent_ids"], stats["duplicate_copies"]) == (
        4,
        2,
        2,
    )
    assert stats["tenants"][str(tenant_id)]["duplicate_copies"] == 2
    assert metertrack_server.copies(tenant_id, min_copies=2) == dict.fromkeys(sent, 2)
    one = batch[0]["meter_reading_id"]
    assert metertrack_server.copies(ids=[one, "never-sent"]) == {one: 2}


def test_json_numbers_are_float64_and_numeric_strings_exact(
    metertrack_server: ServerHandle,
) -> None:
    tenant_id, key = metertrack_server.new_tenant()
    eighteen = "12345678901234.5678"  # 18 significant digits: fits numeric(18,4)
    body = (
        b'{"readings":[{"meter_id":1,"power":"' + eighteen.encode() + b'","voltage_a_b":'
        + eighteen.encode() + b"}]}"
    )  # fmt: skip
    assert post(metertrack_server, key, body).json()["inserted"] == 1
    ((_, _, meter, power, voltage, sent),) = db_rows(metertrack_server, tenant_id)
    assert (meter, sent) == (1, None)
    assert power == Decimal(eighteen)  # the string: exact
    assert voltage == Decimal("12345678901234.5680") != Decimal(eighteen)  # the number: float64


def test_failed_insert_is_skipped_and_named_by_meter(metertrack_server: ServerHandle) -> None:
    tenant_id, key = metertrack_server.new_tenant()
    # 1.5 passes isNumeric but a bigint refuses it: the INSERT fails, the rest goes in.
    batch = [reading(), reading(meter_id=1.5, meter_element_id=3), reading()]
    answer = post(metertrack_server, key, {"readings": batch})
    assert answer.status_code == 200
    doc = answer.json()
    assert (doc["success"], doc["recordsProcessed"], doc["inserted"], doc["skipped"]) == (
        True,
        2,
        2,
        1,
    )
    assert doc["message"] == "Batch upload completed: 2 inserted, 1 skipped"
    (error,) = doc["errors"]
    assert error["meter_id"] == 1.5 and error["data_point"] == 3
    assert error["code"] == "22P02" and "bigint" in error["error"]
    assert "detail" not in error  # node-postgres leaves it undefined
    assert metertrack_server.rows(tenant_id) == 2


def test_transaction_failure_is_500_batch_upload_error_and_stores_nothing(
    metertrack_server: ServerHandle,
) -> None:
    tenant_id, key = metertrack_server.new_tenant()
    # Kill the emulation's connection while it sleeps between two readings of one transaction.
    with ServerThread(metertrack_server.dsn, profile="metertrack", reading_delay_ms=400) as slow:
        url = f"{slow.base_url}/sync/readings/batch"
        with httpx.Client(timeout=30) as http:
            import threading

            def kill() -> None:
                time.sleep(0.6)
                with psycopg.connect(metertrack_server.dsn, autocommit=True) as conn:
                    conn.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                        " AND state LIKE 'idle in transaction%'"
                    )

            killer = threading.Thread(target=kill)
            killer.start()
            answer = http.post(
                url,
                content=orjson.dumps({"readings": [reading(), reading(), reading()]}),
                headers={"X-API-Key": key, "Content-Type": "application/json"},
            )
            killer.join()
    assert answer.status_code == 500
    doc = answer.json()
    assert (doc["success"], doc["recordsProcessed"], doc["message"]) == (
        False,
        0,
        "Batch upload error",
    )
    assert doc["error"]
    assert metertrack_server.rows(tenant_id) == 0


# -- routes and health ---------------------------------------------------------------------


def test_no_download_route_and_health_shape(metertrack_server: ServerHandle) -> None:
    _, key = metertrack_server.new_tenant()
    for path in ("/sync/readings?limit=10", "/nothing/here"):
        answer = HTTP.get(f"{metertrack_server.base_url}{path}", headers={"X-API-Key": key})
        assert (answer.status_code, answer.json()) == (
            404,
            {"success": False, "message": "Route not found"},
        )
    health = HTTP.get(f"{metertrack_server.base_url}/health")
    assert health.status_code == 200
    doc = health.json()
    assert doc["status"] == "OK"
    assert not {"contract", "contract_version", "idempotent", "max_body_bytes"} & set(doc)


# -- faults --------------------------------------------------------------------------------


def test_injected_500_stores_nothing_and_401(metertrack_server: ServerHandle) -> None:
    tenant_id, key = metertrack_server.new_tenant()
    metertrack_server.set_faults("fail=1:500")
    answer = post(metertrack_server, key, {"readings": [reading()]})
    assert answer.status_code == 500 and answer.json()["message"] == "Batch upload error"
    assert answer.json()["recordsProcessed"] == 0
    metertrack_server.set_faults("fail=1:401")
    answer = post(metertrack_server, key, {"readings": [reading()]})
    assert (answer.status_code, answer.json()["message"]) == (401, "Invalid API key")
    assert metertrack_server.rows(tenant_id) == 0
    assert post(metertrack_server, key, {"readings": [reading()]}).json()["inserted"] == 1


def test_injected_reject_skips_the_meter(metertrack_server: ServerHandle) -> None:
    tenant_id, key = metertrack_server.new_tenant()
    metertrack_server.set_faults("reject=meter_id:13")
    batch = [reading(meter_id=13), reading(meter_id=14)]
    answer = post(metertrack_server, key, {"readings": batch})
    doc = answer.json()
    assert (doc["inserted"], doc["skipped"]) == (1, 1)
    (error,) = doc["errors"]
    assert error["meter_id"] == 13 and error["code"] == "23514"
    # Node prints the float64 13 as 13 (JSON.stringify), not 13.0.
    assert b'"meter_id":13,' in answer.content
    assert "meter_id 13" in error["detail"]
    assert metertrack_server.rows(tenant_id) == 1
    assert metertrack_server.stats()["faults_injected"] == {"reject": 1}


def test_delay_after_commit_times_the_client_out_with_the_batch_stored(
    metertrack_server: ServerHandle,
) -> None:
    tenant_id, key = metertrack_server.new_tenant()
    metertrack_server.set_faults("delay=1.0:1")
    with pytest.raises(httpx.ReadTimeout):
        HTTP.post(
            f"{metertrack_server.base_url}/sync/readings/batch",
            content=orjson.dumps({"readings": [reading(), reading()]}),
            headers={"X-API-Key": key, "Content-Type": "application/json"},
            timeout=httpx.Timeout(30, read=0.3),
        )
    assert metertrack_server.rows(tenant_id) == 2  # stored before the reply was due


def test_drop_after_commit(metertrack_server: ServerHandle) -> None:
    tenant_id, key = metertrack_server.new_tenant()
    metertrack_server.set_faults("drop_after_commit=1")
    with pytest.raises(httpx.TransportError):
        post(metertrack_server, key, {"readings": [reading()]})
    assert metertrack_server.rows(tenant_id) == 1
    assert metertrack_server.stats()["faults_injected"] == {"drop_after_commit": 1}


def test_faults_this_profile_cannot_inject_are_refused(metertrack_server: ServerHandle) -> None:
    with pytest.raises(ConfigError, match="metertrack profile: throttle_count"):
        ServerThread(
            metertrack_server.dsn, profile="metertrack", faults=FaultPlan(throttle_count=1)
        )
    answer = HTTP.post(
        f"{metertrack_server.admin_url}/faults",
        content=orjson.dumps({"spec": "legacy=1"}),
        headers=metertrack_server.admin_headers,
    )
    assert answer.status_code == 400 and "legacy" in answer.json()["error"]


def test_reading_delay_sets_the_pace(metertrack_server: ServerHandle) -> None:
    _, key = metertrack_server.new_tenant()
    with ServerThread(metertrack_server.dsn, profile="metertrack", reading_delay_ms=50) as slow:
        started = time.perf_counter()
        answer = HTTP.post(
            f"{slow.base_url}/sync/readings/batch",
            content=orjson.dumps({"readings": [reading() for _ in range(6)]}),
            headers={"X-API-Key": key, "Content-Type": "application/json"},
        )
        elapsed = time.perf_counter() - started
    assert answer.json()["inserted"] == 6
    assert elapsed >= 0.3


def test_database_down_health_degraded_and_500(pg_admin_dsn: str) -> None:
    from fix_pg import create_database, drop_database

    dsn = create_database(pg_admin_dsn, "ms_mt_down")
    with ServerThread(dsn, profile="metertrack") as thread:
        assert HTTP.get(f"{thread.base_url}/health").json()["status"] == "OK"
        drop_database(pg_admin_dsn, dsn)  # disconnects the emulation's sessions
        health = HTTP.get(f"{thread.base_url}/health")
        assert health.status_code == 200 and health.json()["status"] == "Degraded"
        answer = HTTP.post(
            f"{thread.base_url}/sync/readings/batch",
            content=orjson.dumps({"readings": [reading()]}),
            headers={"X-API-Key": "k", "Content-Type": "application/json"},
        )
        assert answer.status_code == 500
        assert answer.json()["message"] == "Internal server error"


def test_numbers_in_replies_are_printed_as_node_prints_them(
    metertrack_server: ServerHandle,
) -> None:
    _, key = metertrack_server.new_tenant()
    body = b'{"readings":[{"meter_id":1,"power":1e21,"current":[2,null]}]}'
    answer = post(metertrack_server, key, body)
    assert answer.status_code == 400
    assert b'"value":1e+21' in answer.content  # JSON.stringify(1e21)
    assert b'"value":[2,null]' in answer.content  # an array fails on its null element

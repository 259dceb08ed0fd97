"""The reference Client System's JSON path fed truncated, corrupted and hostile upload bodies:
always a 4xx (or a 200 with per-reading rejections), never a 5xx or a dead server, and never a
stored reading that was not in the body as a valid reading.
"""

from __future__ import annotations

import gzip
import re
from typing import Any

import httpx
import orjson
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metersync import codec
from metersync.tools.synthetic import reading_batch

TENANT = 61
KEY = "server-input-key-0123456789"
GOOD = b'{"readings":' + codec.json_rows(reading_batch(5, seed=3)) + b"}"
GOOD_IDS = {r["meter_reading_id"] for r in orjson.loads(GOOD)["readings"]}
#: Every id-shaped text the corrupted-body test has sent (its examples share one server).
_SENT_IDS: set[str] = set()
_UUID_TEXT = re.compile(
    rb"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)

HOSTILE = [
    b"",
    b"{",
    b"null",
    b"[]",
    b'{"readings": null}',
    b'{"readings": {}}',
    b'{"readings": [1, "x", null, [], {}]}',
    b"[" * 5000 + b"]" * 5000,
    b'{"readings": [{"meter_reading_id": "\xff\xfe"}]}',
    b'{"readings": [{"active_energy": NaN}]}',
    b'{"readings": [{"active_energy": 1e400}]}',
    b'{"readings": [{"meter_reading_id": "\\ud800"}]}',
    b'{"readings": [{"meter_reading_id": "00000000-0000-0000-0000-000000000000", '
    b'"created_at": "2026-01-01T00:00:00Z", "meter_id": 1, "x": "\\u0000"}]}',
    b'{"readings": [{"meter_reading_id": "00000000-0000-0000-0000-000000000001", '
    b'"created_at": "2026-02-30T00:00:00Z", "meter_id": 1}]}',
    b'{"readings": [{"meter_reading_id": "00000000-0000-0000-0000-000000000002", '
    b'"created_at": "2026-01-01T00:00:00Z", "meter_id": 99999999999999999999}]}',
    GOOD[: len(GOOD) // 2],
    GOOD.replace(b'"meter_id"', b'"meter_id":"x","y"', 1),
]


@pytest.fixture
def server(reference_server: Any) -> Any:
    reference_server.register_tenant(TENANT, KEY)
    return reference_server


def _post(server: Any, body: bytes, gz: bool = False) -> httpx.Response:
    headers = {"X-API-Key": KEY, "Content-Type": "application/json", "Idempotency-Key": "k"}
    if gz:
        headers["Content-Encoding"] = "gzip"
    return httpx.post(f"{server.base_url}/sync/readings/batch", content=body, headers=headers)


def _stored(server: Any) -> set[str]:
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT meter_reading_id::text FROM cs_meter_reading WHERE tenant_id = %s", (TENANT,)
        ).fetchall()
    return {r[0] for r in rows}


def _judge(server: Any, response: httpx.Response, body: bytes) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:300], body[:200])
    if response.status_code == 200:
        answer = response.json()
        assert answer["inserted"] + answer["duplicates"] + len(answer["rejected"]) >= 0
    with httpx.Client() as c:
        assert c.get(f"{server.base_url}/health").status_code == 200


@pytest.mark.parametrize("body", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_upload_bodies(server: Any, body: bytes) -> None:
    response = _post(server, body)
    _judge(server, response, body)
    # Only the intact readings of a partly damaged body may be stored, never the damaged one.
    assert _stored(server) <= GOOD_IDS
    if response.status_code == 200:
        assert len(_stored(server)) == response.json()["inserted"]


def test_gzip_garbage_and_bombs(server: Any) -> None:
    packed = gzip.compress(GOOD)
    for body in (
        b"\x1f\x8b\x08\x00garbage",
        packed[: len(packed) // 2],
        gzip.compress(b"[" * 10**6),
    ):
        _judge(server, _post(server, body, gz=True), body)
    assert server.rows(TENANT) == 0


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    cut=st.integers(0, len(GOOD)),
    flips=st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 255)), max_size=6),
)
def test_corrupted_upload_bodies(server: Any, cut: int, flips: list[tuple[int, int]]) -> None:
    body = bytearray(GOOD[:cut] if cut < len(GOOD) and not flips else GOOD)
    for i, v in flips:
        if i < len(body):
            body[i] = v
    sent = bytes(body)
    _SENT_IDS.update(m.decode().lower() for m in _UUID_TEXT.findall(sent))
    _judge(server, _post(server, sent), sent)
    # A flipped byte inside an id can make another valid id: then it was a valid reading of
    # the body as sent (and it stays stored for the later examples, which share the server).
    # Nothing is ever stored that no body carried, and no reading is stored twice.
    stored = _stored(server)
    assert stored <= GOOD_IDS | _SENT_IDS, stored - GOOD_IDS - _SENT_IDS
    assert server.stats()["total_rows"] == len(stored)

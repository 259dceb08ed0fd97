"""``metersync serve --sink``: the zero-cost Client System for benchmarks (issue 12)."""

from __future__ import annotations

import gzip
import uuid
from collections.abc import Iterator

import httpx
import orjson
import pytest

from fix_server import clean_env, serve_process
from metersync.errors import ConfigError
from metersync.server import AdminClient, FaultPlan, ServerThread
from metersync.server.sink import build_readings


@pytest.fixture(scope="module")
def sink() -> Iterator[ServerThread]:
    with ServerThread("", profile="sink", sink_download=2_500) as thread:
        yield thread


def test_upload_is_answered_from_a_byte_count(sink: ServerThread) -> None:
    with AdminClient(sink.admin_url, sink.admin_token) as admin:
        admin.register_tenant(1, "sink-key-1")
        readings = [{"meter_reading_id": str(uuid.uuid4()), "meter_id": 1} for _ in range(37)]
        body = orjson.dumps({"readings": readings})
        url = f"{sink.base_url}/sync/readings/batch"
        answer = httpx.post(url, content=body, headers={"X-API-Key": "sink-key-1"})
        assert answer.json() == {"success": True, "inserted": 37, "duplicates": 0, "rejected": []}
        zipped = httpx.post(
            url,
            content=gzip.compress(body),
            headers={"X-API-Key": "sink-key-1", "Content-Encoding": "gzip"},
        )
        assert zipped.json()["inserted"] == 37
        assert httpx.post(url, content=body, headers={"X-API-Key": "nope"}).status_code == 401
        stats = admin.stats()
        assert (stats["batches_received"], stats["readings_received"], stats["total_rows"]) == (
            2,
            74,
            0,
        )


def test_download_pages_cover_every_prebuilt_reading_once(sink: ServerThread) -> None:
    with AdminClient(sink.admin_url, sink.admin_token) as admin:
        admin.register_tenant(42, "sink-key-42")
    health = httpx.get(f"{sink.base_url}/health").json()
    assert (health["contract"], health["idempotent"], health["download"]) == (
        "metersync",
        True,
        True,
    )
    seen: list[str] = []
    after: str | None = None
    with httpx.Client(base_url=sink.base_url, headers={"X-API-Key": "sink-key-42"}) as http:
        while True:
            query = {"limit": "1000", **({"after": after} if after else {})}
            page = orjson.loads(http.get("/sync/readings", params=query).content)
            if not page["readings"]:
                assert page["next_cursor"] is None
                break
            assert len(page["readings"]) <= 1000
            assert all(r["tenant_id"] == 42 for r in page["readings"])
            seen += [r["meter_reading_id"] for r in page["readings"]]
            after = page["next_cursor"]
        assert http.get("/sync/readings", params={"limit": "0"}).status_code == 400
    assert len(seen) == 2_500 == len(set(seen))
    # Canonical JSON: numerics keep their 4 scale digits, UUIDs are lowercase.
    first = orjson.loads(b"[" + build_readings(42, 1).blob + b"]")[0]
    assert list(first)[:5] == [
        "meter_reading_id",
        "created_at",
        "meter_id",
        "meter_element_id",
        "tenant_id",
    ]
    assert first["meter_reading_id"] == seen[0]


def test_prebuilt_readings_split_across_build_chunks() -> None:
    built = build_readings(3, 20_005)
    text, count = built.page(19_998, 5)
    assert count == 5
    readings = orjson.loads(b"[" + text + b"]")
    assert len({r["meter_reading_id"] for r in readings}) == 5
    assert built.page(20_005, 10) == (b"", 0)


def test_sink_takes_no_faults() -> None:
    with pytest.raises(ConfigError, match="no faults"):
        ServerThread("", profile="sink", faults=FaultPlan(fail_count=1))


def test_serve_sink_command_line() -> None:
    env = {**clean_env(), "METERSYNC_ADMIN_TOKEN": "sink-admin-token"}
    args = ("--sink", "--sink-download", "10", "--port", "0")
    with serve_process(*args, env=env) as (_proc, base_url):
        assert base_url.endswith("/api"), base_url
        assert httpx.get(base_url + "/health").json()["sink"] is True
        with AdminClient(base_url[: -len("/api")] + "/admin", "sink-admin-token") as admin:
            admin.register_tenant(9, "k9")
        page = httpx.get(base_url + "/sync/readings?limit=50", headers={"X-API-Key": "k9"})
        assert len(page.json()["readings"]) == 10

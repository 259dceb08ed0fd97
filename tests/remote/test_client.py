"""ClientSystemApiClient against the real reference server on loopback (and tiny odd servers)."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web

from fix_server import ServerHandle
from metersync.errors import (
    AuthError,
    BadRequestError,
    ClientSystemError,
    ConfigError,
    InconsistentResponseError,
    MalformedPageError,
    OutcomeUnknownError,
    PayloadTooLargeError,
    RemoteUnavailableError,
)
from metersync.remote.client import (
    ClientSystemApiClient,
    ConnectivityState,
    is_loopback_host,
    parse_retry_after,
)
from metersync.server import ServerThread

FAST = {"backoff_base": 0.01, "backoff_max": 0.05}


def readings(n: int, *, meter_id: int = 7, start: int = 0) -> list[dict[str, Any]]:
    """n valid readings with fresh ids (as the codec would send them)."""
    return [
        {
            "meter_reading_id": str(uuid.uuid4()),
            "created_at": f"2025-01-01T{(start + i) // 60:02d}:{(start + i) % 60:02d}:00.000000Z",
            "meter_id": meter_id,
            "meter_element_id": None if i % 3 == 0 else i,
            "active_energy": 1000.5 + i,
            "power": None,
        }
        for i in range(n)
    ]


def body(rows: list[dict[str, Any]]) -> bytes:
    return orjson.dumps(rows)


def key_statuses(server: ServerHandle, key: str) -> list[str]:
    """Statuses of the batch requests the server saw with this Idempotency-Key, in order."""
    return [r["status"] for r in server.stats()["batch_requests"] if r["idempotency_key"] == key]


@pytest.fixture
async def tenant_client(
    reference_server: ServerHandle,
) -> AsyncIterator[tuple[ClientSystemApiClient, int, str]]:
    tenant_id, key = reference_server.new_tenant()
    async with ClientSystemApiClient(reference_server.base_url, key, **FAST) as client:
        yield client, tenant_id, key


# -- uploads ------------------------------------------------------------------------------


async def test_upload_counts_then_duplicates(reference_server: ServerHandle, tenant_client) -> None:
    client, tenant_id, _ = tenant_client
    rows = readings(5)
    first = await client.post_batch(body(rows), 5, idempotency_key="k-first")
    assert (first.inserted, first.duplicates, first.rejected, first.attempts) == (5, 0, {}, 1)
    again = await client.post_batch(body(rows), 5, idempotency_key="k-second")
    assert (again.inserted, again.duplicates, again.confirmed) == (0, 5, 5)
    assert reference_server.rows(tenant_id) == 5


async def test_with_key_sends_its_own_key_through_the_shared_http_client(
    reference_server: ServerHandle,
) -> None:
    """A client made by with_key stores under its own tenant, shares the first client's HTTP
    client (closing it leaves the first one working) and refuses a bad key without echoing
    it."""
    first_id, first_key = reference_server.new_tenant()
    second_id, second_key = reference_server.new_tenant()
    first = ClientSystemApiClient(reference_server.base_url, first_key, **FAST)
    try:
        await first.post_batch(body(readings(2)), 2, idempotency_key="wk-1")
        second = first.with_key(second_key)
        assert second.max_retries == first.max_retries and second.base_url == first.base_url
        assert (await second.profile()) == (await first.profile())
        result = await second.post_batch(body(readings(3)), 3, idempotency_key="wk-2")
        assert result.inserted == 3
        await second.aclose()  # not the shared HTTP client
        again = await first.post_batch(body(readings(1)), 1, idempotency_key="wk-3")
        assert again.inserted == 1
        assert (reference_server.rows(first_id), reference_server.rows(second_id)) == (3, 3)
        with pytest.raises(ConfigError, match="api_key must be") as refused:
            first.with_key("bad key with spaces")
        assert "bad key" not in str(refused.value)
    finally:
        await first.aclose()
    with pytest.raises(RuntimeError):  # closing the first closed the shared HTTP client
        await second.post_batch(body(readings(1)), 1, idempotency_key="wk-4")


async def test_idempotency_key_reuse_is_recorded_and_safe(
    reference_server: ServerHandle, tenant_client
) -> None:
    client, tenant_id, _ = tenant_client
    rows = readings(3)
    await client.post_batch(body(rows), 3, idempotency_key="same-key")
    replay = await client.post_batch(body(rows), 3, idempotency_key="same-key")
    assert (replay.inserted, replay.duplicates) == (0, 3)
    stats = reference_server.stats()
    assert stats["idempotency_replays"] == 1
    assert key_statuses(reference_server, "same-key") == ["200", "200"]
    assert reference_server.rows(tenant_id) == 3


async def test_per_reading_rejections(reference_server: ServerHandle, tenant_client) -> None:
    client, tenant_id, _ = tenant_client
    reference_server.set_faults("reject=meter_id:13")
    good = readings(3)
    bad_uuid = {**readings(1)[0], "meter_reading_id": "not-a-uuid"}
    # (strings of any kind are stored as sent since issue 11; an object is no column value)
    text_value = {**readings(1)[0], "power": {"value": 12}}
    wrong_tenant = {**readings(1)[0], "tenant_id": tenant_id + 1}
    ruled = readings(1, meter_id=13)[0]
    batch = [*good, bad_uuid, text_value, wrong_tenant, ruled]
    result = await client.post_batch(body(batch), len(batch), idempotency_key="rej")
    assert result.inserted == 3
    assert set(result.rejected) == {
        "not-a-uuid",
        text_value["meter_reading_id"],
        wrong_tenant["meter_reading_id"],
        ruled["meter_reading_id"],
    }
    assert "UUID" in result.rejected["not-a-uuid"]
    assert "power" in result.rejected[text_value["meter_reading_id"]]
    assert "tenant_id" in result.rejected[wrong_tenant["meter_reading_id"]]
    assert "meter_id=13" in result.rejected[ruled["meter_reading_id"]]
    assert reference_server.rows(tenant_id) == 3
    assert reference_server.stats()["faults_injected"] == {"reject": 1}


async def test_another_tenants_id_is_rejected_never_overwritten(
    reference_server: ServerHandle,
) -> None:
    a_id, a_key = reference_server.new_tenant()
    b_id, b_key = reference_server.new_tenant()
    shared = readings(1)
    async with (
        ClientSystemApiClient(reference_server.base_url, a_key) as a,
        ClientSystemApiClient(reference_server.base_url, b_key) as b,
    ):
        assert (await a.post_batch(body(shared), 1, idempotency_key="a")).inserted == 1
        hijack = [{**shared[0], "meter_id": 999}]
        result = await b.post_batch(body(hijack), 1, idempotency_key="b")
        assert list(result.rejected) == [shared[0]["meter_reading_id"]]
        assert result.inserted == result.duplicates == 0
        page_a = await a.get_readings(10)
        page_b = await b.get_readings(10)
    assert [r["meter_id"] for r in page_a.readings] == [7]
    assert page_b.readings == []
    assert (reference_server.rows(a_id), reference_server.rows(b_id)) == (1, 0)


async def test_gzip_body(reference_server: ServerHandle) -> None:
    tenant_id, key = reference_server.new_tenant()
    async with ClientSystemApiClient(reference_server.base_url, key, gzip_min_bytes=100) as client:
        small = await client.post_batch(b"[]", 0, idempotency_key="small")
        big = await client.post_batch(body(readings(50)), 50, idempotency_key="big")
    assert (small.inserted, big.inserted) == (0, 50)
    assert reference_server.stats()["gzip_bodies"] == 1  # only the body over the threshold
    assert reference_server.rows(tenant_id) == 50


# -- errors that are not retried ----------------------------------------------------------


async def test_unknown_key_is_auth_error_without_retry(reference_server: ServerHandle) -> None:
    secret = "definitely-not-registered-key"
    async with ClientSystemApiClient(reference_server.base_url, secret, **FAST) as client:
        with pytest.raises(AuthError) as info:
            await client.post_batch(body(readings(2)), 2, idempotency_key="k401")
    assert info.value.status == 401
    assert secret not in str(info.value)
    # One health request (the profile negotiation, no key) and ONE upload attempt.
    assert reference_server.stats()["requests_per_status"] == {"200": 1, "401": 1}


async def test_403_is_auth_error_without_retry(
    reference_server: ServerHandle, tenant_client
) -> None:
    client, _, _ = tenant_client
    reference_server.set_faults("fail=3:403")
    with pytest.raises(AuthError) as info:
        await client.post_batch(body(readings(2)), 2, idempotency_key="k403")
    assert info.value.status == 403
    assert key_statuses(reference_server, "k403") == ["403"]


async def test_no_api_key_configured(reference_server: ServerHandle) -> None:
    async with ClientSystemApiClient(reference_server.base_url) as client:
        with pytest.raises(AuthError, match="no API key"):
            await client.get_readings(10)
        assert await client.health() is True  # health needs no key


async def test_malformed_body_is_400(reference_server: ServerHandle, tenant_client) -> None:
    client, _, _ = tenant_client
    with pytest.raises(BadRequestError, match="readings") as info:
        await client.post_batch(b'"not a list"', 1, idempotency_key="k400")
    assert info.value.status == 400
    assert key_statuses(reference_server, "k400") == ["400"]


async def test_too_many_readings_is_413(reference_server: ServerHandle, tenant_client) -> None:
    client, _, _ = tenant_client
    oversize = b"[" + b",".join([b"{}"] * 10_001) + b"]"
    with pytest.raises(PayloadTooLargeError, match="10001") as info:
        await client.post_batch(oversize, 10_001, idempotency_key="k413")
    assert info.value.status == 413
    assert key_statuses(reference_server, "k413") == ["413"]


# -- transient failures: retried ----------------------------------------------------------


async def test_5xx_burst_then_success_same_idempotency_key(
    reference_server: ServerHandle, tenant_client
) -> None:
    client, tenant_id, _ = tenant_client
    reference_server.set_faults("fail=3:503")
    result = await client.post_batch(body(readings(4)), 4, idempotency_key="burst")
    assert (result.inserted, result.attempts) == (4, 4)
    # Every attempt carried the same Idempotency-Key (recorded server side).
    assert key_statuses(reference_server, "burst") == ["503", "503", "503", "200"]
    assert reference_server.rows(tenant_id) == 4


async def test_5xx_outlasting_retries_is_remote_unavailable(
    reference_server: ServerHandle, tenant_client
) -> None:
    client, tenant_id, _ = tenant_client
    client.max_retries = 2
    reference_server.set_faults("fail=10:502")
    with pytest.raises(RemoteUnavailableError, match="after 3 attempts") as info:
        await client.post_batch(body(readings(2)), 2, idempotency_key="down")
    assert info.value.status == 502
    assert key_statuses(reference_server, "down") == ["502"] * 3
    assert reference_server.rows(tenant_id) == 0


async def test_429_retry_after_is_honoured(reference_server: ServerHandle, tenant_client) -> None:
    client, _, _ = tenant_client
    client.backoff_max = 30.0
    slept: list[float] = []

    async def recording_sleep(seconds: float) -> None:
        slept.append(seconds)
        await asyncio.sleep(seconds)

    client._sleep = recording_sleep
    reference_server.set_faults("throttle=1:1")
    started = time.monotonic()
    result = await client.post_batch(body(readings(2)), 2, idempotency_key="k429")
    assert time.monotonic() - started >= 1.0
    assert slept == [1.0]
    assert (result.inserted, result.attempts) == (2, 2)
    assert key_statuses(reference_server, "k429") == ["429", "200"]


async def test_retry_after_is_capped_at_backoff_max(
    reference_server: ServerHandle, tenant_client
) -> None:
    client, _, _ = tenant_client
    slept: list[float] = []

    async def recording_sleep(seconds: float) -> None:
        slept.append(seconds)

    client._sleep = recording_sleep
    reference_server.set_faults("throttle=2:120")
    result = await client.post_batch(body(readings(1)), 1, idempotency_key="cap")
    assert slept == [FAST["backoff_max"]] * 2
    assert result.attempts == 3


async def test_backoff_is_full_jitter_within_exponential_ceiling(
    reference_server: ServerHandle, tenant_client
) -> None:
    client, _, _ = tenant_client
    client.backoff_base, client.backoff_max, client.max_retries = 0.001, 0.004, 5
    slept: list[float] = []

    async def recording_sleep(seconds: float) -> None:
        slept.append(seconds)

    client._sleep = recording_sleep
    reference_server.set_faults("fail=5:500")
    await client.post_batch(body(readings(1)), 1, idempotency_key="jitter")
    ceilings = [0.001, 0.002, 0.004, 0.004, 0.004]
    assert len(slept) == 5
    assert all(0 <= s <= c for s, c in zip(slept, ceilings, strict=True))


async def test_read_timeout_retried_then_success(
    reference_server: ServerHandle,
) -> None:
    tenant_id, key = reference_server.new_tenant()
    reference_server.set_faults("delay=1.0:1")
    async with ClientSystemApiClient(
        reference_server.base_url, key, read_timeout=0.2, **FAST
    ) as client:
        result = await client.post_batch(body(readings(3)), 3, idempotency_key="slow-once")
    assert (result.inserted, result.attempts) == (3, 2)
    assert reference_server.rows(tenant_id) == 3


async def test_timeouts_outlasting_retries(reference_server: ServerHandle) -> None:
    tenant_id, key = reference_server.new_tenant()
    reference_server.set_faults("delay=0.6")
    async with ClientSystemApiClient(
        reference_server.base_url, key, read_timeout=0.1, max_retries=2, **FAST
    ) as client:
        with pytest.raises(RemoteUnavailableError, match=r"after 3 attempts.*Timeout") as info:
            await client.post_batch(body(readings(2)), 2, idempotency_key="slow")
    assert info.value.status is None
    # The server gives up on requests whose client left while it was delayed: nothing stored.
    for _ in range(100):
        if key_statuses(reference_server, "slow") == ["abandoned"] * 3:
            break
        await asyncio.sleep(0.05)
    assert key_statuses(reference_server, "slow") == ["abandoned"] * 3
    assert reference_server.rows(tenant_id) == 0


async def test_connection_refused_is_remote_unavailable(pg_admin_dsn: str) -> None:
    # Bind and release a port: nothing listens there afterwards.
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    for profile in ("metersync", "metertrack"):  # never sent: retried in both profiles
        async with ClientSystemApiClient(
            f"http://127.0.0.1:{port}/api",
            "some-key",
            max_retries=1,
            client_profile=profile,
            **FAST,
        ) as client:
            with pytest.raises(RemoteUnavailableError, match=r"after 2 attempts.*Connect"):
                await client.post_batch(b"[]", 0, idempotency_key="nobody")
            assert await client.health() is False
    # Negotiating needs an answer: an unreachable server decides nothing (asked again later).
    async with ClientSystemApiClient(f"http://127.0.0.1:{port}/api", "k", **FAST) as client:
        with pytest.raises(RemoteUnavailableError, match="learn its profile"):
            await client.profile()


async def test_a_proxy_in_the_environment_is_not_used(
    reference_server: ServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the transport's docstring says: requests go straight to the Client System, also
    with ``HTTP_PROXY`` set (here to a port that refuses every connection), as httpx's own
    send() sends them when it is given a transport."""
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    tenant_id, key = reference_server.new_tenant()
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
    async with ClientSystemApiClient(reference_server.base_url, key, **FAST) as client:
        result = await client.post_batch(body(readings(2)), 2, idempotency_key="no-proxy")
        assert result.inserted == 2 and reference_server.rows(tenant_id) == 2
        # httpx's own path, which the client's shortcut stands for, goes there too.
        answer = await client._http.get("/health")
        assert answer.status_code == 200


async def test_lost_response_after_commit(reference_server: ServerHandle, tenant_client) -> None:
    client, tenant_id, _ = tenant_client
    rows = readings(6)
    # No retries: the client sees the connection drop; the server committed anyway.
    client.max_retries = 0
    reference_server.set_faults("drop_after_commit=1")
    with pytest.raises(RemoteUnavailableError, match=r"[Dd]isconnected"):
        await client.post_batch(body(rows), 6, idempotency_key="lost")
    assert reference_server.rows(tenant_id) == 6
    # Sending the same batch again (next cycle) is safe: duplicates, no second copy.
    again = await client.post_batch(body(rows), 6, idempotency_key="lost")
    assert (again.inserted, again.duplicates) == (0, 6)
    assert reference_server.rows(tenant_id) == 6
    assert key_statuses(reference_server, "lost") == ["dropped", "200"]


async def test_lost_response_is_retried_within_one_call(
    reference_server: ServerHandle, tenant_client
) -> None:
    client, tenant_id, _ = tenant_client
    reference_server.set_faults("drop_after_commit=1")
    result = await client.post_batch(body(readings(4)), 4, idempotency_key="lost-retry")
    assert (result.inserted, result.duplicates, result.attempts) == (0, 4, 2)
    assert reference_server.rows(tenant_id) == 4
    assert reference_server.stats()["idempotency_replays"] == 1


# -- answers that do not add up -----------------------------------------------------------


async def test_miscounted_answer_is_inconsistent_and_not_retried(
    reference_server: ServerHandle, tenant_client
) -> None:
    client, _, _ = tenant_client
    reference_server.set_faults("miscount=1")
    with pytest.raises(InconsistentResponseError, match="4 were sent"):
        await client.post_batch(body(readings(4)), 4, idempotency_key="miscount")
    assert key_statuses(reference_server, "miscount") == ["200"]


async def test_count_argument_is_checked(tenant_client) -> None:
    client, _, _ = tenant_client
    with pytest.raises(InconsistentResponseError, match="5 were sent"):
        await client.post_batch(body(readings(4)), 5, idempotency_key="wrong-count")


async def test_old_server_records_processed(reference_server: ServerHandle, tenant_client) -> None:
    client, _, _ = tenant_client
    reference_server.set_faults("legacy=2,reject=meter_id:13")
    all_good = await client.post_batch(body(readings(3)), 3, idempotency_key="legacy-1")
    assert (all_good.inserted, all_good.duplicates, all_good.rejected) == (3, 0, {})
    # The old server processed 2 of 3: nothing may be marked.
    mixed = readings(2) + readings(1, meter_id=13)
    with pytest.raises(InconsistentResponseError, match="recordsProcessed=2"):
        await client.post_batch(body(mixed), 3, idempotency_key="legacy-2")


@pytest.fixture
async def canned_server() -> AsyncIterator[Callable[[int, bytes], Awaitable[str]]]:
    """A tiny aiohttp app answering every request with a fixed status and body."""
    runners: list[web.AppRunner] = []

    async def start(status: int, payload: bytes) -> str:
        async def handler(request: web.Request) -> web.Response:
            await request.read()
            return web.Response(status=status, body=payload, content_type="application/json")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}/api"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"<html>ok</html>", "not JSON"),
        (b'{"success":false,"inserted":1,"duplicates":0,"rejected":[]}', "success"),
        (b'{"success":true,"inserted":1,"rejected":[]}', "missing"),
        (b'{"success":true,"inserted":"1","duplicates":0,"rejected":[]}', "wrong type"),
        (b'{"success":true,"inserted":-1,"duplicates":2,"rejected":[]}', "wrong type"),
        (b'{"success":true,"inserted":0,"duplicates":0,"rejected":[{"id":"x"}]}', "entry"),
        (
            b'{"success":true,"inserted":0,"duplicates":0,"rejected":['
            b'{"meter_reading_id":"a","error":"e"},{"meter_reading_id":"a","error":"e"}]}',
            "twice",
        ),
        (b'{"success":true,"recordsProcessed":true}', "recordsProcessed"),
    ],
)
async def test_garbled_answers_are_inconsistent(canned_server, payload: bytes, why: str) -> None:
    url = await canned_server(200, payload)
    async with ClientSystemApiClient(url, "k", client_profile="metersync") as client:
        with pytest.raises(InconsistentResponseError, match=why) as info:
            await client.post_batch(b"[1]", 1, idempotency_key="x")
        assert type(info.value) is InconsistentResponseError
    # Against a server that is not idempotent an unreadable 200 is an unknown outcome.
    async with ClientSystemApiClient(url, "k") as client:
        with pytest.raises(OutcomeUnknownError, match=why):
            await client.post_batch(b"[1]", 1, idempotency_key="x")


async def test_legacy_shape_from_a_tiny_old_server(canned_server) -> None:
    url = await canned_server(200, b'{"success":true,"recordsProcessed":2}')
    async with ClientSystemApiClient(url, "k") as client:
        result = await client.post_batch(b"[1,2]", 2, idempotency_key="old")
        assert (result.inserted, result.rejected, result.attempts) == (2, {}, 1)
        assert (await client.profile()).name == "metertrack"  # it advertised nothing
        with pytest.raises(OutcomeUnknownError, match="recordsProcessed=2 for 3"):
            await client.post_batch(b"[1,2,3]", 3, idempotency_key="old2")


async def test_unexpected_4xx_is_not_retried(canned_server) -> None:
    url = await canned_server(418, b'{"error":"teapot"}')
    async with ClientSystemApiClient(url, "k", **FAST) as client:
        with pytest.raises(ClientSystemError, match="418: teapot") as info:
            await client.post_batch(b"[]", 0, idempotency_key="tea")
    assert type(info.value) is ClientSystemError
    assert info.value.status == 418


# -- downloads ----------------------------------------------------------------------------


async def test_download_paging_order_cursor_and_isolation(reference_server: ServerHandle) -> None:
    a_id, a_key = reference_server.new_tenant()
    b_id, b_key = reference_server.new_tenant()
    a_rows, b_rows = readings(25), readings(4, meter_id=8)
    reference_server.load_readings(a_id, a_rows)
    reference_server.load_readings(b_id, b_rows)
    async with ClientSystemApiClient(reference_server.base_url, a_key) as a:
        pages, cursor = [], None
        while True:
            page = await a.get_readings(10, cursor)
            pages.append(page)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        # Every non-empty page carries its resume point; the empty page after the last says null.
        assert [len(p.readings) for p in pages] == [10, 10, 5, 0]
        got = [r for p in pages for r in p.readings]
        assert [r["meter_reading_id"] for r in got] == [r["meter_reading_id"] for r in a_rows]
        assert {r["tenant_id"] for r in got} == {a_id}
        assert got[1]["active_energy"] == 1001.5 and got[0]["meter_element_id"] is None
        # Stable: the same cursor gives the same page again.
        again = await a.get_readings(10, pages[0].next_cursor)
        assert again.readings == pages[1].readings
        with pytest.raises(BadRequestError, match="limit"):
            await a.get_readings(10_001)
        with pytest.raises(BadRequestError, match="cursor"):
            await a.get_readings(10, "bm90LWEtY3Vyc29y")
        with pytest.raises(ConfigError):
            await a.get_readings(0)
    async with ClientSystemApiClient(reference_server.base_url, b_key) as b:
        page = await b.get_readings(10)
    assert [r["meter_reading_id"] for r in page.readings] == [r["meter_reading_id"] for r in b_rows]
    assert page.next_cursor is not None


async def test_caught_up_client_resumes_after_its_cursor(reference_server: ServerHandle) -> None:
    tenant_id, key = reference_server.new_tenant()
    first = readings(3)
    reference_server.load_readings(tenant_id, first)
    async with ClientSystemApiClient(reference_server.base_url, key) as client:
        page = await client.get_readings(10)
        assert len(page.readings) == 3 and page.next_cursor is not None
        caught_up = await client.get_readings(10, page.next_cursor)
        assert caught_up.readings == [] and caught_up.next_cursor is None
        later = readings(2, meter_id=9)
        reference_server.load_readings(tenant_id, later)
        new = await client.get_readings(10, page.next_cursor)
    ids = [r["meter_reading_id"] for r in new.readings]
    assert ids == [r["meter_reading_id"] for r in later]


async def test_exact_page_then_empty_page(reference_server: ServerHandle) -> None:
    tenant_id, key = reference_server.new_tenant()
    reference_server.load_readings(tenant_id, readings(5))
    async with ClientSystemApiClient(reference_server.base_url, key) as client:
        page = await client.get_readings(5)
        assert len(page.readings) == 5 and page.next_cursor is not None
        rest = await client.get_readings(5, page.next_cursor)
    assert rest.readings == [] and rest.next_cursor is None


async def test_download_retries_5xx(reference_server: ServerHandle) -> None:
    tenant_id, key = reference_server.new_tenant()
    reference_server.load_readings(tenant_id, readings(2))
    reference_server.set_faults("fail=2:503,path=/api/sync/readings")
    async with ClientSystemApiClient(reference_server.base_url, key, **FAST) as client:
        page = await client.get_readings(10)
    assert len(page.readings) == 2
    assert reference_server.stats()["faults_injected"] == {"fail": 2}


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[]",
        b'{"readings":{},"next_cursor":null}',
        b'{"readings":[]}',
        b'{"readings":[],"next_cursor":5}',
        b'{"readings":[1],"next_cursor":null}',
    ],
)
async def test_malformed_pages(canned_server, payload: bytes) -> None:
    url = await canned_server(200, payload)
    async with ClientSystemApiClient(url, "k") as client:
        with pytest.raises(MalformedPageError):
            await client.get_readings(10)


async def test_garbage_page_fault(reference_server: ServerHandle, tenant_client) -> None:
    client, _, _ = tenant_client
    reference_server.set_faults("garbage_page=1")
    with pytest.raises(MalformedPageError, match="readings"):
        await client.get_readings(10)
    assert (await client.get_readings(10)).readings == []


# -- health and connectivity --------------------------------------------------------------


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def test_connectivity_flips_when_the_server_stops(reference_server: ServerHandle) -> None:
    thread = ServerThread(reference_server.dsn).start()
    stopped = False
    try:
        client = ClientSystemApiClient(thread.base_url, connect_timeout=0.5)
        assert client.connectivity == ConnectivityState()
        async with client:
            client.start_connectivity_checks(30)
            with pytest.raises(RuntimeError):
                client.start_connectivity_checks(30)
            await wait_for(lambda: client.connectivity.online is True)
            went_online = client.connectivity.changed_at
            assert went_online is not None
            await asyncio.to_thread(thread.stop)
            stopped = True
            await wait_for(lambda: client.connectivity.online is False)
            state = client.connectivity
            assert state.changed_at is not None and state.changed_at > went_online
            assert state.last_checked_at is not None and state.last_checked_at >= state.changed_at
            await client.stop_connectivity_checks()
            checked = client.connectivity.last_checked_at
            await asyncio.sleep(0.1)
            assert client.connectivity.last_checked_at == checked  # really stopped
    finally:
        if not stopped:
            thread.stop()


# -- secrets and transport security -------------------------------------------------------


async def test_api_key_never_logged_or_in_errors(
    reference_server: ServerHandle, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _, key = reference_server.new_tenant()
    texts: list[str] = []
    async with ClientSystemApiClient(reference_server.base_url, key, max_retries=1, **FAST) as c:
        texts.append(repr(c))
        reference_server.set_faults("fail=1:503")
        await c.post_batch(body(readings(2)), 2, idempotency_key="s1")
        reference_server.set_faults("fail=5:503")
        with pytest.raises(RemoteUnavailableError) as info:
            await c.post_batch(body(readings(2)), 2, idempotency_key="s2")
        texts.append(str(info.value))
        await c.get_readings(5)
    async with ClientSystemApiClient(reference_server.base_url, key + "x") as wrong:
        with pytest.raises(AuthError) as auth:
            await wrong.get_readings(5)
        texts.append(str(auth.value))
    assert "POST /sync/readings/batch -> 200" in caplog.text  # DEBUG request lines were logged
    assert "retry 1 of 1" in caplog.text  # and retries at WARNING
    assert any(r.levelno == logging.WARNING for r in caplog.records)
    assert key not in caplog.text
    for text in texts:
        assert key not in text
    assert "<set>" in texts[0]


def test_bad_api_key_characters_not_echoed() -> None:
    with pytest.raises(ConfigError) as info:
        ClientSystemApiClient(api_key="secret with space\n")
    assert "secret" not in str(info.value)


def test_verify_false_refused_for_remote_host() -> None:
    with pytest.raises(ConfigError, match="verify=False"):
        ClientSystemApiClient("https://cs.example.com/api", "k", verify=False)
    with pytest.raises(ConfigError, match="clear text"):
        ClientSystemApiClient("http://cs.example.com/api", "k")


async def test_insecure_allowed_for_loopback_or_explicitly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    async with ClientSystemApiClient("https://127.0.0.1:8443/api", "k", verify=False):
        pass
    assert "VERIFICATION IS OFF" in caplog.text
    async with ClientSystemApiClient(
        "https://cs.example.com/api", "k", verify=False, allow_insecure=True
    ):
        pass
    async with ClientSystemApiClient("http://[::1]:3001/api", "k"):
        pass


def test_loopback_hosts() -> None:
    assert all(map(is_loopback_host, ["localhost", "127.0.0.1", "127.5.6.7", "::1", "[::1]"]))
    assert not any(map(is_loopback_host, ["128.0.0.1", "example.com", "10.0.0.1", "::2"]))


def test_parse_retry_after() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    now = time.time()
    date = email.utils.formatdate(now + 20, usegmt=True)
    assert 18.0 <= parse_retry_after(date, now=now) <= 21.0
    past = email.utils.formatdate(now - 100, usegmt=True)
    assert parse_retry_after(past, now=now) == 0.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_retries": -1},
        {"backoff_base": -0.1},
        {"read_timeout": 0},
        {"gzip_min_bytes": -5},
        {"base_url": "ftp://x/api"},
        {"verify": "/nonexistent/ca-bundle.pem"},
    ],
)
def test_config_validation(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        ClientSystemApiClient(**{"api_key": "k", **kwargs})


async def test_idempotency_key_required(tenant_client) -> None:
    client, _, _ = tenant_client
    with pytest.raises(ConfigError, match="idempotency_key"):
        await client.post_batch(b"[]", 0, idempotency_key="")


class _HeaderLog(httpx.AsyncHTTPTransport):
    """The real transport, remembering the headers of every upload."""

    def __init__(self) -> None:
        super().__init__(verify=False)
        self.uploads: list[httpx.Headers] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/batch"):
            self.uploads.append(request.headers)
        return await super().handle_async_request(request)


async def test_site_header_only_to_a_server_with_the_site_filter(
    reference_server: ServerHandle, metertrack_server: ServerHandle
) -> None:
    for server, expected in ((reference_server, "site-7"), (metertrack_server, None)):
        _, key = server.new_tenant()
        log = _HeaderLog()
        async with ClientSystemApiClient(
            server.base_url, key, site_id="site-7", transport=log, **FAST
        ) as client:
            profile = await client.profile()
            assert profile.site_filter is (expected is not None)
            rows = [{k: v for k, v in r.items() if v is not None} for r in readings(2)]
            result = await client.post_batch(body(rows), 2, idempotency_key="site")
            assert result.inserted == 2
        assert [h.get("X-Metersync-Site") for h in log.uploads] == [expected]


async def test_profile_negotiation(canned_server) -> None:
    ours = (
        b'{"status":"ok","contract":"metersync","contract_version":2,"idempotent":true,'
        b'"download":true,"max_body_bytes":1048576,"site_filter":false}'
    )
    cases = [
        (200, ours, ("metersync", True, True, 1_048_576)),
        # Capabilities are only what is advertised as true: no promise, no idempotency.
        (200, b'{"status":"ok","contract":"metersync"}', ("metersync", False, False, 67108864)),
        (200, b'{"status":"OK","uptime":12}', ("metertrack", False, False, 10_485_760)),
        (
            404,
            b'{"success":false,"message":"Route not found"}',
            ("metertrack", False, False, 10_485_760),
        ),
    ]
    for status, payload, want in cases:
        url = await canned_server(status, payload)
        async with ClientSystemApiClient(url, "k") as client:
            p = await client.profile()
            assert (p.name, p.idempotent, p.download, p.max_body_bytes) == want, payload
            assert p.source == "advertised"
        async with ClientSystemApiClient(url, "k", max_body_bytes=5000) as client:
            assert (await client.profile()).max_body_bytes == 5000
    url = await canned_server(200, b'{"status":"Degraded"}')
    async with ClientSystemApiClient(url, "k", client_profile="metertrack") as client:
        assert await client.health() is True  # MeterTrack's shapes count as reachable
        assert (await client.profile()).source == "configured"
    with pytest.raises(ConfigError, match="client_profile must be one of"):
        ClientSystemApiClient(url, "k", client_profile="legacy")


async def test_server_words_reach_the_error_line(canned_server) -> None:
    payload = (
        b'{"success":false,"message":"Validation error","errors":[{"type":"field",'
        b'"msg":"voltage_thd must be numeric","path":"readings[3].voltage_thd",'
        b'"location":"body","value":null}]}'
    )
    url = await canned_server(400, payload)
    async with ClientSystemApiClient(url, "k", client_profile="metertrack") as client:
        with pytest.raises(BadRequestError) as info:
            await client.post_batch(b"[1,2,3,4]", 4, idempotency_key="v")
    assert "Validation error; voltage_thd must be numeric (readings[3].voltage_thd)" in str(
        info.value
    )
    assert [(e.index, e.message) for e in info.value.field_errors] == [
        (3, "voltage_thd must be numeric")
    ]
    url = await canned_server(
        500,
        b'{"success":false,"recordsProcessed":0,"message":"Batch upload error","error":"deadlock"}',
    )
    async with ClientSystemApiClient(
        url, "k", client_profile="metertrack", max_retries=1, **FAST
    ) as client:
        # "Batch upload error" proves nothing was stored: retried even without idempotency.
        with pytest.raises(
            RemoteUnavailableError, match=r"after 2 attempts.*Batch upload error; deadlock"
        ):
            await client.post_batch(b"[1]", 1, idempotency_key="b")
    url = await canned_server(502, b"<html>bad gateway</html>")
    async with ClientSystemApiClient(url, "k", client_profile="metertrack", **FAST) as client:
        with pytest.raises(OutcomeUnknownError, match="HTTP 502"):
            await client.post_batch(b"[1]", 1, idempotency_key="g")


def test_client_from_settings_carries_the_profile_settings() -> None:
    from metersync.remote.client import client_from_settings
    from metersync.settings import Settings

    settings = Settings(
        api_url="http://127.0.0.1:9/api",
        client_profile="metertrack",
        max_body_bytes=5_000_000,
        site_id="site-a",
        read_timeout_per_reading=0.07,
        read_timeout=12.0,
    )
    client = client_from_settings(settings, "k", verify=False)
    assert (client.client_profile, client.max_body_bytes, client.site_id) == (
        "metertrack",
        5_000_000,
        "site-a",
    )
    assert (client.read_timeout, client.read_timeout_per_reading) == (12.0, 0.07)
    assert client_from_settings(settings, "k", site_id="site-db", verify=False).site_id == "site-db"
    assert client_from_settings(Settings(), "k", verify=False).site_id  # the host name

"""Security: the API key never leaks, TLS is verified by default, SQL treats text as data, and
the reference Client System keeps tenants apart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import ssl
import subprocess
import sys
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from _harness import REPO, World, run

from metersync.engine.manager import SyncManager
from metersync.engine.tenant_cache import TenantCache
from metersync.errors import ClientSystemError, ConfigError, MeterSyncError
from metersync.remote.client import ClientSystemApiClient
from metersync.store.database import SyncDatabase

TENANT = 51
OTHER = 52
SECRET = "sk-LEAKCANARY-" + uuid.uuid4().hex  # the key we hunt for everywhere


class _Everything(logging.Handler):
    """Keeps every record, formatted with its traceback, plus its raw args."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(self.format(record))
        self.texts.append(repr(record.args))
        if record.exc_info:
            self.texts.append("".join(traceback.format_exception(*record.exc_info)))


def _leaks(texts: list[str]) -> list[str]:
    return [t[:300] for t in texts if SECRET in t or SECRET[:20] in t]


def _cli(world: World, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metersync", *args],
        env=world.worker_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def _world_with_secret(world: World) -> None:
    run(_add(world.sync_dsn, TENANT, "secret tenant", SECRET, 10, 20))
    world.server.register_tenant(TENANT, SECRET)
    world.keys[TENANT] = SECRET
    world.seed(TENANT, 120)


async def _add(dsn: str, tenant: int, name: str, key: str, up: int, down: int) -> None:
    async with await SyncDatabase.connect(dsn) as db:
        await db.add_tenant(tenant, name, key, upload_batch_size=up, download_batch_size=down)


def test_api_key_never_reaches_logs_errors_or_reprs(world: World) -> None:
    _world_with_secret(world)
    handler = _Everything()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    texts = handler.texts
    try:

        async def scenario() -> None:
            world.server.set_faults("fail=2:503,drop_after_commit=1,throttle=1:0.01")
            async with SyncManager(
                tenant_id=TENANT, dsn=world.sync_dsn, api_url=world.api_url
            ) as sm:
                await sm.run_cycle()
                texts.append(json.dumps(await sm.status(), default=str))
                texts.append(repr(sm.client))
                texts.append(repr(await sm.cache.get(TENANT)))
                texts.append(repr(await sm.db.get_tenant(TENANT)))
                texts.append(repr(await sm.db.list_tenants()))
                # The Client System now refuses the key: the AuthError path, logged and raised.
                world.server.register_tenant(TENANT, "some-other-key-123")
                await asyncio.to_thread(world.seed, TENANT, 5)
                try:
                    await sm.upload_readings()
                except MeterSyncError as exc:
                    texts.append(str(exc))
                    texts.append(repr(exc))
                    texts.append("".join(traceback.format_exception(exc)))
                else:
                    raise AssertionError("a refused key must raise")
            # Errors constructing a client with a bad key must not echo it either.
            for bad in (SECRET + " space", SECRET + "\n"):
                try:
                    ClientSystemApiClient(world.api_url, bad)
                except ConfigError as exc:
                    texts.append(str(exc))

        run(scenario())
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    assert len(texts) > 20  # we did capture the cycle's logging
    assert not _leaks(texts), _leaks(texts)


def test_api_key_absent_from_cli_output_and_process_arguments(world: World) -> None:
    _world_with_secret(world)
    outputs = []
    for args in (
        ["status", "--json"],
        ["tenant", "show", str(TENANT)],
        ["tenant", "list", "--json"],
    ):
        result = _cli(world, *args)
        assert result.returncode == 0, (args, result.stderr[-2000:])
        outputs += [result.stdout, result.stderr]
    assert not _leaks(outputs), _leaks(outputs)
    # A running sync loop: its argv (what `ps` shows everyone) must not hold the key.
    world.seed(TENANT, 50)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "metersync",
            "-vv",
            "sync",
            "--tenant",
            str(TENANT),
            "--interval",
            "0.5",
        ],
        env=world.worker_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 60
        while world.pending([TENANT]) and time.monotonic() < deadline:
            time.sleep(0.1)
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode(errors="replace")
        assert "sync" in cmdline
        assert SECRET not in cmdline
        environ = Path(f"/proc/{proc.pid}/environ").read_bytes().decode(errors="replace")
        assert SECRET not in environ  # the key came from the tenant row, not the environment
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert SECRET not in out and SECRET not in err
    assert "DEBUG" in err  # -vv really logged at DEBUG, and still no key
    assert world.pending([TENANT]) == 0


# -- TLS -----------------------------------------------------------------------------------------


def test_insecure_transport_refused_for_remote_hosts() -> None:
    with pytest.raises(ConfigError, match="verify=False") as info:
        ClientSystemApiClient("https://cs.example.com/api", SECRET, verify=False)
    assert SECRET not in str(info.value)
    with pytest.raises(ConfigError, match="http://") as info:
        ClientSystemApiClient("http://cs.example.com/api", SECRET)
    assert SECRET not in str(info.value)


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_tls_verified_by_default_and_ca_bundle_accepted(
    self_signed: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    from aiohttp import web

    cert, key = self_signed

    async def health(_: Any) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readings(_: Any) -> web.Response:
        return web.json_response({"readings": [], "next_cursor": None})

    app = web.Application()
    app.router.add_get("/api/health", health)
    app.router.add_get("/api/sync/readings", readings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    url = f"https://127.0.0.1:{runner.addresses[0][1]}/api"
    try:
        # Default: the self-signed certificate is refused (the key is never sent).
        async with ClientSystemApiClient(url, SECRET, max_retries=0) as client:
            assert await client.health() is False
            with pytest.raises(ClientSystemError):
                await client.get_readings(10)
        # With the CA bundle: accepted.
        async with ClientSystemApiClient(url, SECRET, verify=str(cert), max_retries=0) as client:
            assert await client.health() is True
            assert (await client.get_readings(10)).readings == []
        # The loopback opt-out works, loudly.
        with caplog.at_level(logging.WARNING):
            async with ClientSystemApiClient(url, SECRET, verify=False, max_retries=0) as c:
                assert await c.health() is True
        assert any("VERIFICATION IS OFF" in r.getMessage() for r in caplog.records)
    finally:
        await runner.cleanup()


# -- SQL: values are parameters ------------------------------------------------------------------

HOSTILE_TEXTS = [
    "x'); DROP TABLE meter_reading; --",
    'Robert"); DROP TABLE tenant; --',
    "back\\slash ' \" $1 %s %(x)s {0} ; COMMIT; TRUNCATE sync_state",
    "ünïcødé 🚀 \t tab",
]


def test_hostile_text_values_round_trip_harmlessly(world: World) -> None:
    world.add_tenant(TENANT, upload=10)
    world.seed(TENANT, 20)

    async def scenario() -> None:
        async with await SyncDatabase.connect(world.sync_dsn) as db:
            for i, text in enumerate(HOSTILE_TEXTS):
                await db.add_tenant(600 + i, text, f"key-{i}-abcdef")
                row = await db.get_tenant(600 + i)
                assert row is not None and row.name == text
            batch = await db.fetch_unsynchronized(TENANT, 4)
            ids = [str(uuid.UUID(bytes=b)) for b in batch.column("meter_reading_id").to_pylist()]
            await db.mark_rejected(TENANT, ids, HOSTILE_TEXTS)

    run(scenario())
    with psycopg.connect(world.sync_dsn, autocommit=True) as conn:
        stored = {
            r[0]
            for r in conn.execute(
                "SELECT last_error FROM meter_reading WHERE tenant_id = %s AND last_error IS "
                "NOT NULL",
                (TENANT,),
            ).fetchall()
        }
        assert conn.execute("SELECT count(*) FROM meter_reading").fetchone()[0] == 20
        assert conn.execute("SELECT count(*) FROM tenant").fetchone()[0] == 1 + len(HOSTILE_TEXTS)
    assert all(any(t in s for s in stored) for t in HOSTILE_TEXTS), stored
    result = _cli(world, "tenant", "show", "600", "--json")
    assert result.returncode == 0, result.stderr
    assert HOSTILE_TEXTS[0] in result.stdout


# -- tenant isolation on the reference server ----------------------------------------------------


def test_reference_server_keeps_tenants_apart(world: World) -> None:
    world.add_tenant(TENANT, upload=50)
    world.add_tenant(OTHER, upload=50)
    world.seed(OTHER, 60)
    proc = world.spawn("upload", [OTHER])
    proc.communicate(timeout=120)
    assert proc.returncode == 0
    theirs = world.state(OTHER).server
    assert len(theirs) == 60
    a = httpx.Client(base_url=world.api_url, headers={"X-API-Key": world.keys[TENANT]})
    b = httpx.Client(base_url=world.api_url, headers={"X-API-Key": world.keys[OTHER]})
    try:
        # Read: A sees none of B's readings, even when it replays B's own cursor.
        page_b = b.get("/sync/readings", params={"limit": 10}).json()
        for params in ({"limit": 1000}, {"limit": 1000, "after": page_b["next_cursor"]}):
            got = a.get("/sync/readings", params=params)
            assert got.status_code in (200, 400)
            if got.status_code == 200:
                assert not {r["meter_reading_id"] for r in got.json()["readings"]} & theirs
        # Write: A re-sending B's readings is refused one by one and changes nothing of B's.
        stolen = [dict(r) for r in page_b["readings"][:5]]
        for r in stolen:
            r.pop("tenant_id", None)
        answer = a.post(
            "/sync/readings/batch", json={"readings": stolen}, headers={"Idempotency-Key": "x1"}
        ).json()
        assert answer["inserted"] == 0 and answer["duplicates"] == 0, answer
        assert len(answer["rejected"]) == 5
        # Claiming B in the body does not help either.
        forged = {**stolen[0], "meter_reading_id": str(uuid.uuid4()), "tenant_id": OTHER}
        answer = a.post(
            "/sync/readings/batch", json={"readings": [forged]}, headers={"Idempotency-Key": "x2"}
        ).json()
        assert answer["inserted"] == 0 and len(answer["rejected"]) == 1, answer
        # No key / a wrong key: 401.
        assert httpx.get(f"{world.api_url}/sync/readings?limit=1").status_code == 401
        wrong = httpx.get(
            f"{world.api_url}/sync/readings?limit=1", headers={"X-API-Key": "nope-nope"}
        )
        assert wrong.status_code == 401
    finally:
        a.close()
        b.close()
    assert world.state(OTHER).server == theirs
    assert world.state(TENANT).server == set()


def test_tenant_cache_repr_hides_key(world: World) -> None:
    world.add_tenant(TENANT, upload=10)

    async def scenario() -> str:
        async with await SyncDatabase.connect(world.sync_dsn) as db:
            settings = await TenantCache(db).get(TENANT)
            return repr(settings) + str(settings) + repr(await db.get_tenant(TENANT))

    text = run(scenario())
    assert world.keys[TENANT] not in text


async def test_cli_verifies_tls_and_takes_a_ca_bundle(
    world: World, self_signed: tuple[Path, Path]
) -> None:
    """``metersync download`` against an https Client System with a self-signed certificate:
    refused by default (exit 4, the key never sent), accepted with ``METERSYNC_CA_BUNDLE``."""
    from aiohttp import web

    cert, key = self_signed
    seen_keys: list[str | None] = []

    async def readings(request: web.Request) -> web.Response:
        seen_keys.append(request.headers.get("X-API-Key"))
        return web.json_response({"readings": [], "next_cursor": None})

    async def health(_: Any) -> web.Response:
        # Advertise the metersync contract with download (else: MeterTrack, no download).
        return web.json_response(
            {"status": "ok", "contract": "metersync", "idempotent": True, "download": True}
        )

    await asyncio.to_thread(world.add_tenant, TENANT, upload=10, server=False)
    app = web.Application()
    app.router.add_get("/api/health", health)
    app.router.add_get("/api/sync/readings", readings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    url = f"https://127.0.0.1:{runner.addresses[0][1]}/api"

    async def cli(**env: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "metersync",
            "download",
            "--tenant",
            str(TENANT),
            env=world.worker_env(METERSYNC_API_URL=url, **env),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=REPO,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 120)
        return proc.returncode or 0, err.decode()

    try:
        code, err = await cli()
        assert code == 4, err[-2000:]
        assert "certificate" in err.lower(), err[-2000:]
        assert seen_keys == []  # the handshake failed before any request carried the key
        code, err = await cli(METERSYNC_CA_BUNDLE=str(cert))
        assert code == 0, err[-2000:]
        assert seen_keys == [world.keys[TENANT]]
    finally:
        await runner.cleanup()

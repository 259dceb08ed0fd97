"""``metersync upload``/``download``/``sync``: exit codes from error TYPES, one JSON document on
stdout even when a command fails, one shape for a skipped (busy) operation, and "ok" only when
something moved or nothing was to move (issue 11, items 11-13). Real subprocesses, real
PostgreSQL, the reference (and MeterTrack) Client System on loopback."""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import orjson
import psycopg
import pytest

import metersync
from fix_pg import create_database, drop_database
from fix_server import ServerHandle
from metersync import errors
from metersync.cli.output import ExitCode, exit_code_for
from metersync.store import sql as q
from metersync.tools.synthetic import reading_batch

_tenant_ids = itertools.count(760_001)
_seeds = itertools.count(19_000)


def ms(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m metersync ARGS`` with a clean METERSYNC_* environment."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("METERSYNC_")}
    full_env["METERSYNC_IMPL"] = metersync.__impl__
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "metersync", *args],
        input="",
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
    )


def document(proc: subprocess.CompletedProcess[str]) -> Any:
    """The ONE JSON document on stdout (whatever the exit code)."""
    assert proc.stdout.strip(), f"nothing on stdout; stderr: {proc.stderr}"
    return orjson.loads(proc.stdout)


@pytest.fixture(scope="module")
def dsn(pg_admin_dsn: str) -> Iterator[str]:
    db_dsn = create_database(pg_admin_dsn, "ms_cli_sync")
    try:
        assert ms("--dsn", db_dsn, "migrate").returncode == 0
        yield db_dsn
    finally:
        drop_database(pg_admin_dsn, db_dsn)


def add_tenant(dsn: str, server: ServerHandle | None, *, upload: int = 100) -> int:
    from metersync.store.database import SyncDatabase

    tenant_id = next(_tenant_ids)
    key = f"sk_sync_{secrets.token_hex(12)}"

    async def go() -> None:
        async with await SyncDatabase.connect(dsn) as db:
            await db.add_tenant(tenant_id, f"T{tenant_id}", key, upload_batch_size=upload)

    asyncio.run(go())
    if server is not None:
        server.register_tenant(tenant_id, key, f"T{tenant_id}")
    return tenant_id


def seed(dsn: str, tenant_id: int, n: int, **kwargs: Any) -> None:
    from metersync.store.database import SyncDatabase

    async def go() -> None:
        async with await SyncDatabase.connect(dsn) as db:
            batch = reading_batch(n, seed=next(_seeds), tenant_id=tenant_id, **kwargs)
            await db.insert_readings(batch, 5000)

    asyncio.run(go())


def pending(dsn: str, tenant_id: int) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM meter_reading WHERE tenant_id = %s AND NOT is_synchronized",
            (tenant_id,),
        ).fetchone()
    assert row is not None
    return int(row[0])


# -- exit codes come from types ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (errors.AuthError("x", status=401), ExitCode.AUTH),
        (errors.RemoteUnavailableError("x"), ExitCode.REMOTE),
        (errors.PayloadTooLargeError("x", status=413), ExitCode.TOO_LARGE),
        (errors.MalformedPageError("x"), ExitCode.CONTRACT),
        (errors.InconsistentResponseError("x"), ExitCode.CONTRACT),
        (errors.BadRequestError("x", status=400), ExitCode.CONTRACT),
        (errors.OutcomeUnknownError("x"), ExitCode.IN_DOUBT),
        (errors.DatabaseUnavailable("x"), ExitCode.DATABASE),
        (errors.TenantLockLostError("x"), ExitCode.DATABASE),
        (errors.ConfigError("x"), ExitCode.USAGE),
        (errors.UnknownTenantError(5), ExitCode.USAGE),
        (errors.SchemaError("x"), ExitCode.USAGE),
        (KeyboardInterrupt(), ExitCode.INTERRUPTED),
        (RuntimeError("x"), ExitCode.UNEXPECTED),
    ],
)
def test_exit_code_by_type(exc: BaseException, code: ExitCode) -> None:
    assert exit_code_for(exc) == code


def test_exit_code_ignores_the_message_text() -> None:
    """What a message says does not decide the code (the old substring matching did)."""
    assert exit_code_for(errors.AuthError("RemoteUnavailableError DatabaseUnavailable")) == 3
    assert exit_code_for(errors.ConfigError("ConnectError ReadTimeout")) == 2
    assert exit_code_for(RuntimeError("DatabaseUnavailable")) == 1


def test_help_lists_every_code() -> None:
    text = " ".join(ms("--help").stdout.split())
    for words in ("7 batch too large", "8 the Client System broke the contract",
                  "9 readings held in doubt", "130 interrupted"):  # fmt: skip
        assert words in text


# -- against the reference server ---------------------------------------------------------------


def test_413_exits_7_with_a_json_error(dsn: str, reference_server: ServerHandle) -> None:
    tenant = add_tenant(dsn, reference_server, upload=50)
    seed(dsn, tenant, 50)
    reference_server.set_faults("fail=1:413")
    proc = ms("--dsn", dsn, "--api-url", reference_server.base_url, "upload", "--tenant",
              str(tenant), "--json")  # fmt: skip
    assert proc.returncode == ExitCode.TOO_LARGE, proc.stderr
    doc = document(proc)
    assert doc["exit_code"] == 7
    assert doc["error"]["type"] == "PayloadTooLargeError"
    assert "upload_batch_size" in doc["error"]["message"]
    assert doc["error"]["tenant_id"] == tenant and doc["error"]["operation"] == "upload"
    (op,) = doc["operations"]
    assert op["outcome"] == "error" and op["error_type"] == "PayloadTooLargeError"
    assert pending(dsn, tenant) == 50  # nothing marked


def test_malformed_page_exits_8(dsn: str, reference_server: ServerHandle) -> None:
    tenant = add_tenant(dsn, reference_server)
    from metersync import codec

    readings = orjson.loads(codec.json_rows(reading_batch(20, seed=next(_seeds))))
    reference_server.load_readings(tenant, readings)
    reference_server.set_faults("malformed_page=1")
    proc = ms("--dsn", dsn, "--api-url", reference_server.base_url, "download", "--tenant",
              str(tenant), "--json")  # fmt: skip
    assert proc.returncode == ExitCode.CONTRACT, proc.stderr
    doc = document(proc)
    assert doc["error"]["type"] == "MalformedPageError" and doc["exit_code"] == 8


def test_unreachable_client_system_exits_4(dsn: str) -> None:
    tenant = add_tenant(dsn, None)
    seed(dsn, tenant, 5)
    proc = ms("--dsn", dsn, "--api-url", "http://127.0.0.1:1/api", "upload", "--tenant",
              str(tenant), "--json")  # fmt: skip
    assert proc.returncode == ExitCode.REMOTE, proc.stderr
    assert document(proc)["error"]["exit_code"] == 4


def test_failure_before_any_work_prints_one_json_document(dsn: str) -> None:
    proc = ms("--dsn", dsn, "upload", "--tenant", "999999", "--json")
    assert proc.returncode == ExitCode.USAGE
    doc = document(proc)  # exactly one document: orjson refuses trailing data
    assert doc["error"] == {
        "type": "UnknownTenantError",
        "message": "unknown tenant 999999: no row in table tenant",
        "exit_code": 2,
    }
    assert doc["operations"] == [] and doc["exit_code"] == 2
    assert proc.stderr.startswith("metersync: error: unknown tenant 999999")


def test_bad_option_with_json_is_a_json_document() -> None:
    proc = ms("upload", "--json")  # no tenant, no dsn
    assert proc.returncode == ExitCode.USAGE
    assert document(proc)["error"]["type"] == "ConfigError"


def test_refused_key_exits_3_with_results_and_error(
    dsn: str, reference_server: ServerHandle
) -> None:
    bad = add_tenant(dsn, None)  # unknown to the server: 401
    good = add_tenant(dsn, reference_server)
    seed(dsn, bad, 10)
    seed(dsn, good, 10)
    proc = ms("--dsn", dsn, "--api-url", reference_server.base_url, "sync", "--once",
              "--all-tenants", "--json")  # fmt: skip
    assert proc.returncode == ExitCode.AUTH, proc.stderr
    doc = document(proc)
    # (Tenants of earlier tests are unknown to the freshly reset server too: refused as well.)
    assert doc["error"]["type"] == "AuthError" and doc["error"]["tenant_id"] != good
    by_tenant = {(o["tenant_id"], o["operation"]): o for o in doc["operations"]}
    assert by_tenant[(good, "upload")]["outcome"] == "ok"
    assert by_tenant[(good, "upload")]["confirmed"] == 10
    assert by_tenant[(bad, "upload")]["outcome"] == "error"


def test_busy_tenant_is_skipped_with_the_same_shape(
    dsn: str, reference_server: ServerHandle
) -> None:
    tenant = add_tenant(dsn, reference_server)
    seed(dsn, tenant, 10)
    api = ["--dsn", dsn, "--api-url", reference_server.base_url]
    with psycopg.connect(dsn, autocommit=True) as holder:  # another worker holds the lock
        got = holder.execute(q.TRY_LOCKS, ([q.lock_key("upload", tenant)],)).fetchone()
        assert got == (True,)
        busy = ms(*api, "upload", "--tenant", str(tenant), "--json")
    normal = ms(*api, "upload", "--tenant", str(tenant), "--json")
    assert busy.returncode == 0 and normal.returncode == 0, busy.stderr + normal.stderr
    (skipped,) = document(busy)["operations"]
    (ran,) = document(normal)["operations"]
    assert set(skipped) == set(ran)  # one shape
    assert skipped["outcome"] == "busy" and skipped["ok"] is True
    assert skipped["confirmed"] == 0 and "another worker" in skipped["skip_reason"]
    assert ran["outcome"] == "ok" and ran["confirmed"] == 10 and ran["skip_reason"] is None


def test_all_rejected_is_not_ok_in_sync_log_or_status(
    dsn: str, reference_server: ServerHandle
) -> None:
    tenant = add_tenant(dsn, reference_server)
    seed(dsn, tenant, 12, meters=1)  # every reading has meter_id 1
    reference_server.set_faults("reject=meter_id:1")
    api = ["--dsn", dsn, "--api-url", reference_server.base_url]
    proc = ms(*api, "upload", "--tenant", str(tenant), "--json")
    assert proc.returncode == ExitCode.PARTIAL, proc.stderr
    (op,) = document(proc)["operations"]
    assert op["outcome"] == "rejected" and op["ok"] is False and op["rejected"] == 12
    status = document(ms(*api, "status", "--tenant", str(tenant), "--json"))
    (cycle,) = status["tenants"][0]["last_cycles"]
    assert cycle["success"] is False and "rejected" in cycle["error"]
    human = ms(*api, "status", "--tenant", str(tenant), "-q")
    assert " ok " not in human.stdout.replace("│", " ")


def test_sync_once_against_metertrack_uploads_only_and_exits_0(
    dsn: str, metertrack_server: ServerHandle
) -> None:
    tenant = add_tenant(dsn, metertrack_server)
    seed(dsn, tenant, 10)
    api = ["--dsn", dsn, "--api-url", metertrack_server.base_url]
    proc = ms(*api, "sync", "--once", "--tenant", str(tenant), "--json")
    assert proc.returncode == 0, proc.stderr
    ops = {o["operation"]: o for o in document(proc)["operations"]}
    assert ops["upload"]["confirmed"] == 10
    assert ops["download"]["outcome"] == "skipped"
    assert "no download" in ops["download"]["skip_reason"]
    only_download = ms(*api, "download", "--tenant", str(tenant), "--json")
    assert only_download.returncode == ExitCode.USAGE
    assert "no download" in document(only_download)["error"]["message"]


def test_second_signal_abandons_in_flight_and_exits_130(
    dsn: str, reference_server: ServerHandle
) -> None:
    import signal
    import time

    tenant = add_tenant(dsn, reference_server, upload=20)
    seed(dsn, tenant, 2000)
    reference_server.set_faults("delay=0.3")  # every POST is on the wire for a while
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERSYNC_")}
    env["METERSYNC_IMPL"] = metersync.__impl__
    proc = subprocess.Popen(
        [sys.executable, "-m", "metersync", "--dsn", dsn, "--api-url",
         reference_server.base_url, "sync", "--tenant", str(tenant)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        for _ in range(600):
            if reference_server.rows(tenant) > 0 or proc.poll() is not None:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
        proc.send_signal(signal.SIGINT)  # impatient: do not wait for the batches in flight
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    reference_server.clear_faults()
    assert proc.returncode == ExitCode.INTERRUPTED, err
    assert "stopped cleanly" not in err and "interrupted" in err
    assert "Traceback" not in err
    with psycopg.connect(dsn, autocommit=True) as conn:
        marked = {
            r[0]
            for r in conn.execute(
                "SELECT meter_reading_id::text FROM meter_reading "
                "WHERE tenant_id = %s AND is_synchronized",
                (tenant,),
            ).fetchall()
        }
    with psycopg.connect(reference_server.dsn, autocommit=True) as conn:
        stored = {
            r[0]
            for r in conn.execute(
                "SELECT meter_reading_id::text FROM cs_meter_reading WHERE tenant_id = %s",
                (tenant,),
            ).fetchall()
        }
    # Nothing marked without a confirmation (an abandoned POST may still have been stored:
    # those readings go again next run and count as duplicates).
    assert marked <= stored and len(marked) % 20 == 0

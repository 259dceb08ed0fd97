"""The ``metersync`` command line, run as a real subprocess against real PostgreSQL and the
reference Client System: happy paths, ``--json`` shapes, exit codes and the bad-input lines."""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

import metersync
from fix_pg import create_database, drop_database
from fix_server import ServerHandle, serve_process
from metersync.tools.synthetic import reading_batch

_tenant_ids = itertools.count(700_001)
_seeds = itertools.count(9_000)


def ms(
    *args: str,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    cwd: Path | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m metersync ARGS`` with a clean METERSYNC_* environment."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("METERSYNC_")}
    full_env["METERSYNC_IMPL"] = metersync.__impl__
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "metersync", *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
    )


def as_json(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.returncode == 0, proc.stderr
    return orjson.loads(proc.stdout)


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The stderr of a failed command: exactly one line, no traceback."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith("metersync: error: ")
    return lines[0]


@pytest.fixture(scope="module")
def dsn(pg_admin_dsn: str) -> Iterator[str]:
    """A sync database migrated through ``metersync migrate`` (shared by the module)."""
    db_dsn = create_database(pg_admin_dsn, "ms_cli")
    try:
        first = as_json(ms("--dsn", db_dsn, "migrate", "--json"))
        assert first["changed"] is True and first["actions"]
        yield db_dsn
    finally:
        drop_database(pg_admin_dsn, db_dsn)


def add_tenant(
    dsn: str,
    server: ServerHandle | None,
    *,
    upload: int = 100,
    download: int = 1000,
    via_cli: bool = False,
) -> tuple[int, str]:
    """A new tenant with a fresh key, registered on ``server`` when given.

    ``via_cli`` goes through ``metersync tenant add`` (key in the environment); otherwise the
    adapter adds it directly, which saves a subprocess in tests about other commands.
    """
    from metersync.store.database import SyncDatabase

    tenant_id = next(_tenant_ids)
    key = f"sk_cli_{secrets.token_hex(12)}"
    if via_cli:
        proc = ms(
            "--dsn", dsn, "tenant", "add", str(tenant_id), "--name", f"Tenant {tenant_id}",
            "--upload-batch-size", str(upload), "--download-batch-size", str(download), "--json",
            env={"METERSYNC_API_KEY": key},
        )  # fmt: skip
        doc = as_json(proc)
        assert doc["tenant_id"] == tenant_id and doc["upload_batch_size"] == upload
        assert key not in proc.stdout + proc.stderr
    else:

        async def go() -> None:
            async with await SyncDatabase.connect(dsn) as db:
                await db.add_tenant(
                    tenant_id,
                    f"Tenant {tenant_id}",
                    key,
                    upload_batch_size=upload,
                    download_batch_size=download,
                )

        asyncio.run(go())
    if server is not None:
        server.register_tenant(tenant_id, key, f"Tenant {tenant_id}")
    return tenant_id, key


def seed(dsn: str, tenant_id: int, n: int) -> None:
    """Insert ``n`` pending readings through the real adapter."""
    from metersync.store.database import SyncDatabase

    async def go() -> None:
        async with await SyncDatabase.connect(dsn) as db:
            await db.insert_readings(reading_batch(n, seed=next(_seeds), tenant_id=tenant_id), 5000)

    asyncio.run(go())


def scalar(dsn: str, sql: str, *params: Any) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(sql, params).fetchone()
        return None if row is None else row[0]


# -- no database needed ------------------------------------------------------------------------


def test_version_shows_version_and_impl() -> None:
    proc = ms("--version")
    assert proc.returncode == 0
    assert metersync.__version__ in proc.stdout
    assert f"codec implementation: {metersync.__impl__}" in proc.stdout
    from metersync.store.copy_rows import IMPL as reader

    assert f"COPY reader: {reader};" in proc.stdout


def test_help_documents_exit_codes_and_commands() -> None:
    proc = ms("--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "Exit codes: 0 ok" in text and "6 sync database unavailable" in text
    assert "3 authentication failure" in text and "5 partial" in text
    assert "130 interrupted" in text  # issue 11.17: the second Ctrl-C's code is documented
    for command in ("migrate", "tenant", "upload", "download", "sync", "status", "requeue",
                    "serve", "demo", "bench"):  # fmt: skip
        assert command in proc.stdout


def test_unknown_command_is_usage_error() -> None:
    proc = ms("frobnicate")
    assert proc.returncode == 2
    assert "No such command 'frobnicate'" in one_error_line(proc)


def test_missing_dsn_says_how_to_give_one(tmp_path: Path) -> None:
    proc = ms("status", cwd=tmp_path)
    assert proc.returncode == 2
    assert "METERSYNC_DSN" in one_error_line(proc)


def test_unknown_toml_key_is_named(tmp_path: Path) -> None:
    (tmp_path / "metersync.toml").write_text('dsn = "dbname=x"\nuplod_batch = 3\n')
    proc = ms("status", cwd=tmp_path)
    assert proc.returncode == 2
    assert "unknown key 'uplod_batch'" in one_error_line(proc)


def test_unreachable_database_names_the_host() -> None:
    proc = ms("--dsn", "host=127.0.0.1 port=1 dbname=nowhere connect_timeout=3", "status")
    assert proc.returncode == 6
    line = one_error_line(proc)
    assert "host 127.0.0.1 port 1 database nowhere" in line


def test_api_key_argument_does_not_exist(dsn: str) -> None:
    proc = ms("--dsn", dsn, "tenant", "add", "5", "--name", "x", "--api-key", "sk_secret_value")
    assert proc.returncode == 2
    assert "No such option" in one_error_line(proc)


def test_traceback_only_with_verbose() -> None:
    bad = "host=127.0.0.1 port=1 dbname=nowhere connect_timeout=3"
    assert "Traceback" not in ms("--dsn", bad, "status").stderr
    assert "Traceback" in ms("-v", "--dsn", bad, "status").stderr


# -- migrate and tenants -----------------------------------------------------------------------


def test_migrate_again_changes_nothing(dsn: str) -> None:
    doc = as_json(ms("--dsn", dsn, "migrate", "--json"))
    assert doc == {"actions": [], "changed": False}
    human = ms("--dsn", dsn, "migrate")
    assert human.returncode == 0 and "up to date" in human.stdout


def test_tenant_add_list_show_set(dsn: str) -> None:
    tenant_id, key = add_tenant(dsn, None, upload=250, download=3000, via_cli=True)
    listed = as_json(ms("--dsn", dsn, "tenant", "list", "--json"))
    row = next(t for t in listed["tenants"] if t["tenant_id"] == tenant_id)
    assert row["upload_batch_size"] == 250 and row["download_batch_size"] == 3000

    shown = ms("--dsn", dsn, "tenant", "show", str(tenant_id), "--json")
    doc = as_json(shown)
    assert doc["api_key"] == f"sk_…{key[-4:]}"
    assert doc["effective"] == {
        "upload_batch_size": 250,
        "download_batch_size": 3000,
        "source": "tenant",
    }
    human = ms("--dsn", dsn, "tenant", "show", str(tenant_id))
    assert human.returncode == 0 and f"Tenant {tenant_id}" in human.stdout
    for proc in (shown, human):
        assert key not in proc.stdout + proc.stderr
        assert key[:-4] not in proc.stdout + proc.stderr

    changed = as_json(
        ms("--dsn", dsn, "tenant", "set", str(tenant_id), "--upload-batch-size", "10000", "--json")
    )
    assert changed["upload_batch_size"] == 10000 and changed["download_batch_size"] == 3000


def test_tenant_add_reads_key_from_stdin(dsn: str) -> None:
    tenant_id = next(_tenant_ids)
    key = f"sk_stdin_{secrets.token_hex(10)}"
    proc = ms("--dsn", dsn, "tenant", "add", str(tenant_id), "--name", "Piped", stdin=key + "\n")
    assert proc.returncode == 0, proc.stderr
    assert key not in proc.stdout + proc.stderr
    assert scalar(dsn, "SELECT api_key FROM tenant WHERE tenant_id = %s", tenant_id) == key


def test_tenant_add_without_key_is_refused(dsn: str) -> None:
    proc = ms("--dsn", dsn, "tenant", "add", str(next(_tenant_ids)), "--name", "Keyless")
    assert proc.returncode == 2
    assert "METERSYNC_API_KEY" in one_error_line(proc)


@pytest.mark.parametrize("size", ["0", "10001"])
def test_invalid_batch_size_names_the_range(dsn: str, size: str) -> None:
    tenant_id, _ = add_tenant(dsn, None)
    proc = ms("--dsn", dsn, "tenant", "set", str(tenant_id), "--download-batch-size", size)
    assert proc.returncode == 2
    assert f"invalid download batch size {size}: the valid range is 1..10000" in one_error_line(
        proc
    )
    stored = scalar(dsn, "SELECT download_batch_size FROM tenant WHERE tenant_id = %s", tenant_id)
    assert stored == 1000


def test_unknown_tenant_is_named(dsn: str) -> None:
    for args in (
        ("tenant", "show", "999999"),
        ("tenant", "set", "999999", "--upload-batch-size", "5"),
        ("upload", "--tenant", "999999"),
        ("status", "--tenant", "999999"),
    ):
        proc = ms("--dsn", dsn, *args)
        assert proc.returncode == 2, args
        assert "unknown tenant 999999" in one_error_line(proc)


def test_unsupported_column_type_is_named(pg_admin_dsn: str) -> None:
    db_dsn = create_database(pg_admin_dsn, "ms_cli_bad")
    try:
        assert ms("--dsn", db_dsn, "migrate").returncode == 0
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            conn.execute("ALTER TABLE meter_reading ADD COLUMN location point")
        tenant_id, _ = add_tenant(db_dsn, None)
        proc = ms("--dsn", db_dsn, "upload", "--tenant", str(tenant_id))
        assert proc.returncode == 2
        line = one_error_line(proc)
        assert "location" in line and "point" in line
    finally:
        drop_database(pg_admin_dsn, db_dsn)


# -- sync against the reference server ---------------------------------------------------------


def test_upload_download_sync_once_and_status(dsn: str, reference_server: ServerHandle) -> None:
    api = ["--dsn", dsn, "--api-url", reference_server.base_url]
    tenant_id, key = add_tenant(dsn, reference_server, upload=300, download=700)
    seed(dsn, tenant_id, 1000)

    up = as_json(ms(*api, "upload", "--tenant", str(tenant_id), "--json"))
    assert up["exit_code"] == 0 and len(up["operations"]) == 1
    op = up["operations"][0]
    assert op["operation"] == "upload" and op["ok"] is True
    assert op["confirmed"] == 1000 and op["batches"] == 4 and op["upload_batch_size"] == 300
    assert reference_server.rows(tenant_id) == 1000

    # Readings that exist only on the Client System come down with `download`.
    extra = reading_batch(1500, seed=next(_seeds))
    from metersync import codec

    reference_server.load_readings(tenant_id, orjson.loads(codec.json_rows(extra)))
    down = as_json(ms(*api, "download", "--tenant", str(tenant_id), "--json"))
    op = down["operations"][0]
    assert op["operation"] == "download" and op["inserted"] == 1500
    # The reference server filters by site (issue 12): the 1000 readings this site uploaded do
    # not come back down, so nothing is skipped as already present.
    assert op["skipped"] == 0
    assert op["pages"] >= 3  # 1500 readings in pages of at most 700

    once = ms(*api, "sync", "--once", "--tenant", str(tenant_id))
    assert once.returncode == 0, once.stderr
    assert "summary" in once.stdout and "upload" in once.stdout and "download" in once.stdout
    assert reference_server.rows(tenant_id) == 2500  # nothing was uploaded back

    status = ms(*api, "status", "--tenant", str(tenant_id), "--json")
    doc = as_json(status)
    assert key not in status.stdout + status.stderr
    (t,) = doc["tenants"]
    assert t["tenant_id"] == tenant_id
    assert (t["pending"], t["failed"], t["quarantined"], t["synchronized"]) == (0, 0, 0, 2500)
    assert t["oldest_pending_age_s"] is None
    ops = [c["operation"] for c in t["last_cycles"]]
    assert len(ops) == 3 and set(ops) <= {"upload", "download"}
    assert all(c["success"] for c in t["last_cycles"])

    human = ms(*api, "status")
    assert human.returncode == 0 and str(tenant_id) in human.stdout
    assert key not in human.stdout + human.stderr


def test_rejections_quarantine_and_requeue(dsn: str, reference_server: ServerHandle) -> None:
    api = ["--dsn", dsn, "--api-url", reference_server.base_url]
    env = {"METERSYNC_MAX_RETRIES": "1"}
    tenant_id, _ = add_tenant(dsn, reference_server, upload=200)
    seed(dsn, tenant_id, 400)
    bad = scalar(
        dsn, "SELECT count(*) FROM meter_reading WHERE tenant_id = %s AND meter_id = 7", tenant_id
    )
    assert bad > 0
    reference_server.set_faults("reject=meter_id:7")

    up = ms(*api, "upload", "--tenant", str(tenant_id), "--json", env=env)
    assert up.returncode == 5  # partial
    op = orjson.loads(up.stdout)["operations"][0]
    assert op["rejected"] == bad and op["confirmed"] == 400 - bad

    t = as_json(ms(*api, "status", "--tenant", str(tenant_id), "--json", env=env))["tenants"][0]
    assert t["quarantined"] == bad and t["synchronized"] == 400 - bad

    reference_server.clear_faults()
    requeued = as_json(ms(*api, "requeue", "--tenant", str(tenant_id), "--json", env=env))
    assert requeued == {"tenant_id": tenant_id, "requeued": bad}
    t = as_json(ms(*api, "status", "--tenant", str(tenant_id), "--json", env=env))["tenants"][0]
    assert t["quarantined"] == 0 and t["pending"] == bad

    assert ms(*api, "upload", "--tenant", str(tenant_id), env=env).returncode == 0
    assert reference_server.rows(tenant_id) == 400


def test_refused_key_exits_3_and_marks_nothing(dsn: str, reference_server: ServerHandle) -> None:
    tenant_id, key = add_tenant(dsn, None)  # not registered on the server: 401
    seed(dsn, tenant_id, 50)
    proc = ms("--dsn", dsn, "--api-url", reference_server.base_url, "upload", "--tenant",
              str(tenant_id))  # fmt: skip
    assert proc.returncode == 3
    assert key not in proc.stdout + proc.stderr
    pending = scalar(
        dsn,
        "SELECT count(*) FROM meter_reading WHERE tenant_id = %s AND NOT is_synchronized",
        tenant_id,
    )
    assert pending == 50


def test_unreachable_client_system_exits_4(dsn: str) -> None:
    tenant_id, _ = add_tenant(dsn, None)
    seed(dsn, tenant_id, 10)
    proc = ms("--dsn", dsn, "--api-url", "http://127.0.0.1:1/api", "upload", "--tenant",
              str(tenant_id), "--json")  # fmt: skip
    assert proc.returncode == 4, proc.stderr
    op = orjson.loads(proc.stdout)["operations"][0]
    assert op["confirmed"] == 0 and op["ok"] is False


def _sync_loop_under_way(dsn: str, server: ServerHandle, tenant_id: int) -> subprocess.Popen[str]:
    """``metersync sync`` (the loop) for one tenant in a subprocess, returned once the server
    holds a first reading of it (or the process ended)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERSYNC_")}
    env["METERSYNC_IMPL"] = metersync.__impl__
    proc = subprocess.Popen(
        [sys.executable, "-m", "metersync", "--dsn", dsn, "--api-url",
         server.base_url, "sync", "--tenant", str(tenant_id), "--interval", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        for _ in range(600):
            if server.rows(tenant_id) > 0 or proc.poll() is not None:
                break
            time.sleep(0.05)
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    return proc


def test_sigterm_stops_the_loop_cleanly(dsn: str, reference_server: ServerHandle) -> None:
    tenant_id, _ = add_tenant(dsn, reference_server, upload=50)
    seed(dsn, tenant_id, 3000)
    reference_server.set_faults("delay=0.05")  # slow batches: the signal lands mid-cycle
    proc = _sync_loop_under_way(dsn, reference_server, tenant_id)
    try:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    synced = scalar(
        dsn,
        "SELECT count(*) FROM meter_reading WHERE tenant_id = %s AND is_synchronized",
        tenant_id,
    )
    # No batch half-marked: what the server holds is exactly what is marked, in whole batches.
    assert synced == reference_server.rows(tenant_id)
    assert synced % 50 == 0 and synced > 0


def test_serve_answers_health_and_stops_on_sigterm(pg_admin_dsn: str) -> None:
    import httpx

    cs_dsn = create_database(pg_admin_dsn, "ms_cli_cs")
    try:
        with serve_process("--port", "0", "--dsn", cs_dsn) as (_proc, base_url):
            assert base_url.startswith("http://127.0.0.1:"), base_url
            assert base_url.endswith("/api"), base_url
            assert httpx.get(base_url + "/health").json()["status"] == "ok"
    finally:
        drop_database(pg_admin_dsn, cs_dsn)


def test_serve_rejects_a_bad_fault_spec() -> None:
    proc = ms("serve", "--faults", "explode=3")
    assert proc.returncode == 2
    assert "explode" in one_error_line(proc)


def test_ca_bundle_flag_must_name_an_existing_file(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-ca.pem"
    proc = ms("--ca-bundle", str(missing), "status")
    assert proc.returncode == 2
    assert "no-such-ca.pem" in proc.stderr and "does not exist" in proc.stderr
    assert "--ca-bundle" in ms("--help").stdout


# -- issue 11.14 / 11.15: clear bad-input lines, never "unexpected" ---------------------------


@pytest.mark.parametrize("command", ["add", "show", "set"])
def test_tenant_id_out_of_bigint_range_is_bad_input(dsn: str, command: str) -> None:
    extra = {"add": ["--name", "x"], "show": [], "set": ["--upload-batch-size", "5"]}[command]
    proc = ms("--dsn", dsn, "tenant", command, "9223372036854775808", *extra,
              env={"METERSYNC_API_KEY": "sk_bigint_0123456789"})  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc)
    assert "unexpected" not in line
    assert "9223372036854775808" in line and "at most 9223372036854775807" in line


def test_tenant_set_on_a_missing_column_says_migrate(pg_admin_dsn: str) -> None:
    db_dsn = create_database(pg_admin_dsn, "ms_cli_nocol")
    try:
        as_json(ms("--dsn", db_dsn, "migrate", "--json"))
        tenant_id, _ = add_tenant(db_dsn, None)
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            conn.execute("ALTER TABLE tenant DROP COLUMN upload_batch_size")
        proc = ms("--dsn", db_dsn, "tenant", "set", str(tenant_id), "--upload-batch-size", "50")
        assert proc.returncode == 2, proc.stderr
        line = one_error_line(proc)
        assert "unexpected" not in line
        assert "upload_batch_size" in line and "metersync migrate" in line
    finally:
        drop_database(pg_admin_dsn, db_dsn)


def test_flags_are_named_as_typed(dsn: str) -> None:
    proc = ms("--dsn", dsn, "upload", "--tenant", "-1")
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "--tenant must be a positive tenant id, got -1" in line
    assert "--tenant-id" not in line
    # 0 would quarantine every pending reading before its first attempt: refused.
    proc = ms("--dsn", dsn, "status", "--max-retries", "0")
    assert proc.returncode == 2
    assert "--max-retries must be >= 1, got 0" in one_error_line(proc)


def test_plain_http_refusal_names_the_command_line_way(dsn: str) -> None:
    tenant_id, _ = add_tenant(dsn, None)
    seed(dsn, tenant_id, 2)
    proc = ms("--dsn", dsn, "--api-url", "http://cs.example.com/api", "upload", "--tenant",
              str(tenant_id))  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "clear text" in proc.stderr
    assert "--api-url" in proc.stderr and "--ca-bundle" in proc.stderr
    assert "(or allow_insecure=True)" not in proc.stderr


def test_dns_failure_says_its_prefix_once() -> None:
    proc = ms("--dsn", "host=no-such-host.invalid dbname=x connect_timeout=5", "status")
    assert proc.returncode == 6
    line = one_error_line(proc)
    assert line.count("cannot connect to the sync database") == 1, line
    assert "no-such-host.invalid" in line


def test_second_sigint_abandons_and_exits_130(dsn: str, reference_server: ServerHandle) -> None:
    """First Ctrl-C: finish the batch in flight; second: abort now, exit 130, "interrupted",
    and never "stopped cleanly"; nothing is marked that the server did not store."""
    tenant_id, _ = add_tenant(dsn, reference_server, upload=50)
    seed(dsn, tenant_id, 3000)
    reference_server.set_faults("delay=0.3")  # slow batches: both signals land mid-batch
    proc = _sync_loop_under_way(dsn, reference_server, tenant_id)
    try:
        proc.send_signal(signal.SIGINT)
        time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    finally:
        reference_server.set_faults("")
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "stopped cleanly" not in err
    assert "Traceback" not in err
    synced = scalar(
        dsn,
        "SELECT count(*) FROM meter_reading WHERE tenant_id = %s AND is_synchronized",
        tenant_id,
    )
    assert synced <= reference_server.rows(tenant_id)


# -- issue 11.16: names are data, not markup or terminal control ------------------------------

EVIL = "[bold red]Evil[/bold red]\x1b[31mX"


def test_hostile_tenant_name_prints_as_written(dsn: str) -> None:
    tenant_id = next(_tenant_ids)
    key = f"sk_cli_{secrets.token_hex(12)}"
    added = ms("--dsn", dsn, "tenant", "add", str(tenant_id), "--name", EVIL,
               env={"METERSYNC_API_KEY": key})  # fmt: skip
    assert added.returncode == 0, added.stderr
    wide = {"COLUMNS": "400"}  # no wrapping inside the name column
    outputs = [
        added,
        ms("--dsn", dsn, "tenant", "list", env=wide),
        ms("--dsn", dsn, "tenant", "show", str(tenant_id), env=wide),
        ms("--dsn", dsn, "status", "--tenant", str(tenant_id), env=wide),
    ]
    for proc in outputs:
        assert proc.returncode == 0, proc.stderr
        text = proc.stdout + proc.stderr
        assert "\x1b" not in text  # no raw escape reaches the terminal (output is not a tty)
        assert "[bold red]Evil[/bold red]" in text  # markup printed as written, not styled
        assert "\\x1b[31mX" in text  # the escape shown, visibly
    # The stored name is unchanged: only its rendering is escaped.
    assert scalar(dsn, "SELECT name FROM tenant WHERE tenant_id = %s", tenant_id) == EVIL
    # --json carries the real name (JSON escapes the control character itself).
    doc = as_json(ms("--dsn", dsn, "tenant", "show", str(tenant_id), "--json"))
    assert doc["name"] == EVIL


def test_error_lines_and_logs_escape_control_characters() -> None:
    """Errors and log lines quote data (server answers, names): escaped, on one line."""
    import io
    import logging

    from metersync.cli._app import TerminalSafeFormatter
    from metersync.cli._safe import markup_safe, terminal_safe
    from metersync.cli.output import Output

    stream = io.StringIO()
    saved = sys.stderr
    sys.stderr = stream
    try:
        Output().error(f"tenant 5: server said {EVIL}\nsecond line\u202e")
    finally:
        sys.stderr = saved
    written = stream.getvalue()
    assert written.count("\n") == 1 and "\x1b" not in written and "\u202e" not in written
    assert "[bold red]Evil[/bold red]\\x1b[31mX second line\\u202e" in written
    record = logging.LogRecord("metersync", logging.ERROR, __file__, 1, "name %s", (EVIL,), None)
    assert "\x1b" not in TerminalSafeFormatter("%(message)s").format(record)
    assert terminal_safe("Zürich 東京") == "Zürich 東京"
    assert markup_safe("[b]x[/b]") == "\\[b]x\\[/b]"

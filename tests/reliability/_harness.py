"""Shared machinery of the reliability tests: a world (sync database + reference server with
tenants), seeding, worker processes, and the invariant checks that define "nothing lost".

The invariants, checked after every kill and at the end:

* **confirmed before marked**: every reading marked synchronized locally is on the Client System
  (a reading marked without the Client System's confirmation would be lost for good);
* **nothing invented**: the Client System holds no reading of the tenant that the site lacks;
* **nothing half-marked**: ``is_synchronized`` and ``sync_status = 'synchronized'`` agree;
* at the end, **exactly once**: the Client System's id set equals the site's, each id stored
  once, each inserted once (server counter), every reading marked synchronized.

Only the public library, the CLI, the reference server's admin API and plain SQL are used here.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pyarrow as pa

from metersync import codec
from metersync.tools.synthetic import reading_batch

HERE = Path(__file__).resolve().parent
#: Download page size of the crash and fault tests.
PAGE = 50
WORKER = HERE / "_worker.py"
REPO = HERE.parent.parent


@dataclass
class TenantState:
    """One tenant's readings as both sides see them at one moment."""

    tenant_id: int
    local: set[str]
    local_synced: set[str]
    half_marked: int
    server: set[str]
    server_rows: int
    server_foreign: int  # server rows with one of our ids under another tenant


@dataclass
class World:
    """A migrated sync database and the reference server, with tenants known to both."""

    sync_dsn: str
    server: Any  # fix_server.ServerHandle
    keys: dict[int, str] = field(default_factory=dict)
    seeded: dict[int, int] = field(default_factory=dict)
    _seed: int = 1

    @property
    def api_url(self) -> str:
        return self.server.base_url

    @property
    def cs_dsn(self) -> str:
        return self.server.dsn

    # -- set-up ---------------------------------------------------------------------------------

    def add_tenant(
        self,
        tenant_id: int,
        *,
        upload: int | None = None,
        download: int | None = None,
        name: str | None = None,
        server: bool = True,
    ) -> str:
        """Create the tenant locally (with a fresh key) and on the reference server."""
        key = f"rel-key-{secrets.token_hex(16)}"
        run(
            _add_tenant(
                self.sync_dsn, tenant_id, name or f"tenant {tenant_id}", key, upload, download
            )
        )
        if server:
            self.server.register_tenant(tenant_id, key, name or f"tenant {tenant_id}")
        self.keys[tenant_id] = key
        return key

    def seed(self, tenant_id: int, n: int, **kwargs: Any) -> pa.RecordBatch:
        """Insert ``n`` pending synthetic readings for the tenant (unique ids across the world)."""
        self._seed += 1
        batch = reading_batch(n, seed=self._seed * 7919 + tenant_id, **kwargs)
        run(_insert(self.sync_dsn, tenant_id, batch))
        self.seeded[tenant_id] = self.seeded.get(tenant_id, 0) + n
        return batch

    # -- observation ----------------------------------------------------------------------------

    def _local_rows(self, tenant_id: int) -> list[tuple[str, bool, str]]:
        """``(id, is_synchronized, sync_status)`` of the tenant's readings in the sync database."""
        with psycopg.connect(self.sync_dsn, autocommit=True) as conn:
            return conn.execute(
                "SELECT meter_reading_id::text, is_synchronized, sync_status "
                "FROM meter_reading WHERE tenant_id = %s",
                (tenant_id,),
            ).fetchall()

    def state(self, tenant_id: int) -> TenantState:
        rows = self._local_rows(tenant_id)
        local = {r[0] for r in rows}
        synced = {r[0] for r in rows if r[1]}
        half = sum(1 for r in rows if bool(r[1]) != (r[2] == "synchronized"))
        with psycopg.connect(self.cs_dsn, autocommit=True) as conn:
            srows = conn.execute(
                "SELECT meter_reading_id::text FROM cs_meter_reading WHERE tenant_id = %s",
                (tenant_id,),
            ).fetchall()
            foreign = 0
            if local:
                foreign = conn.execute(
                    "SELECT count(*) FROM cs_meter_reading "
                    "WHERE tenant_id <> %s AND meter_reading_id = ANY(%s::uuid[])",
                    (tenant_id, list(local)),
                ).fetchone()[0]
        server = {r[0] for r in srows}
        return TenantState(tenant_id, local, synced, half, server, len(srows), foreign)

    def check(
        self, tenant_ids: Iterable[int], *, final: bool = False, where: str = ""
    ) -> dict[int, TenantState]:
        """Assert the invariants (module docstring) for the tenants; return their states."""
        states = {}
        for t in tenant_ids:
            s = self.state(t)
            ctx = f"tenant {t}{' ' + where if where else ''}"
            unconfirmed = s.local_synced - s.server
            assert not unconfirmed, (
                f"{ctx}: {len(unconfirmed)} readings marked synchronized that the Client System "
                f"does not hold, e.g. {sorted(unconfirmed)[:3]}"
            )
            invented = s.server - s.local
            assert not invented, f"{ctx}: server holds {len(invented)} readings the site never had"
            assert s.half_marked == 0, f"{ctx}: {s.half_marked} readings half-marked"
            assert s.server_rows == len(s.server), f"{ctx}: duplicate rows on the server"
            assert s.server_foreign == 0, f"{ctx}: readings stored under another tenant"
            if final:
                assert len(s.local) == self.seeded.get(t, len(s.local)), (
                    f"{ctx}: {len(s.local)} local readings, {self.seeded.get(t)} seeded"
                )
                missing = s.local - s.server
                assert not missing, f"{ctx}: {len(missing)} readings never reached the server"
                pending = s.local - s.local_synced
                assert not pending, f"{ctx}: {len(pending)} readings not marked synchronized"
            states[t] = s
        return states

    def pending(self, tenant_ids: Iterable[int]) -> int:
        with psycopg.connect(self.sync_dsn, autocommit=True) as conn:
            return int(
                conn.execute(
                    "SELECT count(*) FROM meter_reading "
                    "WHERE tenant_id = ANY(%s) AND NOT is_synchronized",
                    (list(tenant_ids),),
                ).fetchone()[0]
            )

    # -- workers --------------------------------------------------------------------------------

    def worker_env(self, failpoints: str | None = None, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("METERSYNC_")}
        env.update({"METERSYNC_DSN": self.sync_dsn, "METERSYNC_API_URL": self.api_url})
        if "METERSYNC_IMPL" in os.environ:
            env["METERSYNC_IMPL"] = os.environ["METERSYNC_IMPL"]
        if failpoints:
            env["METERSYNC_FAILPOINTS"] = failpoints
        env.update(extra)
        return env

    def spawn(
        self,
        mode: str,
        tenants: Sequence[int],
        *,
        failpoints: str | None = None,
        args: Sequence[str] = (),
    ) -> subprocess.Popen[str]:
        """Start ``_worker.py`` (library-driven cycles) for the tenants."""
        cmd = [sys.executable, str(WORKER), mode, *map(str, tenants), *args]
        return subprocess.Popen(
            cmd,
            env=self.worker_env(failpoints),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )


@dataclass
class MeterTrackWorld(World):
    """A world whose Client System is the MeterTrack emulation (not idempotent, issue 10).

    Its own ids and no de-duplication: the emulation keeps the id each reading was sent with,
    and ``copies()`` counts rows per sent id. The invariants here (:meth:`check_metertrack`):
    nothing stored twice, nothing marked without being stored, and every stored reading is
    synchronized or held ``in_doubt`` locally (a stored reading left pending would be resent:
    a second copy). :meth:`resolve_from_truth` plays the operator: it marks the held readings
    the Client System holds and resends the others.
    """

    def copies(self, tenant_id: int) -> dict[str, int]:
        return self.server.copies(tenant_id)

    def check_metertrack(
        self, tenant_ids: Iterable[int], *, final: bool = False, where: str = ""
    ) -> dict[int, tuple[set[str], set[str]]]:
        """Assert the MeterTrack invariants; ``{tenant: (stored ids, in-doubt ids)}``."""
        out = {}
        for t in tenant_ids:
            ctx = f"tenant {t}{' ' + where if where else ''}"
            copies = self.copies(t)
            twice = {k: v for k, v in copies.items() if v > 1}
            assert not twice, f"{ctx}: {len(twice)} readings stored more than once"
            rows = self._local_rows(t)
            stored = set(copies)
            synced = {r[0] for r in rows if r[1]}
            held = {r[0] for r in rows if r[2] == "in_doubt"}
            assert synced <= stored, f"{ctx}: {len(synced - stored)} marked but not stored"
            exposed = stored - synced - held
            assert not exposed, f"{ctx}: {len(exposed)} stored but pending (would be resent)"
            assert stored <= {r[0] for r in rows}, f"{ctx}: the server holds unknown readings"
            if final:
                assert not held, f"{ctx}: {len(held)} readings still in doubt"
                assert stored == {r[0] for r in rows}, f"{ctx}: readings never stored"
            out[t] = (stored, held)
        return out

    def resolve_from_truth(self, tenant_id: int) -> tuple[int, int]:
        """The operator's resolution: (marked synchronized, sent back to the queue)."""
        from metersync.engine.upload import resolve_in_doubt
        from metersync.store.database import SyncDatabase

        stored, held = self.check_metertrack([tenant_id])[tenant_id]
        there, missing = sorted(held & stored), sorted(held - stored)

        async def go() -> tuple[int, int]:
            async with await SyncDatabase.connect(self.sync_dsn) as db:
                a = b = 0
                if there:
                    a = (
                        await resolve_in_doubt(
                            db, tenant_id, "mark_synchronized", ids=there, min_held_seconds=0
                        )
                    ).resolved
                if missing:
                    b = (
                        await resolve_in_doubt(
                            db, tenant_id, "resend", ids=missing, min_held_seconds=0
                        )
                    ).resolved
                return a, b

        return run(go())


def advisory_locks(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return int(
            conn.execute(
                "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                "WHERE l.locktype = 'advisory' AND d.datname = current_database()"
            ).fetchone()[0]
        )


def sessions(dsn: str) -> int:
    """Database sessions on ``dsn``'s database other than the caller's."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return int(
            conn.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()[0]
        )


def run(coro: Any) -> Any:
    """Run a coroutine from sync test code (no event loop is running there)."""
    return asyncio.run(coro)


async def _add_tenant(
    dsn: str, tenant_id: int, name: str, key: str, upload: int | None, download: int | None
) -> None:
    from metersync.store.database import SyncDatabase

    async with await SyncDatabase.connect(dsn) as db:
        await db.add_tenant(
            tenant_id, name, key, upload_batch_size=upload, download_batch_size=download
        )


async def _insert(dsn: str, tenant_id: int, batch: pa.RecordBatch) -> None:
    from metersync.store.database import SyncDatabase

    async with await SyncDatabase.connect(dsn) as db:
        layout = await db.layout()
        n = batch.num_rows
        cols = [pa.array([tenant_id] * n, type=pa.int64())]
        names = ["tenant_id"]
        for name in layout.upload_columns:
            cols.append(batch.column(name))
            names.append(name)
        await db.insert_readings(pa.RecordBatch.from_arrays(cols, names=names), 10_000)


async def migrate(dsn: str) -> None:
    from metersync.store.database import SyncDatabase

    async with await SyncDatabase.connect(dsn) as db:
        await db.migrate()


def wait_for_line(proc: subprocess.Popen[str], prefix: str, timeout: float = 60.0) -> str:
    """Read the worker's stdout until a line starting with ``prefix`` (or the process ends)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith(prefix):
            return line
    raise AssertionError(
        f"worker never printed {prefix!r} (rc={proc.poll()}): {finish(proc)[1][-2000:]}"
    )


def finish(proc: subprocess.Popen[str], timeout: float = 120.0) -> tuple[str, str]:
    """Wait for a worker and return (stdout, stderr)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"worker did not finish in {timeout} s: {err[-2000:]}") from None
    return out, err


def sigkill(proc: subprocess.Popen[str]) -> bool:
    """SIGKILL the worker and reap it; ``True`` if it was still running (a real kill)."""
    alive = proc.poll() is None
    if alive:
        os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    return alive and proc.returncode == -signal.SIGKILL


def last_json(out: str) -> dict[str, Any]:
    """The last JSON line a worker printed."""
    for line in reversed(out.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError(f"no JSON line in worker output: {out[-1000:]}")


# -- download consistency ---------------------------------------------------------------------
#
# The Client System's pages are stable (ordered by its sequence), so the test pages through them
# itself with the same page size and knows every valid (cursor, rows) pair: no cursor with no
# row, or the cursor after page k with exactly the rows of pages 1..k (and, should a last page
# come without a cursor, the cursor after page n-1 with all rows). Anything else is a page
# written without its cursor or a cursor moved past rows that were not committed.


def load_on_server(world: World, tenant_id: int, n: int, seed: int) -> None:
    """Store ``n`` readings on the Client System (exact JSON from the codec, no float trip)."""
    body = codec.json_rows(reading_batch(n, seed=seed))
    raw = b'{"tenant_id":' + str(tenant_id).encode() + b',"readings":' + body + b"}"
    r = httpx.post(
        f"{world.server.admin_url}/readings",
        content=raw,
        headers={"Content-Type": "application/json", **world.server.admin_headers},
        timeout=60,
    )
    assert r.status_code == 200, r.text[:500]
    assert r.json()["inserted"] == n


def reference_pages(world: World, tenant_id: int, page: int) -> list[tuple[set[str], str | None]]:
    """The server's pages as (ids, next_cursor) for page size ``page``.

    Read from the Client System's own table in its stable order (``seq``), with its own cursor
    encoding: one query instead of paging over HTTP at every check.
    """
    from metersync.server.app import encode_cursor

    with psycopg.connect(world.cs_dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT seq, meter_reading_id::text FROM cs_meter_reading WHERE tenant_id = %s "
            "ORDER BY seq",
            (tenant_id,),
        ).fetchall()
    # Every non-empty page carries the resume point after its last reading (the contract since
    # the Client System stopped answering null on a last page).
    return [
        ({r[1] for r in rows[s : s + page]}, encode_cursor(rows[s : s + page][-1][0]))
        for s in range(0, len(rows), page)
    ]


def check_download(world: World, tenant_id: int, *, final: bool = False, where: str = "") -> int:
    """Assert cursor/rows consistency and no duplicates; return the committed row count."""
    pages = reference_pages(world, tenant_id, PAGE)
    with psycopg.connect(world.sync_dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT meter_reading_id::text, is_synchronized, sync_status FROM meter_reading "
            "WHERE tenant_id = %s",
            (tenant_id,),
        ).fetchall()
        cur = conn.execute(
            "SELECT download_cursor FROM sync_state WHERE tenant_id = %s", (tenant_id,)
        ).fetchone()
    cursor = cur[0] if cur else None
    ids = [r[0] for r in rows]
    assert len(ids) == len(set(ids)), f"{where}: duplicate readings in the sync database"
    local = set(ids)
    assert all(r[1] and r[2] == "synchronized" for r in rows), (
        f"{where}: downloaded readings must be stored synchronized (never uploaded back)"
    )
    acc: set[str] = set()
    for ids_k, _ in pages:
        acc |= ids_k
    # Valid states: the rows are exactly a prefix of the server's stable order and the cursor is
    # the resume point after the last of them. Page boundaries are not fixed multiples of PAGE:
    # a worker that caught up committed a SHORT last page (its cursor is the seq of the last
    # reading then), and readings loaded later start a new page grid from there. A partially
    # committed page still fails: its rows and cursor would not agree on one prefix.
    order = reference_order(world, tenant_id)
    if cursor is None:
        ok = not local
    else:
        from metersync.server.app import encode_cursor

        ok = False
        seen: set[str] = set()
        for seq, rid in order:
            seen.add(rid)
            if encode_cursor(seq) == cursor:
                ok = local == seen
                break
    assert ok, (
        f"{where}: cursor {cursor!r} with {len(local)} rows matches no committed page boundary "
        f"(the cursor must be the resume point after exactly those rows, a prefix of the Client "
        f"System's {len(order)} readings in order)"
    )
    if final:
        assert local == acc, f"{where}: {len(acc - local)} readings never arrived"
    return len(local)


def reference_order(world: World, tenant_id: int) -> list[tuple[int, str]]:
    """The tenant's readings on the Client System as (seq, id) in its stable order."""
    with psycopg.connect(world.cs_dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT seq, meter_reading_id::text FROM cs_meter_reading WHERE tenant_id = %s "
            "ORDER BY seq",
            (tenant_id,),
        ).fetchall()
    return [(int(r[0]), str(r[1])) for r in rows]

"""What "exactly once" means against the MeterTrack emulation, and the operator's resolution.

Shared by ``test_mt_fault_schedules.py`` (hypothesis over fault schedules) and
``test_metertrack_sigkill.py`` (SIGKILL at every upload failpoint). The emulation stores every
copy it receives and keeps the ``meter_reading_id`` each row was sent with (issue 10 item 7), so
``ServerHandle.copies(tenant)`` says how often each reading is stored there.

Invariants at any moment (after a cycle, after a kill):

* **never stored twice**: every sent id has one row; no row without a sent id;
* **nothing invented**: every reading on the Client System is a reading of the site;
* **confirmed before marked**: a reading marked synchronized is on the Client System;
* **held, not requeued**: a reading on the Client System that is not marked synchronized is
  held ``in_doubt`` — were it pending or failed, the next upload would store a second copy.

At the end (after :func:`operator_resolves` and an undisturbed upload): the Client System's id
set equals the site's, one copy each, every reading synchronized, none in doubt.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from dataclasses import dataclass
from typing import Any

from metersync.engine.upload import resolve_in_doubt


@dataclass(frozen=True)
class Seen:
    """One tenant's readings as both sides hold them at one moment."""

    tenant_id: int
    local: frozenset[str]
    synced: frozenset[str]
    held: frozenset[str]
    copies: dict[str, int]  # sent id -> rows on the Client System
    server_rows: int  # every row of the tenant there (with or without a sent id) ...
    server_rows_with_id: int  # ... rows with a sent id, from the same snapshot as server_rows

    @property
    def stored(self) -> frozenset[str]:
        """Ids the Client System holds at least once."""
        return frozenset(self.copies)

    @property
    def duplicates(self) -> int:
        """Rows beyond the first copy of each reading (the emulation's kept ids)."""
        return sum(n - 1 for n in self.copies.values())

    @property
    def lost(self) -> int:
        """Readings of the site that are not on the Client System (at the end: lost)."""
        return len(self.local - self.stored)


async def observe(eng: Any, tenant_id: int) -> Seen:
    """The tenant's state on both sides (``eng`` is a ``fix_engine.Engine``)."""
    rows = await eng.rows(
        "SELECT meter_reading_id::text, is_synchronized, sync_status FROM meter_reading "
        "WHERE tenant_id = %s",
        tenant_id,
    )
    # Local first: a reading the Client System holds was claimed (committed in_doubt) before
    # its POST, so a batch stored after the local snapshot still shows up as held there.
    stats = await asyncio.to_thread(eng.server.stats)
    counts = stats["tenants"].get(str(tenant_id), {})
    copies = await asyncio.to_thread(eng.server.copies, tenant_id)
    return Seen(
        tenant_id,
        frozenset(r[0] for r in rows),
        frozenset(r[0] for r in rows if r[1]),
        frozenset(r[0] for r in rows if r[2] == "in_doubt"),
        copies,
        int(counts.get("rows", 0)),
        int(counts.get("distinct_sent_ids", 0)) + int(counts.get("duplicate_copies", 0)),
    )


def check(seen: Seen, where: str) -> None:
    """Assert the invariants that hold at every moment (module docstring)."""
    ctx = f"tenant {seen.tenant_id} {where}"
    twice = {k: v for k, v in seen.copies.items() if v > 1}
    assert not twice, f"{ctx}: stored more than once on the Client System: {twice}"
    assert seen.server_rows == seen.server_rows_with_id, (
        f"{ctx}: {seen.server_rows - seen.server_rows_with_id} rows on the Client System "
        "without the id they were sent with"
    )
    invented = seen.stored - seen.local
    assert not invented, f"{ctx}: Client System holds readings the site never had: {invented}"
    unconfirmed = seen.synced - seen.stored
    assert not unconfirmed, f"{ctx}: marked synchronized but not stored: {sorted(unconfirmed)}"
    exposed = seen.stored - seen.synced - seen.held
    assert not exposed, (
        f"{ctx}: stored but back in the queue (the next upload stores a second copy): "
        f"{sorted(exposed)}"
    )
    assert not (seen.synced & seen.held), f"{ctx}: synchronized and in_doubt at once"


def check_final(seen: Seen, n: int, where: str = "at the end") -> None:
    """Assert exactly once: every one of the ``n`` readings stored once and synchronized."""
    check(seen, where)
    ctx = f"tenant {seen.tenant_id} {where}"
    assert len(seen.local) == n, f"{ctx}: {len(seen.local)} local readings, {n} seeded"
    assert seen.lost == 0, f"{ctx}: {seen.lost} readings never reached the Client System"
    assert seen.server_rows == n, f"{ctx}: {seen.server_rows} rows on the Client System for {n}"
    assert seen.synced == seen.local, f"{ctx}: {len(seen.local - seen.synced)} not synchronized"
    assert not seen.held, f"{ctx}: {len(seen.held)} readings still in doubt"


def cli_json(dsn: str, *args: str) -> tuple[int, dict[str, Any]]:
    """Run ``metersync --dsn DSN ARGS --json`` in-process (from a thread: it runs its own loop)."""
    from metersync.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["--dsn", dsn, *args, "--json"])
    text = buf.getvalue().strip()
    return code, json.loads(text) if text else {}


async def status_in_doubt(dsn: str, tenant_id: int) -> dict[str, Any]:
    """The tenant's row of ``metersync status --tenant T --json``."""
    code, doc = await asyncio.to_thread(cli_json, dsn, "status", "--tenant", str(tenant_id))
    assert code == 0, doc
    (row,) = doc["tenants"]
    return row


@dataclass(frozen=True)
class Resolution:
    """What the operator did: in-doubt readings found on the Client System (marked) or not
    (resent)."""

    marked: tuple[str, ...]
    resent: tuple[str, ...]

    @property
    def total(self) -> int:
        """Readings resolved."""
        return len(self.marked) + len(self.resent)


#: Sessions of the Client System's database with a transaction open (other than ours).
_OPEN_TRANSACTIONS = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
    "AND pid <> pg_backend_pid() AND xact_start IS NOT NULL"
)


async def wait_until_idle(eng: Any, timeout: float = 60.0) -> None:
    """Wait until the Client System cannot still be storing a batch: no transaction open on
    its database, twice in a row 50 ms apart (a request just received opens one within
    milliseconds). MeterTrack may commit a batch long after the client gave up on it (a read
    timeout in the middle of its one-reading-after-the-other transaction, a crash with the
    POST on the wire); looked at earlier, such a batch is "not there" and ``--resend`` would
    store it twice (CHANGES.md, verification, finding 2)."""
    import psycopg

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    quiet = 0
    async with await psycopg.AsyncConnection.connect(eng.server.dsn, autocommit=True) as conn:
        while quiet < 2:
            row = await (await conn.execute(_OPEN_TRANSACTIONS)).fetchone()
            quiet = quiet + 1 if row is not None and row[0] == 0 else 0
            assert loop.time() < deadline, "the Client System never became idle"
            await asyncio.sleep(0.05)


async def operator_resolves(eng: Any, tenant_id: int, *, via_cli: bool) -> Resolution:
    """Do what the migration guide tells the operator: wait until the Client System cannot
    still be storing (:func:`wait_until_idle`), look each in-doubt reading up there (the
    emulation's kept ids), ``--mark-synchronized`` what is there and ``--resend`` what is not —
    through the CLI in-process or the library function."""
    await wait_until_idle(eng)
    seen = await observe(eng, tenant_id)
    there = tuple(sorted(seen.held & seen.stored))
    missing = tuple(sorted(seen.held - seen.stored))
    for action, ids in (("mark_synchronized", there), ("resend", missing)):
        if not ids:
            continue
        if via_cli:
            flag = "--mark-synchronized" if action == "mark_synchronized" else "--resend"
            argv = ["resolve", "--tenant", str(tenant_id), flag]
            for i in ids:
                argv += ["--id", i]
            # Held moments ago: without --force the safety window refuses, changing nothing.
            held = (await observe(eng, tenant_id)).held
            code, doc = await asyncio.to_thread(cli_json, eng.dsn, *argv)
            assert code == 2 and "held less than" in doc["error"]["message"], doc
            assert (await observe(eng, tenant_id)).held == held
            # --force: wait_until_idle above showed the Client System stores nothing more.
            code, doc = await asyncio.to_thread(cli_json, eng.dsn, *argv, "--force")
            assert code == 0, doc
            (row,) = doc["tenants"]
            assert row["resolved"] == len(ids), row
        else:
            result = await resolve_in_doubt(
                eng.db, tenant_id, action, ids=list(ids), min_held_seconds=0
            )
            assert result.resolved == len(ids), result
    return Resolution(there, missing)

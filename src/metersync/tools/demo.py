"""The end-to-end demo: two tenants, a real sync database, the reference Client System, and proof
that every reading arrived exactly once.

``run_demo`` (what ``metersync demo`` runs):

1. PostgreSQL: the server at ``dsn`` when given, else an embedded one (a temporary data
   directory unless ``data_dir``); on it two scratch databases, the sync database and the
   Client System's own.
2. The reference Client System on a free loopback port (in a background thread).
3. ``migrate``; two tenants with different batch sizes; their keys registered on the server.
4. ``readings`` realistic wide readings split between the tenants: most inserted into the sync
   database as pending (``SyncDatabase.insert_readings``, binary COPY), a share bulk-loaded on
   the Client System so that the download path has work.
5. Download, then upload, per tenant concurrently, through
   :class:`~metersync.engine.manager.SyncManager` with progress bars. With ``faults`` the
   server injects 5xx bursts, timeouts, 429s and lost responses after commit, and cycles
   repeat until the queue is drained.
6. Verification by id sets: every local reading on the server, every server reading local,
   no id twice, every reading synchronized, and the server inserted exactly the readings that
   were pending (downloaded ones never went back up).
7. Everything is shut down and the scratch databases dropped, also on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg

from metersync import __impl__, codec
from metersync.tools.embedded import EmbeddedPostgres, create_database, drop_database
from metersync.tools.synthetic import reading_batch

log = logging.getLogger(__name__)

#: Faults the reference server injects with ``--faults`` (see ``metersync.server.faults``):
#: a 3-request 502 burst, 5 % random 503s, 5 % 429s with Retry-After, 3 responses delayed past
#: the client's read timeout, 4 batches committed whose answer is lost.
DEMO_FAULTS = "fail=3:502,random=0.05:503,rate429=0.05:0.05,delay=1.5:3,drop_after_commit=4,seed=7"
#: Read timeout of the demo's client when faults are on (the injected delays exceed it).
FAULT_READ_TIMEOUT = 1.0
#: Share of each tenant's readings that starts on the Client System (for the download path).
PRELOAD_SHARE = 0.2
#: Rows generated per step (keeps memory flat whatever ``readings`` is).
GENERATE_CHUNK = 25_000
#: Readings per bulk-load request to the reference server.
PRELOAD_CHUNK = 5_000
#: Upper bound on cycles per tenant and phase (a drained queue normally needs one).
MAX_CYCLES = 200
#: Client profiles the demo runs against: our reference server, or the emulation of the
#: original MeterTrack Client System (not idempotent, no download; issue 10).
CLIENT_PROFILES = ("metersync", "metertrack")
#: MeterTrack profile with faults: the client's read timeout grows by this much per reading of
#: a batch (the emulation stores one reading after the other; ~2 ms each on this 2-core machine
#: with two tenants at once), so the injected delays can exceed it without a long demo. The
#: engine's default is 0.03 s; much lower than this and healthy batches get cut off (in doubt).
FAULT_READ_TIMEOUT_PER_READING = 0.005


def metertrack_demo_faults(max_batch: int) -> str:
    """Faults the MeterTrack emulation injects with ``--faults``: a 500 burst and 5 % random
    500s ("Batch upload error", nothing stored: retried), two replies delayed past the client's
    read timeout AFTER the batch was stored, two connections dropped after commit (both leave
    the batch in doubt)."""
    timeout = FAULT_READ_TIMEOUT + FAULT_READ_TIMEOUT_PER_READING * max_batch
    return f"fail=2:500,random=0.05:500,delay={timeout + 1.5:g}:2,drop_after_commit=2,seed=7"


@dataclass(frozen=True)
class DemoTenant:
    """One demo tenant: id, name and its batch sizes."""

    tenant_id: int
    name: str
    upload_batch_size: int
    download_batch_size: int
    share: float  # of all readings


DEMO_TENANTS = (
    DemoTenant(101, "Northwind Utilities", 500, 2000, 0.4),
    DemoTenant(202, "Southgate Energy", 2000, 5000, 0.6),
)


@dataclass
class TenantOutcome:
    """What happened to one tenant's readings."""

    tenant_id: int
    name: str
    upload_batch_size: int
    download_batch_size: int
    local_pending: int = 0
    preloaded: int = 0
    uploaded: int = 0
    downloaded: int = 0
    upload_cycles: int = 0
    download_cycles: int = 0
    upload_statements: int = 0
    download_statements: int = 0
    upload_seconds: float = 0.0
    download_seconds: float = 0.0
    client_rows: int = 0
    local_rows: int = 0
    lost: int = 0
    not_downloaded: int = 0
    duplicates: int = 0
    unsynchronized: int = 0
    # Readings held in_doubt (outcome unknown against a non-idempotent Client System), and how
    # the demo resolved them after checking the Client System's kept ids.
    in_doubt: int = 0
    resolved_synchronized: int = 0
    resolved_resent: int = 0
    unresolved_in_doubt: int = 0
    server_rows_without_sent_id: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class DemoResult:
    """The demo's summary (``--json`` prints :meth:`document`)."""

    readings: int
    tenants: list[TenantOutcome]
    faults: bool
    fault_counts: dict[str, int]
    server_counters: dict[str, int]
    upload_wall_s: float
    download_wall_s: float
    total_s: float
    client_profile: str = "metersync"
    impl: str = __impl__

    def _total(self, *fields: str) -> int:
        return sum(getattr(t, f) for t in self.tenants for f in fields)

    @property
    def uploaded(self) -> int:
        return self._total("uploaded")

    @property
    def downloaded(self) -> int:
        return self._total("downloaded")

    @property
    def lost(self) -> int:
        return self._total("lost", "not_downloaded")

    @property
    def duplicates(self) -> int:
        return self._total("duplicates")

    @property
    def client_rows(self) -> int:
        return self._total("client_rows")

    @property
    def in_doubt(self) -> int:
        return self._total("in_doubt")

    @property
    def exactly_once(self) -> bool:
        """Every reading exactly once on both sides, all synchronized, none uploaded back."""
        pending = self._total("local_pending")
        return (
            self.lost == 0
            and self.duplicates == 0
            and all(t.unsynchronized == 0 for t in self.tenants)
            and all(t.unresolved_in_doubt == 0 for t in self.tenants)
            and all(t.server_rows_without_sent_id == 0 for t in self.tenants)
            and self.client_rows == self.readings
            and self.uploaded == pending
            and self.server_counters.get("inserted", -1) == pending
        )

    def document(self) -> dict[str, Any]:
        """One JSON-able object with the demo's figures."""
        up_statements = sum(t.upload_statements for t in self.tenants)
        return {
            "client_profile": self.client_profile,
            "readings": self.readings,
            "uploaded": self.uploaded,
            "downloaded": self.downloaded,
            "client_rows": self.client_rows,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "in_doubt": self.in_doubt,
            "in_doubt_resolution": {
                "checked_against": "the Client System's kept sent meter_reading_ids",
                "marked_synchronized": sum(t.resolved_synchronized for t in self.tenants),
                "resent": sum(t.resolved_resent for t in self.tenants),
                "unresolved": sum(t.unresolved_in_doubt for t in self.tenants),
            },
            "exactly_once": self.exactly_once,
            "upload_readings_per_s": _rate(self.uploaded, self.upload_wall_s),
            "download_readings_per_s": _rate(self.downloaded, self.download_wall_s),
            "statements_per_100k_upload": (
                round(up_statements * 100_000 / self.uploaded, 1) if self.uploaded else None
            ),
            "upload_statements": up_statements,
            "upload_wall_s": round(self.upload_wall_s, 3),
            "download_wall_s": round(self.download_wall_s, 3),
            "total_s": round(self.total_s, 3),
            "faults": self.faults,
            "faults_injected": self.fault_counts,
            "server": self.server_counters,
            "impl": self.impl,
            "tenants": [asdict(t) for t in self.tenants],
        }


def _rate(count: int, seconds: float) -> float | None:
    return round(count / seconds, 1) if seconds > 0 and count else None


class DemoUI:
    """What the demo reports while it runs; the CLI passes rich progress, tests pass nothing."""

    def say(self, message: str) -> None:
        """A status line."""

    def bar(self, description: str, total: int | None) -> Callable[[int], None]:
        """Start a progress bar; returns ``update(completed)``."""
        return lambda completed: None


class DemoInterrupted(Exception):
    """Ctrl-C / SIGTERM: the demo stopped after the step in flight and cleaned up."""


class _Stopper:
    """Cooperative stop on SIGINT/SIGTERM: finish the batch, COPY or request in flight, then
    unwind through the normal clean-up (cancelling mid-COPY would leave a connection busy).
    A second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.parts: set[Any] = set()  # upload/download managers to ask for a stop

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request)

    def uninstall(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)

    def request(self) -> None:
        if self.event.is_set():
            return
        log.warning("stop requested: finishing the step in flight, then cleaning up")
        self.event.set()
        for part in list(self.parts):
            part.request_stop()
        # The next Ctrl-C gets Python's default handler: KeyboardInterrupt, no more waiting.
        asyncio.get_running_loop().remove_signal_handler(signal.SIGINT)

    def check(self) -> None:
        if self.event.is_set():
            raise DemoInterrupted("interrupted: everything started by the demo was shut down")


def split_readings(
    total: int, preload_share: float = PRELOAD_SHARE
) -> list[tuple[DemoTenant, int, int]]:
    """Per tenant: (tenant, readings pending locally, readings preloaded on the server)."""
    if total < len(DEMO_TENANTS):
        raise ValueError(f"readings must be at least {len(DEMO_TENANTS)}, got {total}")
    result = []
    left = total
    for i, tenant in enumerate(DEMO_TENANTS):
        n = left if i == len(DEMO_TENANTS) - 1 else round(total * tenant.share)
        left -= n
        preload = round(n * preload_share)
        result.append((tenant, n - preload, preload))
    return result


def run_demo(
    readings: int = 200_000,
    *,
    faults: bool = False,
    dsn: str | None = None,
    data_dir: str | None = None,
    keep: bool = False,
    seed: int = 1,
    ui: DemoUI | None = None,
    client_profile: str = "metersync",
) -> DemoResult:
    """Run the demo (see the module docstring) and return its verified summary.

    ``client_profile="metertrack"`` runs it against the emulation of the original MeterTrack
    Client System instead: no download phase (it has none), readings whose upload outcome is
    unknown are held in_doubt by the engine, then resolved the way an operator would (the
    Client System's kept ids say which are stored: ``mark_synchronized``, the rest ``resend``),
    and duplicates are counted from the copies per sent id it holds.

    ``dsn`` names a PostgreSQL server where the demo may create (and drop) two scratch
    databases; without it an embedded server runs in ``data_dir`` or a temporary directory.
    ``keep`` leaves the scratch databases in place for inspection.
    """
    ui = ui or DemoUI()
    if client_profile not in CLIENT_PROFILES:
        raise ValueError(f"client_profile must be one of {CLIENT_PROFILES}, got {client_profile!r}")
    split_readings(readings)  # validate early
    embedded: EmbeddedPostgres | None = None
    if dsn is None:
        embedded = EmbeddedPostgres(data_dir)
        ui.say(f"starting embedded PostgreSQL in {embedded.data_dir}")
        dsn = embedded.start()
    try:
        with _scratch_databases(dsn, keep=keep, ui=ui) as (sync_dsn, cs_dsn):
            return asyncio.run(
                _run(
                    readings,
                    faults=faults,
                    sync_dsn=sync_dsn,
                    cs_dsn=cs_dsn,
                    seed=seed,
                    ui=ui,
                    client_profile=client_profile,
                )
            )
    finally:
        if embedded is not None:
            ui.say("stopping the embedded PostgreSQL")
            embedded.stop()


@contextlib.contextmanager
def _scratch_databases(admin_dsn: str, *, keep: bool, ui: DemoUI) -> Iterator[tuple[str, str]]:
    tag = uuid.uuid4().hex[:8]
    names = (f"metersync_demo_{tag}_sync", f"metersync_demo_{tag}_client")
    dsns = tuple(create_database(admin_dsn, name) for name in names)
    try:
        yield dsns[0], dsns[1]
    finally:
        if keep:
            ui.say(f"kept databases {names[0]} (sync) and {names[1]} (Client System)")
        else:
            ui.say("dropping the two scratch databases")
            for name in names:
                drop_database(admin_dsn, name)


async def _run(
    readings: int,
    *,
    faults: bool,
    sync_dsn: str,
    cs_dsn: str,
    seed: int,
    ui: DemoUI,
    client_profile: str = "metersync",
) -> DemoResult:
    from metersync.server import AdminClient, ServerThread
    from metersync.store.database import SyncDatabase

    metertrack = client_profile == "metertrack"
    started = time.perf_counter()
    stop = _Stopper()
    stop.install()
    # The MeterTrack Client System has no download endpoint: nothing is preloaded on it.
    plan = split_readings(readings, 0.0 if metertrack else PRELOAD_SHARE)
    keys = {t.tenant_id: f"sk_demo_{secrets.token_hex(16)}" for t, _, _ in plan}
    server = ServerThread(cs_dsn, profile=client_profile)
    await asyncio.to_thread(server.start)
    admin = AdminClient(server.admin_url, server.admin_token)
    download_wall = 0.0
    try:
        what = "MeterTrack Client System emulation" if metertrack else "reference Client System"
        ui.say(f"{what} on {server.base_url}")
        async with await SyncDatabase.connect(sync_dsn) as db:
            await db.migrate()
            outcomes = []
            for tenant, local, preload in plan:
                await db.add_tenant(
                    tenant.tenant_id,
                    tenant.name,
                    keys[tenant.tenant_id],
                    upload_batch_size=tenant.upload_batch_size,
                    download_batch_size=tenant.download_batch_size,
                )
                await asyncio.to_thread(
                    admin.register_tenant, tenant.tenant_id, keys[tenant.tenant_id], tenant.name
                )
                outcomes.append(
                    TenantOutcome(
                        tenant.tenant_id,
                        tenant.name,
                        tenant.upload_batch_size,
                        tenant.download_batch_size,
                        local_pending=local,
                        preloaded=preload,
                    )
                )
            await _generate(db, admin, plan, seed, ui, stop)
        # What the site will upload (before the download phase adds readings): the reference
        # of the duplicate count.
        pending_ids = await _pending_ids(sync_dsn, [o.tenant_id for o in outcomes])
        await asyncio.to_thread(admin.reset_stats)
        if faults:
            spec = (
                metertrack_demo_faults(max(t.upload_batch_size for t, _, _ in plan))
                if metertrack
                else DEMO_FAULTS
            )
            await asyncio.to_thread(admin.set_faults, spec)
            ui.say(f"fault injection on: {spec}")

        stop.check()
        url = server.base_url
        run_phase = functools.partial(
            _phase,
            outcomes=outcomes,
            keys=keys,
            sync_dsn=sync_dsn,
            base_url=url,
            faults=faults,
            ui=ui,
            stop=stop,
            client_profile=client_profile,
        )
        if metertrack:
            ui.say("no download phase: the MeterTrack Client System offers no download")
        else:
            ui.say("download phase: each tenant fetches its readings from the Client System")
            download_wall = await run_phase("download")
        stop.check()
        ui.say("upload phase: each tenant sends its pending readings to the Client System")
        upload_wall = await run_phase("upload")
        stop.check()
        if metertrack:
            await asyncio.to_thread(admin.clear_faults)
            resolved = await _resolve_in_doubt(outcomes, admin, sync_dsn, ui)
            if resolved:
                ui.say("upload phase again: the readings sent back to the queue")
                upload_wall += await run_phase("upload", again=True)
            stop.check()

        stats = await asyncio.to_thread(admin.stats)
        await asyncio.to_thread(admin.clear_faults)
        ui.say("verifying: comparing the reading ids of both databases, tenant by tenant")
        await _verify(outcomes, sync_dsn, cs_dsn, stats, pending_ids, metertrack=metertrack)
    finally:
        admin.close()
        ui.say("stopping the Client System")
        await asyncio.to_thread(server.stop)
        stop.uninstall()
    counters = {
        k: int(stats.get(k, 0))
        for k in ("requests", "batches_received", "readings_received", "inserted",
                  "duplicates_seen", "idempotency_replays", "readings_served", "skipped",
                  "duplicate_copies", "distinct_sent_ids")
        if k in stats
    }  # fmt: skip
    return DemoResult(
        readings=readings,
        tenants=outcomes,
        faults=faults,
        fault_counts={str(k): int(v) for k, v in stats.get("faults_injected", {}).items()},
        server_counters=counters,
        upload_wall_s=upload_wall,
        download_wall_s=download_wall,
        total_s=time.perf_counter() - started,
        client_profile=client_profile,
    )


async def _resolve_in_doubt(
    outcomes: list[TenantOutcome], admin: Any, sync_dsn: str, ui: DemoUI
) -> int:
    """Do what the operator does for readings held in_doubt: look at the Client System (its
    kept sent ids, through the admin API), then ``resolve --mark-synchronized`` the ones it
    holds and ``resolve --resend`` the others. Returns how many were sent back to the queue."""
    from metersync.engine.upload import resolve_in_doubt
    from metersync.store.database import SyncDatabase

    resent_total = 0
    async with await SyncDatabase.connect(sync_dsn) as db:
        for o in outcomes:
            held = [
                str(uuid.UUID(bytes=b)) for b in (await db.in_doubt_ids(o.tenant_id)).to_pylist()
            ]
            o.in_doubt = len(held)
            if not held:
                continue
            copies = await asyncio.to_thread(admin.copies, o.tenant_id, held)
            stored = [rid for rid in held if copies.get(rid, 0) > 0]
            missing = [rid for rid in held if copies.get(rid, 0) == 0]
            ui.say(
                f"tenant {o.tenant_id}: {len(held):,} readings in doubt; the Client System holds "
                f"{len(stored):,} of them: marking those synchronized, resending {len(missing):,}"
            )
            # No safety wait (min_held_seconds=0): the demo's emulation stores every batch
            # before it delays or drops the reply, and the upload phase has ended, so nothing
            # it received can still be in storage.
            if stored:
                done = await resolve_in_doubt(
                    db, o.tenant_id, "mark_synchronized", ids=stored, min_held_seconds=0
                )
                o.resolved_synchronized = done.resolved
                o.uploaded += done.resolved
            if missing:
                done = await resolve_in_doubt(
                    db, o.tenant_id, "resend", ids=missing, min_held_seconds=0
                )
                o.resolved_resent = done.resolved
                resent_total += done.resolved
    return resent_total


async def _generate(
    db: Any,
    admin: Any,
    plan: list[tuple[DemoTenant, int, int]],
    seed: int,
    ui: DemoUI,
    stop: _Stopper,
) -> None:
    """Insert each tenant's pending readings and bulk-load its preloaded ones on the server."""
    total = sum(local + preload for _, local, preload in plan)
    preloaded = sum(preload for _, _, preload in plan)
    ui.say(
        f"generating {total:,} synthetic wide readings: pending in the sync database"
        + (
            f", {preloaded:,} preloaded on the Client System for the download phase"
            if preloaded
            else ""
        )
    )
    update = ui.bar("generate readings", total)
    done = 0
    for tenant, local, preload in plan:
        n = local + preload
        for chunk_no, start in enumerate(range(0, n, GENERATE_CHUNK)):
            stop.check()
            rows = min(GENERATE_CHUNK, n - start)
            batch = reading_batch(
                rows,
                seed=seed * 1_000_003 + tenant.tenant_id * 1009 + chunk_no,
                tenant_id=tenant.tenant_id,
            )
            # The first `local` readings of the tenant stay pending in the sync database; the
            # rest start on the Client System.
            local_rows = max(0, min(rows, local - start))
            if local_rows:
                await db.insert_readings(batch.slice(0, local_rows), tenant.upload_batch_size)
            if rows > local_rows:
                remote = batch.slice(local_rows).drop_columns(["tenant_id"])
                for part in codec.slices(remote, PRELOAD_CHUNK):
                    body = codec.json_rows(part)
                    await asyncio.to_thread(_load, admin, tenant.tenant_id, body)
            done += rows
            update(done)


def _load(admin: Any, tenant_id: int, readings_json: bytes) -> None:
    """Bulk-load pre-encoded readings (the JSON array is spliced, never re-parsed by us)."""
    body = b'{"tenant_id":%d,"readings":%s}' % (tenant_id, readings_json)
    response = admin._http.post(
        "/readings", content=body, headers={"Content-Type": "application/json"}
    )
    if response.status_code != 200:
        raise RuntimeError(f"bulk load failed: HTTP {response.status_code}: {response.text[:200]}")


async def _phase(
    operation: str,
    outcomes: list[TenantOutcome],
    keys: dict[int, str],
    sync_dsn: str,
    base_url: str,
    faults: bool,
    ui: DemoUI,
    stop: _Stopper,
    client_profile: str = "metersync",
    again: bool = False,
) -> float:
    """Run ``operation`` for every tenant concurrently until done; return the wall time.
    ``again``: a second upload phase (of readings resolved with ``resend``)."""
    started = time.perf_counter()
    await asyncio.gather(
        *(
            _drain(
                operation,
                o,
                keys[o.tenant_id],
                sync_dsn,
                base_url,
                faults,
                ui,
                stop,
                client_profile=client_profile,
                again=again,
            )
            for o in outcomes
            if not again or o.resolved_resent
        )
    )
    return time.perf_counter() - started


async def _drain(
    operation: str,
    outcome: TenantOutcome,
    api_key: str,
    sync_dsn: str,
    base_url: str,
    faults: bool,
    ui: DemoUI,
    stop: _Stopper,
    *,
    client_profile: str = "metersync",
    again: bool = False,
) -> None:
    """Cycles of one operation for one tenant until nothing is left (or MAX_CYCLES)."""
    from metersync.engine.manager import SyncManager, SyncOptions
    from metersync.remote.client import ClientSystemApiClient

    client = ClientSystemApiClient(
        base_url,
        api_key,
        read_timeout=FAULT_READ_TIMEOUT if faults else 30.0,
        backoff_base=0.05,
        backoff_max=0.5,
        max_retries=6,
        client_profile=client_profile,
        # Against MeterTrack the timeout grows with the batch (it stores one reading after
        # the other); the demo keeps that growth small so its delays stay short.
        read_timeout_per_reading=FAULT_READ_TIMEOUT_PER_READING if faults else 0.03,
    )
    if operation == "upload":
        expected = outcome.resolved_resent if again else outcome.local_pending
    else:
        expected = outcome.preloaded
    label = f"{operation} tenant {outcome.tenant_id}" + (" (resent)" if again else "")
    update = ui.bar(label, expected)
    config = SyncOptions(tenant_id=outcome.tenant_id, dsn=sync_dsn, api_client=client)
    done = cycles = statements = 0
    seconds = 0.0
    try:
        async with SyncManager(config) as manager:
            part = manager.uploader if operation == "upload" else manager.downloader
            assert part is not None
            run = manager.upload_readings if operation == "upload" else manager.download_readings
            stop.parts.add(part)

            async def refresh() -> None:
                while True:
                    live = part.report.confirmed if operation == "upload" else part.report.inserted
                    update(done + live)
                    await asyncio.sleep(0.2)

            refresher = asyncio.create_task(refresh())
            try:
                for _ in range(MAX_CYCLES):
                    if stop.event.is_set():
                        break
                    report = await run()
                    done += report.confirmed if operation == "upload" else report.inserted
                    cycles += 1
                    statements += report.statements
                    seconds += report.seconds
                    sent = getattr(report, "readings_sent", None)
                    if report.error:
                        outcome.errors.append(report.error)
                        log.info("tenant %s %s: %s", outcome.tenant_id, operation, report.error)
                    if done >= expected or (sent == 0 and not report.error):
                        break  # all through, or the queue is empty (what is left is in doubt)
            finally:
                stop.parts.discard(part)
                refresher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await refresher
            update(done)
    finally:
        await client.aclose()
    if operation == "upload":
        outcome.uploaded += done
        outcome.upload_cycles += cycles
        outcome.upload_statements += statements
        outcome.upload_seconds += seconds
    else:
        outcome.downloaded, outcome.download_cycles = done, cycles
        outcome.download_statements, outcome.download_seconds = statements, seconds


async def _pending_ids(sync_dsn: str, tenants: list[int]) -> dict[int, set[str]]:
    """Ids of each tenant's readings in the sync database (all pending when this runs)."""
    ids: dict[int, set[str]] = {}
    async with await psycopg.AsyncConnection.connect(sync_dsn) as conn:
        for t in tenants:
            cur = await conn.execute(
                "SELECT meter_reading_id FROM meter_reading WHERE tenant_id = %s", (t,)
            )
            ids[t] = {str(r[0]) for r in await cur.fetchall()}
    return ids


async def _verify(
    outcomes: list[TenantOutcome],
    sync_dsn: str,
    cs_dsn: str,
    stats: dict[str, Any],
    pending_ids: dict[int, set[str]],
    *,
    metertrack: bool = False,
) -> None:
    """Compare id sets of the sync database and the Client System, tenant by tenant.

    Duplicates are counted so that the count could fail. Against MeterTrack (no key on the
    sent id: a resend stores a second row) from the copies per kept sent id: rows minus
    distinct sent ids. Against the reference server (whose key would make that 0 by
    construction) from what its uploads newly stored: readings inserted for the tenant minus
    the distinct uploaded ids it holds.
    """
    async with (
        await psycopg.AsyncConnection.connect(sync_dsn) as local,
        await psycopg.AsyncConnection.connect(cs_dsn) as remote,
    ):
        for o in outcomes:
            rows = await (
                await local.execute(
                    "SELECT meter_reading_id, is_synchronized FROM meter_reading "
                    "WHERE tenant_id = %s",
                    (o.tenant_id,),
                )
            ).fetchall()
            local_ids = {str(r[0]) for r in rows}
            o.local_rows = len(rows)
            o.unsynchronized = sum(1 for r in rows if not r[1])
            local_copies = len(rows) - len(local_ids)
            if metertrack:
                sent = await (
                    await remote.execute(
                        "SELECT sent_meter_reading_id FROM mt_meter_reading WHERE tenant_id = %s",
                        (o.tenant_id,),
                    )
                ).fetchall()
                kept = [r[0] for r in sent if r[0] is not None]
                server_ids = {k.lower() for k in kept}
                o.client_rows = len(sent)
                o.server_rows_without_sent_id = len(sent) - len(kept)
                o.duplicates = (len(kept) - len(server_ids)) + local_copies
            else:
                server_rows = await (
                    await remote.execute(
                        "SELECT meter_reading_id::text FROM cs_meter_reading WHERE tenant_id = %s",
                        (o.tenant_id,),
                    )
                ).fetchall()
                server_ids = {r[0] for r in server_rows}
                o.client_rows = len(server_rows)
                inserted = int(stats.get("inserted_per_tenant", {}).get(str(o.tenant_id), 0))
                uploaded_held = len(pending_ids[o.tenant_id] & server_ids)
                o.duplicates = max(0, inserted - uploaded_held) + local_copies
            o.lost = len(local_ids - server_ids)
            o.not_downloaded = len(server_ids - local_ids)

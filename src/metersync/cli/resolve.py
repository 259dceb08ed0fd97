"""``metersync resolve``: release readings held ``in_doubt`` after the operator has looked.

Against a Client System that is not idempotent (MeterTrack) a batch whose outcome is unknown —
a read timeout, a connection dropped after sending, a crash between the POST and the mark, an
answer that skipped readings without saying which — is never resent automatically: a resend
would store a second copy. The operator checks the Client System, then either

* ``--resend``: the readings are NOT there — back to the queue, sent by the next upload; or
* ``--mark-synchronized``: they ARE there — marked synchronized.

``--id`` limits the action to chosen readings (``metersync status`` counts them; the ids are in
``meter_reading`` with ``sync_status = 'in_doubt'``); ``--all`` acts on every tenant.

Both actions refuse readings held in doubt for less than ``resolve_min_held_seconds`` (600 s by
default; flag ``--min-held-seconds``): MeterTrack may still be storing a batch the client gave up
on, so an early look misses readings that are about to appear and ``--resend`` duplicates them.
``--force`` skips the wait. With ``--all`` every tenant is checked before any is changed.
"""

from __future__ import annotations

from typing import Any

import click

from metersync.cli._app import AppState, json_option, open_db, pass_state, run
from metersync.cli.output import ExitCode
from metersync.errors import ConfigError, UnknownTenantError


@click.command()
@click.option("--tenant", "tenant_id", type=int, help="Tenant whose in-doubt readings to resolve.")
@click.option("--all", "all_tenants", is_flag=True, help="Every tenant of table tenant.")
@click.option(
    "--resend",
    "action",
    flag_value="resend",
    help="They are NOT on the Client System: back to the queue, sent by the next upload.",
)
@click.option(
    "--mark-synchronized",
    "action",
    flag_value="mark_synchronized",
    help="They ARE on the Client System: mark them synchronized.",
)
@click.option(
    "--id",
    "ids",
    multiple=True,
    metavar="UUID",
    help="Only this in-doubt reading (repeatable; default: all of the tenant's).",
)
@click.option(
    "--min-held-seconds",
    type=float,
    default=None,
    help="Refuse readings held in doubt for less than this many seconds (setting "
    "resolve_min_held_seconds, default 600). The Client System may still be storing a batch "
    "it received after metersync gave up on it: MeterTrack stores ~1 s per 100 readings, so a "
    "10,000-reading batch can take minutes. Look it up only after that.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Resolve readings however recently they were held (only when you know the Client "
    "System has finished every request it received).",
)
@json_option
@pass_state
def resolve(
    state: AppState,
    tenant_id: int | None,
    all_tenants: bool,
    action: str | None,
    ids: tuple[str, ...],
    min_held_seconds: float | None,
    force: bool,
) -> int:
    """Release readings held in_doubt (outcome unknown against a non-idempotent Client System)
    after checking the Client System: --resend or --mark-synchronized.

    Readings held for less than resolve_min_held_seconds (default 600 s) are refused unless
    --force: the Client System may still be storing a batch it received (MeterTrack stores
    ~1 s per 100 readings; a 10,000-reading batch can take minutes), and a resend of a batch it
    stores later is a duplicate."""
    from metersync.engine.upload import check_held_long_enough, resolve_in_doubt

    if action is None:
        raise ConfigError("say what the Client System holds: --resend or --mark-synchronized")
    if (tenant_id is None) == (not all_tenants):
        raise ConfigError("give --tenant ID or --all (one of them)")
    if ids and all_tenants:
        raise ConfigError("--id needs --tenant (an id belongs to one tenant)")
    settings = state.override(resolve_min_held_seconds=min_held_seconds)
    wait = 0.0 if force else settings.resolve_min_held_seconds
    dsn = state.require_dsn()

    async def go() -> list[dict[str, Any]]:
        async with open_db(dsn) as db:
            if tenant_id is not None:
                if await db.get_tenant(tenant_id) is None:
                    raise UnknownTenantError(tenant_id)
                tenants = [tenant_id]
            else:
                tenants = [t.tenant_id for t in await db.list_tenants()]
                for tid in tenants:  # refuse before any tenant is changed
                    check_held_long_enough(tid, (await db.in_doubt_held(tid))[1], wait)
            docs = []
            for tid in tenants:
                try:
                    result = await resolve_in_doubt(
                        db, tid, action, ids=list(ids) or None, min_held_seconds=wait
                    )
                except ValueError as exc:  # a malformed --id
                    raise ConfigError(f"--id: {exc}") from None
                docs.append(
                    {
                        "tenant_id": tid,
                        "action": action,
                        "in_doubt_before": result.in_doubt_before,
                        "resolved": result.resolved,
                        "in_doubt_after": result.in_doubt_before - result.resolved,
                    }
                )
            return docs

    docs = run(go)
    out = state.output
    if out.json_mode:
        out.emit_json({"action": action, "min_held_seconds": wait, "tenants": docs})
    else:
        what = "back in the queue" if action == "resend" else "marked synchronized"
        for d in docs:
            out.line(
                f"tenant {d['tenant_id']}: {d['resolved']} of {d['in_doubt_before']} in-doubt "
                f"reading(s) {what}"
            )
    return ExitCode.OK

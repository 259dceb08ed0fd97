"""``metersync status`` (the queue per tenant and its last cycles) and ``metersync requeue``.

``in_doubt`` readings (sent to a Client System that is not idempotent, outcome unknown) are
counted per tenant with how long the longest-held one has been held (since its batch was claimed
or held — not the reading's own age: ``oldest_in_doubt_age_s``/``oldest_in_doubt_at`` in
``--json``); ``metersync resolve`` releases them once that exceeds ``resolve_min_held_seconds``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import click

from metersync.cli._app import AppState, json_option, open_db, pass_state, run
from metersync.cli.output import ExitCode, format_age
from metersync.errors import ConfigError, UnknownTenantError

_QUEUE_FIELDS = ("pending", "failed", "quarantined", "in_doubt", "synchronized")


def as_dict(value: Any) -> dict[str, Any]:
    """A row object (dataclass, named tuple, mapping) as a plain dict."""
    if isinstance(value, dict):
        return dict(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if hasattr(value, "_asdict"):
        return dict(value._asdict())
    return {k: getattr(value, k) for k in dir(value) if not k.startswith("_")}


def queue_document(row: Any) -> dict[str, Any]:
    """One tenant's queue counts in the documented ``status --json`` shape."""
    raw = as_dict(row)
    doc: dict[str, Any] = {"tenant_id": raw.get("tenant_id")}
    for name in _QUEUE_FIELDS:
        doc[name] = int(raw.get(name) or 0)
    age = raw.get("oldest_pending_age_s", raw.get("oldest_pending_age"))
    if hasattr(age, "total_seconds"):
        age = age.total_seconds()
    doc["oldest_pending_age_s"] = None if age is None else round(float(age), 3)
    doc["oldest_pending_at"] = raw.get("oldest_pending_at", raw.get("oldest_pending"))
    doubt_age = raw.get("oldest_in_doubt_age_s")
    doc["oldest_in_doubt_age_s"] = None if doubt_age is None else round(float(doubt_age), 3)
    doc["oldest_in_doubt_at"] = raw.get("oldest_in_doubt_at")
    return doc


def cycle_document(row: Any) -> dict[str, Any]:
    """One ``sync_log`` row for ``status --json``."""
    raw = as_dict(row)
    keep = (
        "operation",
        "started_at",
        "batches",
        "records",
        "statements",
        "duration_s",
        "success",
        "error",
    )
    return {k: raw.get(k) for k in keep}


@click.command()
@click.option("--tenant", "tenant_id", type=int, help="Only this tenant (default: all tenants).")
@click.option("--cycles", default=3, show_default=True, help="Last cycles to show per tenant.")
@click.option("--max-retries", type=int, help="Rejections before quarantine (default: settings).")
@json_option
@pass_state
def status(state: AppState, tenant_id: int | None, cycles: int, max_retries: int | None) -> int:
    """Queue per tenant: pending, failed, quarantined, in doubt, synchronized, oldest pending
    age, how long the longest-held in-doubt reading has been held, and the last cycles from
    sync_log."""
    if max_retries is not None:
        state.override(max_retries=max_retries)
    retries = state.settings.max_retries
    dsn = state.require_dsn()
    if cycles < 0:
        raise ConfigError(f"--cycles must be >= 0, got {cycles}")

    async def go() -> list[dict[str, Any]]:
        async with open_db(dsn) as db:
            if tenant_id is not None and await db.get_tenant(tenant_id) is None:
                raise UnknownTenantError(tenant_id)
            tenants = {t.tenant_id: t for t in await db.list_tenants()}
            rows = [queue_document(r) for r in await db.queue_status(tenant_id, retries)]
            by_id = {r["tenant_id"]: r for r in rows}
            wanted = [tenant_id] if tenant_id is not None else sorted(set(tenants) | set(by_id))
            result = []
            for tid in wanted:
                doc = by_id.get(tid) or queue_document({"tenant_id": tid})
                doc["name"] = tenants[tid].name if tid in tenants else None
                recent = await db.recent_cycles(tid, cycles) if cycles else []
                doc["last_cycles"] = [cycle_document(c) for c in recent]
                result.append(doc)
            return result

    docs = run(go)
    out = state.output
    if out.json_mode:
        out.emit_json({"max_retries": retries, "tenants": docs})
    elif not docs:
        out.line("no tenants")
    else:
        columns = ["tenant", "name", *_QUEUE_FIELDS, "oldest pending", "held in doubt"]
        out.table(
            f"queue (quarantine after {retries} rejections)",
            columns,
            [
                [d["tenant_id"], d["name"], *(d[f] for f in _QUEUE_FIELDS),
                 format_age(d["oldest_pending_age_s"]), format_age(d["oldest_in_doubt_age_s"])]
                for d in docs
            ],
            right=[*_QUEUE_FIELDS, "oldest pending", "held in doubt"],
        )  # fmt: skip
        cycle_rows = [
            [
                d["tenant_id"],
                c["operation"],
                c["started_at"],
                c["batches"],
                c["records"],
                c["statements"],
                c["duration_s"],
                "ok" if c["success"] else (c["error"] or "failed"),
            ]
            for d in docs
            for c in d["last_cycles"]
        ]
        if cycle_rows:
            out.table(
                "last cycles",
                ["tenant", "operation", "started", "batches", "readings", "statements", "s",
                 "result"],
                cycle_rows,
                right=["batches", "readings", "statements", "s"],
            )  # fmt: skip
    in_doubt = sum(d["in_doubt"] for d in docs)
    if in_doubt and not out.json_mode:
        wait = state.settings.resolve_min_held_seconds
        out.info(
            f"{in_doubt} reading(s) in doubt (sent to a Client System that is not idempotent, "
            "outcome unknown; never resent automatically): once held for "
            f"{format_age(wait)} (the Client System may still be storing them until then), "
            "check the Client System, then `metersync resolve --tenant ID --resend` or "
            "`--mark-synchronized`"
        )
    quarantined = sum(d["quarantined"] for d in docs)
    if quarantined and not out.json_mode:
        out.info(
            f"{quarantined} quarantined reading(s): fix the cause, then "
            "`metersync requeue --tenant ID`"
        )
    return ExitCode.OK


@click.command()
@click.option(
    "--tenant", "tenant_id", type=int, required=True, help="Tenant whose readings to requeue."
)
@click.option(
    "--all",
    "requeue_all",
    is_flag=True,
    help="Also reset failed readings that are not quarantined yet (retry_count back to 0).",
)
@click.option("--max-retries", type=int, help="Rejections before quarantine (default: settings).")
@json_option
@pass_state
def requeue(state: AppState, tenant_id: int, requeue_all: bool, max_retries: int | None) -> int:
    """Put a tenant's quarantined readings back in the queue (retry_count 0, status pending)."""
    if max_retries is not None:
        state.override(max_retries=max_retries)
    retries = state.settings.max_retries
    dsn = state.require_dsn()

    async def go() -> int:
        async with open_db(dsn) as db:
            if await db.get_tenant(tenant_id) is None:
                raise UnknownTenantError(tenant_id)
            if requeue_all:
                return int(await db.requeue(tenant_id))
            ids = await db.quarantined_ids(tenant_id, retries)
            return int(await db.requeue(tenant_id, ids)) if len(ids) else 0

    count = run(go)
    if state.output.json_mode:
        state.output.emit_json({"tenant_id": tenant_id, "requeued": count})
    else:
        state.output.line(f"tenant {tenant_id}: {count} reading(s) back in the queue")
    return ExitCode.OK

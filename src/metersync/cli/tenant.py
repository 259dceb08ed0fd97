"""``metersync tenant list|show|set|add``: the tenant rows and their batch sizes.

API keys are secrets: ``add`` reads the key from ``METERSYNC_API_KEY`` or a hidden prompt (or
one line on stdin when it is not a terminal), never from an argument, and every listing shows
it masked (``sk_…abcd``).
"""

from __future__ import annotations

import sys
from typing import Any

import click

from metersync.batch_sizes import MAX_BATCH_SIZE, MIN_BATCH_SIZE, batch_size_problem
from metersync.cli._app import AppState, json_option, open_db, pass_state, run
from metersync.cli._safe import markup_safe
from metersync.cli.output import mask_secret
from metersync.errors import ConfigError, UnknownTenantError
from metersync.settings import MAX_TENANT_ID


def _check_size(option: str, value: int | None) -> None:
    if value is None:
        return
    if batch_size_problem(value):
        raise ConfigError(
            f"invalid {option} {value}: the valid range is {MIN_BATCH_SIZE}..{MAX_BATCH_SIZE}"
        )


def _check_tenant_id(tenant_id: int) -> None:
    # Checked here, not left to PostgreSQL: "bigint out of range" would be an unexpected error.
    if not 1 <= tenant_id <= MAX_TENANT_ID:
        raise ConfigError(
            f"invalid tenant id {tenant_id}: must be a positive integer of at most "
            f"{MAX_TENANT_ID} (tenant ids are bigint)"
        )


def tenant_document(row: Any) -> dict[str, Any]:
    """A tenant row as a JSON-able dict with the API key masked."""
    return {
        "tenant_id": row.tenant_id,
        "name": row.name,
        "active": row.active,
        "upload_batch_size": row.upload_batch_size,
        "download_batch_size": row.download_batch_size,
        "api_key": mask_secret(row.api_key),
        "updated_at": row.updated_at,
    }


_COLUMNS = ["tenant", "name", "active", "upload batch", "download batch", "api key", "updated"]


def _row_cells(doc: dict[str, Any]) -> list[Any]:
    return [
        doc["tenant_id"],
        doc["name"],
        doc["active"],
        doc["upload_batch_size"],
        doc["download_batch_size"],
        doc["api_key"],
        doc["updated_at"],
    ]


@click.group()
def tenant() -> None:
    """List, show, add tenants and change their batch sizes (live: running syncs pick the
    change up on their next cycle)."""


@tenant.command("list")
@json_option
@pass_state
def tenant_list(state: AppState) -> int:
    """List the tenants with their batch sizes."""
    dsn = state.require_dsn()

    async def go() -> list[Any]:
        async with open_db(dsn) as db:
            return list(await db.list_tenants())

    docs = [tenant_document(row) for row in run(go)]
    if state.output.json_mode:
        state.output.emit_json({"tenants": docs})
    elif docs:
        state.output.table("tenants", _COLUMNS, [_row_cells(d) for d in docs], right=_COLUMNS[3:5])
    else:
        state.output.line("no tenants (add one with: metersync tenant add ID --name NAME)")
    return 0


@tenant.command("show")
@click.argument("tenant_id", type=int)
@json_option
@pass_state
def tenant_show(state: AppState, tenant_id: int) -> int:
    """Show one tenant, its stored and effective batch sizes (API key masked)."""
    dsn = state.require_dsn()
    _check_tenant_id(tenant_id)

    async def go() -> tuple[Any, Any]:
        async with open_db(dsn) as db:
            row = await db.get_tenant(tenant_id)
            if row is None:
                raise UnknownTenantError(tenant_id)
            return row, await db.get_tenant_batch_config(tenant_id)

    row, batch = run(go)
    doc = tenant_document(row)
    doc["effective"] = {
        "upload_batch_size": batch.upload_batch_size,
        "download_batch_size": batch.download_batch_size,
        "source": batch.source,
    }
    if state.output.json_mode:
        state.output.emit_json(doc)
    else:
        pairs = dict(zip(_COLUMNS, _row_cells(doc), strict=True))
        pairs["effective sizes"] = (
            f"upload {batch.upload_batch_size}, download {batch.download_batch_size} "
            f"(from {batch.source})"
        )
        state.output.key_values(f"tenant {tenant_id}", pairs)
    return 0


@tenant.command("set")
@click.argument("tenant_id", type=int)
@click.option(
    "--upload-batch-size", type=int, help=f"Readings per upload batch (1..{MAX_BATCH_SIZE})."
)
@click.option(
    "--download-batch-size", type=int, help=f"Readings per download page (1..{MAX_BATCH_SIZE})."
)
@json_option
@pass_state
def tenant_set(
    state: AppState, tenant_id: int, upload_batch_size: int | None, download_batch_size: int | None
) -> int:
    """Change a tenant's batch sizes. Running sync processes are notified (LISTEN/NOTIFY) and
    use the new sizes from their next cycle, without a restart."""
    _check_tenant_id(tenant_id)
    _check_size("upload batch size", upload_batch_size)
    _check_size("download batch size", download_batch_size)
    if upload_batch_size is None and download_batch_size is None:
        raise ConfigError(
            "nothing to change: give --upload-batch-size and/or --download-batch-size"
        )
    dsn = state.require_dsn()

    async def go() -> Any:
        async with open_db(dsn) as db:
            return await db.set_tenant_batch_sizes(
                tenant_id, upload=upload_batch_size, download=download_batch_size
            )

    doc = tenant_document(run(go))
    if state.output.json_mode:
        state.output.emit_json(doc)
    else:
        state.output.line(
            f"tenant {tenant_id}: upload batch size {doc['upload_batch_size']}, "
            f"download batch size {doc['download_batch_size']} (applies from the next cycle)"
        )
    return 0


def read_api_key(state: AppState, tenant_id: int) -> str:
    """The new tenant's API key: ``METERSYNC_API_KEY`` (or the private TOML file), else a hidden
    prompt on a terminal, else one line from stdin."""
    key = state.settings.api_key
    if key:
        return key
    if sys.stdin is not None and sys.stdin.isatty():
        key = click.prompt(
            f"API key for tenant {tenant_id}", hide_input=True, confirmation_prompt=True, err=True
        )
    elif sys.stdin is not None:
        key = sys.stdin.readline()
    key = (key or "").strip()
    if not key:
        raise ConfigError(
            "no API key given: set METERSYNC_API_KEY, answer the prompt, or pipe it on stdin "
            "(never as an argument)"
        )
    return key


@tenant.command("add")
@click.argument("tenant_id", type=int)
@click.option("--name", required=True, help="Display name of the tenant.")
@click.option("--upload-batch-size", type=int, help=f"Default 100 (1..{MAX_BATCH_SIZE}).")
@click.option("--download-batch-size", type=int, help=f"Default 1000 (1..{MAX_BATCH_SIZE}).")
@json_option
@pass_state
def tenant_add(
    state: AppState,
    tenant_id: int,
    name: str,
    upload_batch_size: int | None,
    download_batch_size: int | None,
) -> int:
    """Add a tenant. The API key comes from METERSYNC_API_KEY or a hidden prompt."""
    _check_tenant_id(tenant_id)
    _check_size("upload batch size", upload_batch_size)
    _check_size("download batch size", download_batch_size)
    if not name.strip():
        raise ConfigError("--name must not be empty")
    dsn = state.require_dsn()
    api_key = read_api_key(state, tenant_id)

    async def go() -> Any:
        async with open_db(dsn) as db:
            if await db.get_tenant(tenant_id) is not None:
                raise ConfigError(f"tenant {tenant_id} already exists (change it with tenant set)")
            await db.add_tenant(
                tenant_id,
                name.strip(),
                api_key,
                upload_batch_size=upload_batch_size,
                download_batch_size=download_batch_size,
            )
            return await db.get_tenant(tenant_id)

    doc = tenant_document(run(go))
    if state.output.json_mode:
        state.output.emit_json(doc)
    else:
        state.output.line(
            f"tenant {tenant_id} ({markup_safe(doc['name'])}) added: upload batch size "
            f"{doc['upload_batch_size']}, download batch size {doc['download_batch_size']}, "
            f"api key {doc['api_key']}"
        )
    return 0

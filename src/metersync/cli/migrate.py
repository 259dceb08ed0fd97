"""``metersync migrate``: create or upgrade the sync database schema (idempotent)."""

from __future__ import annotations

import click

from metersync.cli._app import AppState, json_option, open_db, pass_state, run


@click.command()
@json_option
@pass_state
def migrate(state: AppState) -> int:
    """Create or upgrade the sync database schema (safe to run again and again).

    Works on a database of the old system: adds what is missing, never drops data.
    """
    dsn = state.require_dsn()
    # Only to say how many old readings the upgrade quarantines (max_retries rejections).
    retries = state.settings.max_retries

    async def go() -> list[str]:
        async with open_db(dsn) as db:
            return list(await db.migrate(max_retries=retries))

    actions = run(go)
    out = state.output
    if out.json_mode:
        out.emit_json({"actions": actions, "changed": bool(actions)})
    elif actions:
        out.table("migrate: applied", ["action"], [(a,) for a in actions])
    else:
        out.line("schema is up to date (nothing to do)")
    return 0

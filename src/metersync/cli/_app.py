"""State shared by the subcommands of one invocation: settings, output, the database opener."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import click

from metersync.cli._loop import run as run_on_loop
from metersync.cli._safe import terminal_safe
from metersync.cli.output import Output
from metersync.errors import ConfigError, DatabaseUnavailable
from metersync.settings import Settings, resolve_settings, with_overrides

if TYPE_CHECKING:
    from metersync.store.database import SyncDatabase

T = TypeVar("T")


@dataclass
class AppState:
    """Everything a subcommand needs from the global options."""

    flags: dict[str, Any] = field(default_factory=dict)
    config_file: str | None = None
    verbose: int = 0
    quiet: bool = False
    output: Output = field(default_factory=Output)
    _settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        """The resolved settings (flags > env > TOML > defaults), computed once."""
        if self._settings is None:
            self._settings = resolve_settings(self.flags, config_file=self.config_file)
        return self._settings

    def override(self, **changes: Any) -> Settings:
        """Apply subcommand-level flags (e.g. ``--tenant``) on top of the resolved settings."""
        self._settings = with_overrides(self.settings, **changes)
        return self._settings

    def require_dsn(self) -> str:
        """The sync database DSN, or a ConfigError saying how to give one."""
        dsn = self.settings.dsn
        if not dsn:
            raise ConfigError(
                "no sync database configured: pass --dsn, set METERSYNC_DSN, "
                "or put dsn in metersync.toml"
            )
        return dsn

    def set_json(self, value: bool) -> None:
        """Switch to JSON output (one document on stdout, no progress, no tables)."""
        if value:
            self.output.json_mode = True


def describe_dsn(dsn: str) -> str:
    """Where a DSN points, without its password: ``host H port P database D``."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(dsn)
    except Exception:
        return "the configured DSN"
    host = params.get("host") or params.get("hostaddr") or "localhost (default socket)"
    port = params.get("port") or "5432"
    db = params.get("dbname") or params.get("user") or "(default)"
    return f"host {host} port {port} database {db}"


def check_dsn_syntax(dsn: str) -> None:
    """Reject a malformed DSN as bad input (exit 2) before trying to connect."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        # libpq's message may quote the DSN (and so a password); keep only the reason.
        reason = str(exc).split(":")[-1].strip() or "syntax error"
        raise ConfigError(f"invalid database DSN: {reason}") from None


@contextlib.asynccontextmanager
async def open_db(dsn: str) -> AsyncIterator[SyncDatabase]:
    """Connect a ``SyncDatabase``; an unreachable server becomes ``DatabaseUnavailable`` naming
    the host (exit code 6)."""
    import psycopg

    from metersync.store.database import SyncDatabase

    check_dsn_syntax(dsn)
    try:
        db = await SyncDatabase.connect(dsn)
    except (psycopg.OperationalError, DatabaseUnavailable, OSError) as exc:
        reason = _connect_reason(exc)
        raise DatabaseUnavailable(
            f"cannot connect to the sync database at {describe_dsn(dsn)}: {reason}"
        ) from None
    try:
        yield db
    finally:
        with contextlib.suppress(Exception):
            await db.close()


#: The store's own prefix (``SyncDatabase.connect``); we say where with :func:`describe_dsn`.
_STORE_PREFIX = "cannot connect to the sync database"


def _connect_reason(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, DatabaseUnavailable) and text.startswith(_STORE_PREFIX):
        # Already "cannot connect to the sync database host/db: reason": keep the reason only,
        # or the message says its prefix twice (issue 11.15, a DNS failure).
        text = text.split(": ", 1)[-1]
        return next((line.strip() for line in text.splitlines() if line.strip()), text)
    for marker in ("failed: ", "error: "):
        if marker in text:
            text = text.rsplit(marker, 1)[-1]
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return first


def run(coro_factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run one coroutine to completion on a fresh event loop (:mod:`metersync.cli._loop`)."""
    return run_on_loop(coro_factory())


def configure_logging(verbose: int, quiet: bool, level_name: str, log_format: str = "text") -> None:
    """Log to stderr: ``-v`` INFO, ``-vv`` DEBUG, ``-q`` errors only, else the configured level;
    ``log_format`` ``json``: one JSON object per line (:mod:`metersync.observe.logs`)."""
    if quiet:
        level = logging.ERROR
    elif verbose >= 2:
        level = logging.DEBUG
    elif verbose == 1:
        level = logging.INFO
    else:
        level = getattr(logging, level_name, logging.WARNING)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_metersync", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler()
    if log_format == "json":
        from metersync.observe.logs import JsonFormatter  # secrets masked, escapes as JSON

        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            TerminalSafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
    handler._metersync = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("metersync").setLevel(level)
    # Third-party chatter (httpx request lines, aiohttp access log) only when debugging.
    for noisy in ("httpx", "httpcore", "aiohttp.access", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose >= 3 else logging.WARNING)


class TerminalSafeFormatter(logging.Formatter):
    """Log lines quote data (tenant names, server answers): no escape sequence reaches the
    terminal raw (shown as ``\\xNN``); newlines stay, for tracebacks."""

    def format(self, record: logging.LogRecord) -> str:
        """The formatted record with control characters other than newline/tab escaped."""
        from metersync.observe.logs import redact  # DSN passwords, API keys: never shown

        return terminal_safe(redact(super().format(record)), keep_newlines=True)


# -- Ctrl-C / SIGTERM: one convention for every command ------------------------------------------
#
# First signal: finish the batch in flight (it is confirmed and marked, or stays pending), then
# stop: exit 0, "stopped cleanly". Second signal: abandon the work in flight unmarked, exit 130
# (ExitCode.INTERRUPTED) with a one-line "interrupted: ..." error, and never "stopped cleanly".
# The sync commands implement it in cli/sync.py (_Run.on_signal); any other KeyboardInterrupt
# (a Ctrl-C in a prompt or a one-shot command) reaches main(), which says INTERRUPTED_MESSAGE.
# Nothing is marked synchronized that the Client System did not confirm, either way.

INTERRUPTED_MESSAGE = "interrupted: work in flight was abandoned unmarked"


def json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--json`` to a reporting command (also accepted as a global option)."""

    def callback(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
        state = ctx.find_object(AppState)
        if state is not None:
            state.set_json(value)
        return value

    return click.option(
        "--json",
        "json_flag",
        is_flag=True,
        expose_value=False,
        callback=callback,
        help="Print one JSON document on stdout instead of tables.",
    )(func)


pass_state = click.make_pass_decorator(AppState)

"""What the command line prints: exit codes, one-line errors, rich tables, JSON, progress bars.

Humans get tables on stdout and progress on stderr; scripts get exactly one JSON document on
stdout with ``--json``. Errors are one line on stderr (a traceback only with ``-v``).
"""

from __future__ import annotations

import datetime as _dt
import decimal
import enum
import logging
import os
import sys
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from metersync import errors
from metersync.cli._safe import terminal_safe

#: Console width when stdout is not a terminal.
PIPE_WIDTH = 120


class ExitCode(enum.IntEnum):
    """Process exit codes of ``metersync`` (documented in the README and ``--help``).

    Each comes from an error TYPE (:func:`exit_code_for`), never from a message's text.
    """

    OK = 0
    UNEXPECTED = 1
    USAGE = 2
    AUTH = 3
    REMOTE = 4
    PARTIAL = 5
    DATABASE = 6
    TOO_LARGE = 7
    CONTRACT = 8
    IN_DOUBT = 9
    INTERRUPTED = 130


EXIT_CODES_HELP = """\b
Exit codes:
  0    ok (also: the sync loop stopped by SIGINT/SIGTERM; tenants busy elsewhere are skipped)
  1    unexpected error (run with -v for the traceback)
  2    bad input or usage (invalid option, batch size, unknown tenant, column type, config)
  3    authentication failure (the Client System refused the API key)
  4    Client System unavailable (retries spent on timeouts, connection errors, 408/429/5xx)
  5    partial (readings rejected or quarantined, or an operation ended with another error)
  6    sync database unavailable (or the connection holding a tenant's lock was lost)
  7    batch too large for the Client System (HTTP 413): lower the tenant's upload_batch_size
  8    the Client System broke the contract (a malformed download page, an answer whose
       counts do not add up, or HTTP 400 to a body it should accept)
  9    readings held in doubt (a non-idempotent Client System's answer was lost):
       check them, then `metersync resolve`
  130  interrupted (a second Ctrl-C: batches in flight were abandoned unmarked)"""

#: Which code wins when a run has several problems (the first one found in this order).
EXIT_PRIORITY = (
    ExitCode.AUTH,
    ExitCode.DATABASE,
    ExitCode.USAGE,
    ExitCode.TOO_LARGE,
    ExitCode.CONTRACT,
    ExitCode.IN_DOUBT,
    ExitCode.UNEXPECTED,
    ExitCode.REMOTE,
    ExitCode.PARTIAL,
)


def _error_types() -> tuple[
    tuple[type[BaseException] | tuple[type[BaseException], ...], ExitCode], ...
]:
    """(types, code) pairs, most specific first (subclasses before their bases)."""
    import psycopg

    outcome_unknown = getattr(errors, "OutcomeUnknownError", None)
    pairs: list[tuple[Any, ExitCode]] = [
        (errors.AuthError, ExitCode.AUTH),
        (errors.PayloadTooLargeError, ExitCode.TOO_LARGE),
        (
            (errors.MalformedPageError, errors.InconsistentResponseError, errors.BadRequestError),
            ExitCode.CONTRACT,
        ),
    ]
    if outcome_unknown is not None:
        pairs.append((outcome_unknown, ExitCode.IN_DOUBT))
    pairs += [
        ((errors.RemoteUnavailableError, errors.ClientSystemError), ExitCode.REMOTE),
        ((errors.DatabaseUnavailable, psycopg.OperationalError), ExitCode.DATABASE),
        ((errors.ConfigError, errors.SchemaError), ExitCode.USAGE),
        (errors.TenantBusyError, ExitCode.PARTIAL),
    ]
    return tuple(pairs)


def exit_code_for(exc: BaseException) -> ExitCode:
    """Map an exception to the exit code an operator's script can act on (by its type)."""
    import httpx

    if isinstance(exc, KeyboardInterrupt):
        return ExitCode.INTERRUPTED
    for types, code in _error_types():
        if isinstance(exc, types):
            return code
    if isinstance(exc, httpx.TransportError):  # should arrive wrapped; unreachable either way
        return ExitCode.REMOTE
    return ExitCode.UNEXPECTED


def error_document(exc: BaseException, code: int | None = None) -> dict[str, Any]:
    """The ``"error"`` member of a ``--json`` document for a failed command."""
    return {
        "type": type(exc).__name__,
        "message": one_line(exc),
        "exit_code": int(exit_code_for(exc) if code is None else code),
    }


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (first line of a multi-line message)."""
    text = str(exc).strip() or type(exc).__name__
    return next(line.strip() for line in text.splitlines() if line.strip())


def mask_secret(secret: str | None) -> str:
    """Show at most the last four characters of a secret (``sk_…abcd``); never the whole key."""
    if not secret:
        return "-"
    if len(secret) < 12:
        return "…" * 3  # too short to reveal anything safely
    prefix = secret[:3] if secret[:3].endswith("_") else ""
    return f"{prefix}…{secret[-4:]}"


def _default(value: Any) -> Any:
    if isinstance(value, _dt.datetime | _dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, enum.Enum):
        return value.value
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def to_json(document: Any) -> str:
    """Serialize ``document`` (dicts, lists, datetimes, decimals) as indented JSON text."""
    return orjson.dumps(
        document, default=_default, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS
    ).decode()


class Output:
    """The printing side of one invocation: stdout for results, stderr for progress and errors."""

    #: ``--log-format json``: status and error lines go to the log (JSON lines), not raw stderr.
    log_lines = False

    def __init__(self, *, json_mode: bool = False, quiet: bool = False) -> None:
        self.json_mode = json_mode
        self.quiet = quiet
        # Piped output (logs, CI, `| less`) gets a fixed width instead of rich's 80 columns,
        # so tables stay readable; COLUMNS still wins when set.
        width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else PIPE_WIDTH
        self.out = Console(highlight=False, width=width)
        self.err = Console(stderr=True, highlight=False)

    def emit_json(self, document: Any) -> None:
        """Print ONE JSON document on stdout (for ``--json``)."""
        sys.stdout.write(to_json(document) + "\n")
        sys.stdout.flush()

    def info(self, message: str) -> None:
        """A human status line on stderr (silent with ``-q`` or ``--json``)."""
        if self.log_lines and not (self.quiet or self.json_mode):
            logging.getLogger("metersync.cli").info(message)
        elif not (self.quiet or self.json_mode):
            # Markup of our own is kept; escape sequences never reach the terminal (callers
            # escape interpolated data's markup with cli._safe.markup_safe).
            self.err.print(terminal_safe(message, keep_newlines=True))

    def line(self, message: str) -> None:
        """A human result line on stdout (silent with ``--json``)."""
        if not self.json_mode:
            self.out.print(terminal_safe(message, keep_newlines=True))

    def error(self, message: str) -> None:
        """The one-line error on stderr."""
        if self.log_lines:
            logging.getLogger("metersync.cli").error(" ".join(message.split()))
            return
        # Plain write, not rich: a terminal-width wrap would break the one-line contract.
        # Errors quote data (tenant names, server answers): control characters shown escaped.
        sys.stderr.write(f"metersync: error: {terminal_safe(' '.join(message.split()))}\n")
        sys.stderr.flush()

    def table(
        self,
        title: str | None,
        columns: Sequence[str],
        rows: Iterable[Sequence[Any]],
        *,
        right: Iterable[str] = (),
    ) -> None:
        """Print a rich table on stdout (nothing with ``--json``)."""
        if self.json_mode:
            return
        right_set = set(right)
        table = Table(title=title, title_justify="left")
        for column in columns:
            table.add_column(column, justify="right" if column in right_set else "left")
        for row in rows:
            # Cells are data (names, errors from the database): Text, so never read as markup.
            table.add_row(*(Text(terminal_safe(format_cell(value))) for value in row))
        self.out.print(table)

    def key_values(self, title: str | None, pairs: Mapping[str, Any]) -> None:
        """Print a two-column table of names and values."""
        self.table(title, ["", "value"], [(k, v) for k, v in pairs.items()])

    def progress(self) -> Progress:
        """A rich progress display on stderr; disabled when quiet, JSON or not a terminal."""
        return Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            console=self.err,
            # No bars in logs and pipes: only a terminal gets them.
            disable=self.quiet or self.json_mode or not self.err.is_terminal,
            transient=False,
        )


def format_cell(value: Any) -> str:
    """Render one table cell: numbers with thousands separators, None as a dash."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}"
    if isinstance(value, _dt.datetime):
        return value.astimezone(_dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return str(value)


def format_age(seconds: float | None) -> str:
    """A human age: ``45s``, ``12m``, ``3.5h``, ``2.1d``."""
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"

"""What the command line prints: exit codes, one-line errors, rich tables, JSON, progress bars.

Humans get tables on stdout and progress on stderr; scripts get exactly one JSON document on
stdout with ``--json``. Errors are one line on stderr (a traceback only with ``-v``).
"""

from __future__ import annotations

import datetime as _dt
import decimal
import enum
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

from metersync import errors

#: Console width when stdout is not a terminal.
PIPE_WIDTH = 120


class ExitCode(enum.IntEnum):
    """Process exit codes of ``metersync`` (documented in the README and ``--help``)."""

    OK = 0
    UNEXPECTED = 1
    USAGE = 2
    AUTH = 3
    REMOTE = 4
    PARTIAL = 5
    DATABASE = 6


EXIT_CODES_HELP = """\b
Exit codes:
  0  ok (also: the sync loop stopped by SIGINT/SIGTERM)
  1  unexpected error (run with -v for the traceback)
  2  bad input or usage (invalid option, batch size, unknown tenant, column type, config)
  3  authentication failure (the Client System refused the API key)
  4  Client System unavailable (retries spent)
  5  partial (readings rejected or quarantined, or a cycle ended with errors)
  6  sync database unavailable"""


def exit_code_for(exc: BaseException) -> ExitCode:
    """Map an exception to the exit code an operator's script can act on."""
    import psycopg

    if isinstance(exc, errors.AuthError):
        return ExitCode.AUTH
    if isinstance(exc, errors.ClientSystemError):
        return ExitCode.REMOTE
    if isinstance(exc, errors.DatabaseUnavailable | psycopg.OperationalError):
        return ExitCode.DATABASE
    if isinstance(exc, errors.ConfigError | errors.SchemaError | errors.MalformedPageError):
        return ExitCode.USAGE
    if isinstance(exc, errors.TenantBusyError):
        return ExitCode.PARTIAL
    return ExitCode.UNEXPECTED


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
        if not (self.quiet or self.json_mode):
            self.err.print(message)

    def line(self, message: str) -> None:
        """A human result line on stdout (silent with ``--json``)."""
        if not self.json_mode:
            self.out.print(message)

    def error(self, message: str) -> None:
        """The one-line error on stderr."""
        # Plain write, not rich: a terminal-width wrap would break the one-line contract.
        sys.stderr.write(f"metersync: error: {' '.join(message.split())}\n")
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
            table.add_row(*(format_cell(value) for value in row))
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

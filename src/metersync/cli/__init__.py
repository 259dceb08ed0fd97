"""The ``metersync`` command line (click + rich).

``main(argv) -> int`` is the testable entry point (it never calls ``sys.exit``);
``entrypoint()`` is what ``[project.scripts]`` and ``python -m metersync`` run.
Errors become one line on stderr and an exit code from ``output.ExitCode``; ``-v`` adds the
traceback.
"""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Sequence
from typing import Any

import click

from metersync import __impl__, __version__, extras
from metersync.cli._app import INTERRUPTED_MESSAGE, AppState, configure_logging
from metersync.cli._loop import loop_name
from metersync.cli.output import (
    EXIT_CODES_HELP,
    ExitCode,
    error_document,
    exit_code_for,
    one_line,
)
from metersync.errors import ConfigError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    try:  # psycopg is an install extra here; the reader needs its libpq
        from metersync.store.copy_rows import IMPL as reader
    except ImportError as exc:
        reader = f"unavailable ({exc})"
    try:
        loop = loop_name()
    except ConfigError as exc:
        loop = f"unavailable ({exc})"
    click.echo(
        f"metersync {__version__} (codec implementation: {__impl__}; COPY reader: {reader}; "
        f"event loop: {loop}; Python {sys.version.split()[0]})"
    )
    ctx.exit(0)


@click.group(context_settings=CONTEXT_SETTINGS, epilog=EXIT_CODES_HELP)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Print the version and the active codec implementation (c or python).",
)
@click.option("--dsn", metavar="DSN", help="Sync database (libpq DSN or URL). Env: METERSYNC_DSN.")
@click.option("--api-url", metavar="URL", help="Client System base URL. Env: METERSYNC_API_URL.")
@click.option(
    "--ca-bundle",
    type=click.Path(dir_okay=False, exists=True),
    help="Extra CA file to trust for an https Client System (verification stays on). "
    "Env: METERSYNC_CA_BUNDLE.",
)
@click.option(
    "--client-profile",
    type=click.Choice(["auto", "metersync", "metertrack"], case_sensitive=False),
    help="What the Client System is: auto (ask GET /health), metersync (our idempotent "
    "contract) or metertrack (the original, not idempotent). Env: METERSYNC_CLIENT_PROFILE.",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="TOML configuration file (default: ./metersync.toml when present).",
)
@click.option("-v", "--verbose", count=True, help="More logging (-v INFO, -vv DEBUG); tracebacks.")
@click.option("-q", "--quiet", is_flag=True, help="Only errors; no progress bars.")
@click.option("--json", "json_flag", is_flag=True, help="JSON output (same as a command's --json).")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    envvar="METERSYNC_LOG_FORMAT",
    help="Logs on stderr as text (default) or json: one object per line with time, level, "
    "logger, message, tenant, cycle, counts, seconds, error. Env: METERSYNC_LOG_FORMAT.",
)
@click.pass_context
def cli(
    ctx: click.Context,
    dsn: str | None,
    api_url: str | None,
    ca_bundle: str | None,
    client_profile: str | None,
    config_file: str | None,
    verbose: int,
    quiet: bool,
    json_flag: bool,
    log_format: str,
) -> None:
    """metersync: move meter readings between a site's sync database and the Client System.

    Configuration precedence: flags > environment (METERSYNC_*) > TOML file > defaults.
    API keys come from METERSYNC_API_KEY, a prompt, or the tenant row; never from arguments.
    """
    state = ctx.ensure_object(AppState)
    state.flags.update({"dsn": dsn, "api_url": api_url, "ca_bundle": ca_bundle})
    state.flags["client_profile"] = client_profile
    state.config_file = config_file
    state.verbose = verbose
    state.quiet = quiet
    state.output.quiet = quiet
    state.set_json(json_flag)
    state.output.log_lines = log_format == "json"
    configure_logging(verbose, quiet, state.settings.log_level, log_format)


def _register() -> None:
    from metersync.cli import demo, migrate, serve, status, sync, tenant

    cli.add_command(migrate.migrate)
    cli.add_command(tenant.tenant)
    cli.add_command(sync.upload)
    cli.add_command(sync.download)
    cli.add_command(sync.sync)
    cli.add_command(status.status)
    cli.add_command(status.requeue)
    resolve_command = _resolve_command()
    if resolve_command is not None:
        cli.add_command(resolve_command)
    cli.add_command(_needs_extra(serve.serve, "server"))
    cli.add_command(_needs_extra(demo.demo, "demo"))
    cli.add_command(_needs_extra(_bench_command(), "bench"))


def _needs_extra(command: click.Command, extra: str) -> click.Command:
    """Check ``extra`` before ``command`` runs (not at import: ``--help`` works without it).

    A missing extra stops the command with exit code 2 and the exact ``pip install`` to run.
    """
    callback = command.callback
    if callback is None:  # pragma: no cover - every command here has one
        return command

    @functools.wraps(callback)
    def checked(*args: Any, **kwargs: Any) -> Any:
        extras.require(extra, f"metersync {command.name}")
        return callback(*args, **kwargs)

    command.callback = checked
    return command


def _resolve_command() -> click.Command | None:
    """``metersync resolve`` (in-doubt readings, cli/resolve.py), once that module exists."""
    import importlib.util

    if importlib.util.find_spec("metersync.cli.resolve") is None:
        return None
    from metersync.cli import resolve

    return resolve.resolve


def _bench_command() -> click.Command:
    """``metersync bench`` lives in ``cli/bench.py`` (the benchmark module's own command)."""
    try:
        from metersync.cli import bench as bench_module
    except Exception as exc:  # a broken optional command must not take the others down
        reason = one_line(exc)

        @click.command("bench", context_settings={"ignore_unknown_options": True})
        @click.argument("args", nargs=-1, type=click.UNPROCESSED)
        def unavailable(args: tuple[str, ...]) -> None:
            """Capacity-planning benchmark (not available in this installation)."""
            raise click.ClickException(f"metersync bench is not available: {reason}")

        return unavailable
    command = getattr(bench_module, "bench", None)
    if not isinstance(command, click.Command):
        command = next(v for v in vars(bench_module).values() if isinstance(v, click.Command))
    return command


_register()


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``metersync`` with ``argv`` (default ``sys.argv[1:]``) and return the exit code."""
    state = AppState()
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        result = cli.main(args=args, prog_name="metersync", standalone_mode=False, obj=state)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        state.output.error(exc.format_message() + hint)
        return ExitCode.USAGE
    except click.Abort as exc:
        # click turns a KeyboardInterrupt inside a command into Abort: still an interruption.
        if isinstance(exc.__cause__, KeyboardInterrupt):
            state.output.error(INTERRUPTED_MESSAGE)
            return ExitCode.INTERRUPTED
        state.output.error("aborted")
        return ExitCode.UNEXPECTED
    except click.ClickException as exc:
        state.output.error(exc.format_message())
        return exc.exit_code
    except Exception as exc:
        return _report(state, exc, args)
    except KeyboardInterrupt:  # a second Ctrl-C (cli._app.install_stop_signals)
        state.output.error(INTERRUPTED_MESSAGE)
        return ExitCode.INTERRUPTED
    if isinstance(result, int):
        return result
    return ExitCode.OK


def _report(state: AppState, exc: BaseException, args: Sequence[str] = ()) -> int:
    if isinstance(exc, ImportError):
        # An extra's module imported where no up-front check foresaw it: still exit 2 with the
        # pip command, not "unexpected".
        missing = extras.error_for_import(exc, _command_name(args))
        if missing is not None:
            exc = missing
    code = exit_code_for(exc)
    if state.verbose:
        traceback.print_exception(exc, file=sys.stderr)
    if state.output.json_mode:  # scripts get ONE JSON document on stdout, also on failure
        state.output.emit_json({"error": error_document(exc, code), "exit_code": int(code)})
    if code == ExitCode.UNEXPECTED:
        state.output.error(
            f"unexpected {type(exc).__name__}: {one_line(exc)} (run with -v for details)"
        )
    else:
        state.output.error(one_line(exc))
    return code


def _command_name(args: Sequence[str]) -> str:
    """``metersync <subcommand>`` as the user typed it (for messages)."""
    for arg in args:
        if arg in cli.commands:
            return f"metersync {arg}"
    return "this command"


def entrypoint() -> None:
    """Console-script entry point: ``sys.exit(main())``."""
    sys.exit(main())


__all__ = ["cli", "entrypoint", "main"]

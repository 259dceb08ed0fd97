"""The CLI side: `--log-format json` lines and the `sync --metrics-port` option's bad input."""

from __future__ import annotations

import socket

import orjson
import pytest

from metersync.cli import main


def _json_lines(text: str) -> list[dict]:
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


def test_metrics_port_with_once_is_bad_input_said_as_a_json_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(
        ["--log-format", "json", "--dsn", "host=/nonexistent dbname=x", "sync", "--once",
         "--tenant", "1", "--metrics-port", "9818"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    (line,) = [x for x in _json_lines(err) if x["level"] == "ERROR"]
    assert "--metrics-port serves the loop" in line["message"]
    assert line["logger"] == "metersync.cli"


def test_a_taken_metrics_port_is_bad_input_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(
            ["--dsn", "host=/nonexistent dbname=x", "sync", "--tenant", "1",
             "--metrics-port", str(port)]
        )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"cannot serve metrics on 127.0.0.1:{port}" in err


def test_log_format_is_checked(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--log-format", "xml", "status"])
    assert code == 2
    assert "xml" in capsys.readouterr().err

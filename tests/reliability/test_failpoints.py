"""The failpoint switch itself: silent when unset, a SIGKILL at exactly the Nth hit when set."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from metersync import _failpoints

SCRIPT = """
import sys
from metersync._failpoints import failpoint
for i in range(1, 6):
    print(i, flush=True)
    failpoint("upload.after_post")
    failpoint("upload.before_mark")
print("survived", flush=True)
"""


def _run(value: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != _failpoints.ENV_VAR}
    if value is not None:
        env[_failpoints.ENV_VAR] = value
    return subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60
    )


def test_unset_is_a_no_op() -> None:
    result = _run(None)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "2", "3", "4", "5", "survived"]


@pytest.mark.parametrize("hit", [1, 3, 5])
def test_kill_on_the_nth_hit(hit: int) -> None:
    result = _run(f"upload.after_post={hit}")
    assert result.returncode == -signal.SIGKILL
    # The process printed `hit` and died at that hit's failpoint, before "survived".
    assert result.stdout.split() == [str(i) for i in range(1, hit + 1)]


def test_raise_action_and_other_names_untouched() -> None:
    result = _run("upload.before_mark=2:raise")
    assert result.returncode == 1
    assert "FailpointError: failpoint upload.before_mark (hit 2)" in result.stderr
    assert result.stdout.split() == ["1", "2"]


def test_misspelt_name_is_refused() -> None:
    with pytest.raises(ValueError, match=r"upload\.aftr_post"):
        _failpoints.parse("upload.aftr_post=1")
    with pytest.raises(ValueError, match=">= 1"):
        _failpoints.parse("upload.after_post=0")
    with pytest.raises(ValueError, match="unknown action"):
        _failpoints.parse("upload.after_post=1:explode")


def test_parse_sleep() -> None:
    rules = _failpoints.parse(" upload.after_post=2:sleep=0.25 , download.before_commit=1 ")
    assert rules["upload.after_post"].action == "sleep"
    assert rules["upload.after_post"].seconds == 0.25
    assert rules["download.before_commit"].action == "kill"

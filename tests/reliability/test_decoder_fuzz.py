"""Corrupted binary COPY fed to both codec twins' decoder: a ValueError, never a crash.

Each run happens in a child process (``_decoder_fuzz_child.py``) so that a segfault or an abort
in the Cython core is a failed test with a signal number, not a dead pytest.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CHILD = Path(__file__).with_name("_decoder_fuzz_child.py")
HAVE_C = importlib.util.find_spec("metersync.codec._batch") is not None


def _fuzz(impl: str, examples: int) -> dict[str, object]:
    env = {**os.environ, "METERSYNC_IMPL": impl}
    result = subprocess.run(
        [sys.executable, str(CHILD), str(examples)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode >= 0, (
        f"decoder ({impl}) crashed the process with signal {-result.returncode}:\n"
        f"{result.stderr[-3000:]}"
    )
    lines = result.stdout.strip().splitlines()
    assert lines, f"no summary from the fuzz child ({impl}):\n{result.stderr[-3000:]}"
    summary = json.loads(lines[-1])
    assert summary["impl"] == impl
    assert not summary["problems"], (
        f"decoder ({impl}) broke its contract on corrupted input: "
        + json.dumps(summary["problems"], indent=1)[:3000]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # The corpus really exercised both outcomes.
    assert summary["value_errors"] > 0
    assert summary["decoded"] > 0
    return summary


IMPLS = [
    "python",
    pytest.param("c", marks=pytest.mark.skipif(not HAVE_C, reason="compiled core not built")),
]


@pytest.mark.parametrize("impl", IMPLS)
def test_corrupted_copy_is_an_error_not_a_crash(impl: str) -> None:
    _fuzz(impl, 1500)


@pytest.mark.stress
@pytest.mark.parametrize("impl", IMPLS)
def test_corrupted_copy_is_an_error_not_a_crash_full(impl: str) -> None:
    _fuzz(impl, 30_000)

"""The CLI's event loop choice (metersync.cli._loop): METERSYNC_LOOP, and uvloop missing.

Each case runs in a child interpreter: the choice is made once per process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("uvloop", reason="uvloop is not installed here")

_CHILD = textwrap.dedent(
    """
    import asyncio, json, sys, warnings

    if {block_uvloop!r}:
        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "uvloop":
                    raise ModuleNotFoundError("No module named 'uvloop' (blocked)", name=name)
                return None
        sys.meta_path.insert(0, Blocker())

    from metersync.cli import _loop
    from metersync.errors import ConfigError

    async def which():
        return type(asyncio.get_running_loop()).__module__

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out = {{"name": _loop.loop_name(), "loop": _loop.run(which())}}
        except ConfigError as exc:
            out = {{"error": str(exc)}}
    out["warnings"] = [str(w.message) for w in caught]
    print(json.dumps(out))
    """
)


def _child(env_value: str | None, *, block_uvloop: bool = False) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "METERSYNC_LOOP"}
    if env_value is not None:
        env["METERSYNC_LOOP"] = env_value
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD.format(block_uvloop=block_uvloop)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_unset_takes_uvloop_and_says_so() -> None:
    out = _child(None)
    assert out["name"] == "uvloop" and out["loop"].startswith("uvloop")
    assert out["warnings"] == []


def test_asyncio_is_taken_when_asked() -> None:
    out = _child("asyncio")
    assert out["name"] == "asyncio" and out["loop"].startswith("asyncio")
    assert out["warnings"] == []


def test_a_bad_value_names_itself() -> None:
    out = _child("trio")
    assert "METERSYNC_LOOP='trio' is not valid" in out["error"]


def test_uvloop_missing_is_an_error_when_required_and_a_warning_otherwise() -> None:
    required = _child("uvloop", block_uvloop=True)
    assert "METERSYNC_LOOP=uvloop but uvloop cannot be imported" in required["error"]
    unset = _child(None, block_uvloop=True)
    assert unset["name"] == "asyncio" and unset["loop"].startswith("asyncio")
    if sys.platform != "win32":
        assert any("uvloop is not installed" in w for w in unset["warnings"])


def test_version_names_the_loop() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "metersync", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "event loop: uvloop" in proc.stdout

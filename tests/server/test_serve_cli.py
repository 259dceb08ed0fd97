"""``metersync serve``: profiles, the generated admin token, the documented fault syntax."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from fix_pg import create_database, drop_database
from fix_server import clean_env, serve_process


@pytest.fixture
def cs_dsn(pg_admin_dsn: str) -> Iterator[str]:
    dsn = create_database(pg_admin_dsn, "ms_serve")
    try:
        yield dsn
    finally:
        drop_database(pg_admin_dsn, dsn)


def test_serve_metertrack_prints_a_generated_admin_token(cs_dsn: str) -> None:
    args = ("--profile", "metertrack", "--port", "0", "--dsn", cs_dsn, "--reading-delay-ms", "1")
    with serve_process(*args) as (proc, base_url):
        assert proc.stderr is not None
        assert base_url.endswith("/api"), base_url
        token_line = next(line for line in proc.stderr if "admin token" in line)
        match = re.search(r"admin token \(X-Admin-Token\): (\S+)", token_line)
        assert match is not None, token_line
        token = match.group(1)
        health = httpx.get(base_url + "/health").json()
        assert health["status"] == "OK" and "contract" not in health
        admin = base_url.removesuffix("/api") + "/admin"
        assert httpx.post(admin + "/reset").status_code == 401
        assert httpx.get(admin + "/stats", headers={"X-Admin-Token": "guess"}).status_code == 401
        stats = httpx.get(admin + "/stats", headers={"X-Admin-Token": token})
        assert stats.status_code == 200 and stats.json()["profile"] == "metertrack"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--profile", "metertrack", "--faults", "throttle=1:1"], "throttle_count"),
        (["--sink", "--faults", "fail=1:503"], "--sink takes no --faults"),
        (["--sink-download", "5"], "--sink only"),
        (["--reading-delay-ms", "5"], "metertrack only"),
    ],
)
def test_serve_refuses_options_that_do_not_fit(args: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "metersync", "serve", "--port", "0", *args],
        capture_output=True, text=True, env=clean_env(), timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr


def test_serve_help_documents_every_fault_kind_with_working_examples() -> None:
    from metersync.server import FaultPlan
    from metersync.server.faults import _COUNT_FIELDS
    from metersync.server.metertrack import check_plan

    proc = subprocess.run(
        [sys.executable, "-m", "metersync", "serve", "--help"],
        capture_output=True, text=True, env=clean_env(), timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0
    kinds = {"fail", "random", "throttle", "rate429", "delay", "reject", "path", "seed"}
    for kind in kinds | set(_COUNT_FIELDS):
        assert re.search(rf"^\s+{kind}=", proc.stdout, re.MULTILINE), kind
    examples = re.findall(
        r"metersync serve (--profile metertrack )?--faults '([^']+)'", proc.stdout
    )
    assert len(examples) >= 5
    for metertrack, spec in examples:
        plan = FaultPlan.from_spec(spec)  # every example parses
        if metertrack:
            check_plan(plan)

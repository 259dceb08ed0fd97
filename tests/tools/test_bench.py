"""``metersync bench``: the quick sweep's JSON, scratch cleanup, refusal, recommendation rule."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import psycopg
import pytest

from fix_server import ServerHandle
from metersync.cli import main
from metersync.cli.output import ExitCode
from metersync.tools.bench import SizeResult, percentile, recommend
from metersync.tools.synthetic import reading_batch

SIZE_FIELDS = {
    "direction", "batch_size", "readings", "batches", "seconds", "readings_per_s", "p50_ms",
    "p95_ms", "statements", "statements_per_100k", "peak_rss_mb",
}  # fmt: skip


def _size(batch_size: int, per_s: float, p95: float) -> SizeResult:
    return SizeResult("upload", batch_size, 1000, 10, 1.0, per_s, p95 / 2, p95, 20, 2000.0, 100.0)


def test_recommend_smallest_within_five_percent_of_best() -> None:
    results = [_size(100, 800, 5), _size(500, 960, 20), _size(1000, 1000, 40)]
    results.append(_size(5000, 990, 400))
    assert recommend(results, None)[0] == 500  # 960 >= 0.95 * 1000, 100 is not
    # A budget excludes the sizes whose p95 does not fit, then the rule applies to the rest.
    assert recommend(results, 30)[0] == 500
    assert recommend(results, 10)[0] == 100
    size, why = recommend(results, 1)  # nothing fits: lowest p95, and the reason says so
    assert size == 100 and "no size" in why
    assert recommend([], None) == (None, "nothing measured")


def test_percentile_interpolates() -> None:
    assert percentile([], 0.95) == 0.0
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([0.0, 10.0], 0.95) == pytest.approx(9.5)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _check_shape(doc: dict[str, Any], upload: list[int], download: list[int]) -> None:
    assert [r["batch_size"] for r in doc["upload"]] == upload
    assert [r["batch_size"] for r in doc["download"]] == download
    for row in doc["upload"] + doc["download"]:
        assert set(row) == SIZE_FIELDS
        assert row["readings"] > 0 and row["readings_per_s"] > 0
        assert 0 < row["p50_ms"] <= row["p95_ms"]
        assert row["statements"] > 0 and row["peak_rss_mb"] > 0
        assert row["batches"] == -(-row["readings"] // row["batch_size"])
    assert doc["recommended_upload"] in upload
    assert doc["recommended_download"] in download
    assert doc["cleaned_up"] is True


def test_quick_json_on_the_embedded_default_ignores_the_configured_systems(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Any,
    fresh_dsn: str,
    reference_server: ServerHandle,
) -> None:
    """A shell set up for the daemon (METERSYNC_DSN, METERSYNC_API_URL, METERSYNC_API_KEY, a
    metersync.toml, the global --dsn) must not point the bench at production: it runs on the
    embedded default and leaves the configured systems untouched."""
    _seed_production(fresh_dsn)
    reference_server.register_tenant(PROD, "prod-key-0123456789")
    before = _counts(fresh_dsn, PROD)
    monkeypatch.setenv("METERSYNC_DSN", fresh_dsn)
    monkeypatch.setenv("METERSYNC_API_URL", reference_server.base_url)
    monkeypatch.setenv("METERSYNC_API_KEY", "prod-key-0123456789")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "metersync.toml").write_text(
        f"dsn = {json.dumps(fresh_dsn)}\napi_url = {json.dumps(reference_server.base_url)}\n"
    )
    chart = tmp_path / "chart.png"
    code, out, err = _run(
        capsys, "--dsn", fresh_dsn, "bench", "--quick", "--json", "--plot", str(chart)
    )
    assert code == ExitCode.OK, err
    doc = json.loads(out)
    _check_shape(doc, [100, 1000], [500, 1000])
    assert doc["target"].startswith("embedded")
    assert doc["tenant_id"] > 9_000_000_000
    assert all(r["readings"] == 3000 for r in doc["upload"])
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Production: not a row more or less, nothing sent to its Client System.
    assert _counts(fresh_dsn, PROD) == before
    assert _counts(fresh_dsn, doc["tenant_id"]) == (0, 0, 0, 0)
    assert reference_server.rows(PROD) == 0
    assert reference_server.rows(doc["tenant_id"]) == 0


@pytest.mark.parametrize(
    "argv",
    [
        ["--dsn", "host=/nonexistent dbname=x"],
        ["--api-url", "http://127.0.0.1:9/api"],
    ],
    ids=["dsn-only", "api-url-only"],
)
def test_a_half_configured_target_is_refused(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    code, _out, err = _run(capsys, "bench", "--quick", "--scratch-tenant", "77", *argv)
    assert code == ExitCode.USAGE
    assert "BOTH --dsn and --api-url" in err


#: A production tenant of the sync database the bench must never touch.
PROD = 7


def _seed_production(dsn: str, tenant_id: int = PROD, readings: int = 3) -> None:
    """Migrate, add a real tenant with readings, a download cursor and a sync_log row."""
    from metersync.store.database import SyncDatabase

    async def seed() -> None:
        async with await SyncDatabase.connect(dsn) as db:
            await db.migrate()
            await db.add_tenant(tenant_id, "real", "real-key-0123456789")
            if readings:
                batch = reading_batch(readings, seed=5, tenant_id=tenant_id)
                await db.insert_readings(batch, chunk_rows=100)

    asyncio.run(seed())
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO sync_state (tenant_id, download_cursor) VALUES (%s, 'c-42')", (tenant_id,)
        )
        conn.execute(
            "INSERT INTO sync_log (tenant_id, operation, success) VALUES (%s, 'download', true)",
            (tenant_id,),
        )


async def _migrate(dsn: str) -> None:
    from metersync.store.database import SyncDatabase

    async with await SyncDatabase.connect(dsn) as db:
        await db.migrate()


def _counts(dsn: str, tenant_id: int) -> tuple[int, int, int, int]:
    """(readings, tenant rows, cursor rows, sync_log rows) of a tenant in the sync database."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM meter_reading WHERE tenant_id = %(t)s),"
            " (SELECT count(*) FROM tenant WHERE tenant_id = %(t)s),"
            " (SELECT count(*) FROM sync_state WHERE tenant_id = %(t)s),"
            " (SELECT count(*) FROM sync_log WHERE tenant_id = %(t)s)",
            {"t": tenant_id},
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2]), int(row[3])


def test_configured_target_cleans_up_only_what_it_created(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    fresh_dsn: str,
    reference_server: ServerHandle,
) -> None:
    _seed_production(fresh_dsn)
    before = _counts(fresh_dsn, PROD)
    scratch = 9_000_000_123
    reference_server.register_tenant(scratch, "bench-test-key")
    monkeypatch.setenv("METERSYNC_BENCH_API_KEY", "bench-test-key")
    monkeypatch.setenv("METERSYNC_API_KEY", "real-key-0123456789")  # the daemon's: not used
    code, out, err = _run(
        capsys, "bench", "--dsn", fresh_dsn, "--api-url", reference_server.base_url,
        "--scratch-tenant", str(scratch), "--quick", "--readings", "1000", "--json",
    )  # fmt: skip
    assert code == ExitCode.OK, err
    doc = json.loads(out)
    _check_shape(doc, [100, 1000], [500, 1000])
    assert doc["tenant_id"] == scratch
    # Everything it wrote on the sync database side is gone, tenant row and sync_log included,
    assert _counts(fresh_dsn, scratch) == (0, 0, 0, 0)
    # and nothing else was touched.
    assert _counts(fresh_dsn, PROD) == before
    # The Client System really received the readings (it keeps them: documented).
    assert reference_server.rows(scratch) == 2000
    assert "bench-test-key" not in out + err


def test_configured_target_needs_the_bench_key(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, fresh_dsn: str
) -> None:
    monkeypatch.delenv("METERSYNC_BENCH_API_KEY", raising=False)
    monkeypatch.setenv("METERSYNC_API_KEY", "real-key-0123456789")
    code, _out, err = _run(
        capsys, "bench", "--dsn", fresh_dsn, "--api-url", "http://127.0.0.1:9/api",
        "--scratch-tenant", "77", "--quick",
    )  # fmt: skip
    assert code == ExitCode.USAGE
    assert "METERSYNC_BENCH_API_KEY" in err


@pytest.mark.parametrize("readings", [3, 0], ids=["with-readings", "no-readings"])
def test_refuses_a_scratch_tenant_that_exists(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    fresh_dsn: str,
    readings: int,
) -> None:
    """An existing tenant, even one without readings, is refused: its cursor and sync_log
    would otherwise be deleted by the cleanup."""
    _seed_production(fresh_dsn, 42, readings)
    before = _counts(fresh_dsn, 42)
    assert before == (readings, 1, 1, 1)
    monkeypatch.setenv("METERSYNC_BENCH_API_KEY", "some-key")
    code, _out, err = _run(
        capsys, "bench", "--dsn", fresh_dsn, "--api-url", "http://127.0.0.1:9/api",
        "--scratch-tenant", "42", "--quick",
    )  # fmt: skip
    assert code == ExitCode.USAGE
    assert "scratch tenant 42 already exists" in err and "--scratch-tenant" in err
    assert "1 in sync_state" in err
    assert _counts(fresh_dsn, 42) == before  # untouched


def test_bad_sizes_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = _run(capsys, "bench", "--upload-sizes", "100,20000")
    assert code == ExitCode.USAGE
    assert "20000" in err and "1..10000" in err


def test_shared_harness_is_one_implementation() -> None:
    """`metersync bench` and benchmarks/_support.py use the same sampler and server process."""
    import importlib.util
    from pathlib import Path

    from metersync.tools import bench as bench_lib
    from metersync.tools import measure

    support_path = Path(__file__).resolve().parents[2] / "benchmarks" / "_support.py"
    spec = importlib.util.spec_from_file_location("_bench_support_check", support_path)
    assert spec is not None and spec.loader is not None
    support = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(support)
    assert support.PeakRss is measure.PeakRss is bench_lib.PeakRss
    assert support.ServerProcess is measure.ServerProcess is bench_lib.ServerProcess
    # The sampler must see the RSS rise by 32 MiB of touched ballast. In a process of its own:
    # in the suite's process, other tests' leftover threads may free as much while it samples
    # (seen once in CI: growth 0.004 MiB), which says nothing about the sampler.
    probe = (
        "import json\n"
        "from metersync.tools.measure import PeakRss\n"
        "sampler = PeakRss(interval=0.001)\n"
        "ballast = bytearray(32 * 2**20)\n"
        "ballast[::4096] = b'x' * len(range(0, len(ballast), 4096))\n"
        "sampler.stop()\n"
        "print(json.dumps([sampler.peak_mb, sampler.growth_mb]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    peak_mb, growth_mb = json.loads(out.stdout)
    assert peak_mb >= growth_mb >= 16

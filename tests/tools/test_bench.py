"""``metersync bench``: the quick sweep's JSON, scratch cleanup, refusal, recommendation rule."""

from __future__ import annotations

import asyncio
import json
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


def test_quick_json_on_the_embedded_default(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.delenv("METERSYNC_DSN", raising=False)
    monkeypatch.chdir(tmp_path)  # no metersync.toml from the work tree
    chart = tmp_path / "chart.png"
    code, out, err = _run(capsys, "bench", "--quick", "--json", "--plot", str(chart))
    assert code == ExitCode.OK, err
    doc = json.loads(out)
    _check_shape(doc, [100, 1000], [500, 1000])
    assert doc["tenant_id"] > 9_000_000_000
    assert all(r["readings"] == 3000 for r in doc["upload"])
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def _migrate(dsn: str) -> None:
    from metersync.store.database import SyncDatabase

    async with await SyncDatabase.connect(dsn) as db:
        await db.migrate()


def _counts(dsn: str, tenant_id: int) -> tuple[int, int, int]:
    """(readings, tenant rows, cursor rows) of a tenant in the sync database."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM meter_reading WHERE tenant_id = %(t)s),"
            " (SELECT count(*) FROM tenant WHERE tenant_id = %(t)s),"
            " (SELECT count(*) FROM sync_state WHERE tenant_id = %(t)s)",
            {"t": tenant_id},
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def test_configured_target_cleans_up_the_scratch_tenant(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    fresh_dsn: str,
    reference_server: ServerHandle,
) -> None:
    asyncio.run(_migrate(fresh_dsn))
    scratch = 9_000_000_123
    reference_server.register_tenant(scratch, "bench-test-key")
    monkeypatch.setenv("METERSYNC_API_KEY", "bench-test-key")
    code, out, err = _run(
        capsys, "bench", "--dsn", fresh_dsn, "--api-url", reference_server.base_url,
        "--scratch-tenant", str(scratch), "--quick", "--readings", "1000", "--json",
    )  # fmt: skip
    assert code == ExitCode.OK, err
    doc = json.loads(out)
    _check_shape(doc, [100, 1000], [500, 1000])
    assert doc["tenant_id"] == scratch
    # Everything written on the sync database side is gone, tenant row included (it made it).
    assert _counts(fresh_dsn, scratch) == (0, 0, 0)
    # The Client System really received the readings (it keeps them: documented).
    assert reference_server.rows(scratch) == 2000
    assert "bench-test-key" not in out + err


def test_refuses_a_tenant_with_readings(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, fresh_dsn: str
) -> None:
    from metersync.store.database import SyncDatabase

    async def seed() -> None:
        async with await SyncDatabase.connect(fresh_dsn) as db:
            await db.migrate()
            await db.add_tenant(42, "real", "real-key")
            await db.insert_readings(reading_batch(3, seed=5, tenant_id=42), chunk_rows=100)

    asyncio.run(seed())
    monkeypatch.setenv("METERSYNC_API_KEY", "some-key")
    code, _out, err = _run(
        capsys, "bench", "--dsn", fresh_dsn, "--api-url", "http://127.0.0.1:9/api",
        "--scratch-tenant", "42", "--quick",
    )  # fmt: skip
    assert code == ExitCode.USAGE
    assert "tenant 42 has 3 readings" in err and "--scratch-tenant" in err
    assert _counts(fresh_dsn, 42) == (3, 1, 0)  # untouched


def test_bad_sizes_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = _run(capsys, "bench", "--upload-sizes", "100,20000")
    assert code == ExitCode.USAGE
    assert "20000" in err and "1..10000" in err

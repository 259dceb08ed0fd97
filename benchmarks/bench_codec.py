"""Codec benchmarks: the Cython core and its Python twin against the peers (issue 2 targets).

On 50,000 wide synthetic readings (uuid, timestamptz, 2 bigints, 40 decimal128(18,4), ~5% nulls):
- ``copy_binary`` of the whole batch vs pgpq's ``ArrowToPostgresBinaryEncoder`` (target: >= 2x);
- ``json_rows`` over 1000-row slices vs polars ``write_json`` of the whole batch (>= 4x; note
  polars writes decimals as strings) and vs ``to_pylist()`` + orjson per slice (>= 20x);
- ``json_rows`` in the ``metertrack`` profile (nulls omitted, decimals as strings), same slices;
- ``json_row_sizes`` and ``split_by_body_size`` (10 MiB) of the whole batch next to encoding it;
- ``from_copy_binary`` of one 1000-row page (the database adapter's fetch path).

Run: ``.venv/bin/python -m pytest benchmarks/bench_codec.py --benchmark-only -q``.
The Python twin is timed with a single round (it takes seconds); peers that are not installed
skip cleanly.
"""

from __future__ import annotations

import uuid
from functools import cache
from types import ModuleType

import pyarrow as pa
import pytest

from metersync.codec import _python as _codec_py
from metersync.codec import slices
from metersync.tools.synthetic import reading_batch

ROWS = 50_000
SLICE = 1000


@cache
def wide() -> pa.RecordBatch:
    """The benchmark batch: 50,000 wide readings, built once per session."""
    return reading_batch(ROWS, seed=11)


@cache
def wide_slices() -> tuple[pa.RecordBatch, ...]:
    return tuple(slices(wide(), SLICE))


@cache
def page() -> tuple[bytes, pa.Schema]:
    """One 1000-row page of binary COPY output and its schema."""
    batch = wide().slice(0, SLICE)
    return _codec_py.copy_binary(batch), batch.schema


def core() -> ModuleType:
    return pytest.importorskip("metersync.codec._batch")


def _json_all(module: ModuleType, profile: str = "metersync") -> int:
    return sum(len(module.json_rows(s, profile=profile)) for s in wide_slices())


# ---------------------------------------------------------------------------------------------
# copy_binary: 50,000 rows


@pytest.mark.benchmark(group="codec copy_binary 50k wide rows")
def test_copy_binary_c(benchmark) -> None:
    c = core()
    out = benchmark(c.copy_binary, wide())
    assert out == c.copy_binary(wide())


@pytest.mark.benchmark(group="codec copy_binary 50k wide rows")
def test_copy_binary_python_twin(benchmark) -> None:
    out = benchmark.pedantic(_codec_py.copy_binary, (wide(),), rounds=1, iterations=1)
    assert out == core().copy_binary(wide())


@pytest.mark.benchmark(group="codec copy_binary 50k wide rows")
def test_copy_binary_pgpq(benchmark) -> None:
    pgpq = pytest.importorskip("pgpq")
    batch = wide()

    def encode() -> bytes:
        encoder = pgpq.ArrowToPostgresBinaryEncoder(batch.schema)
        return (
            bytes(encoder.write_header())
            + bytes(encoder.write_batch(batch))
            + bytes(encoder.finish())
        )

    out = benchmark(encode)
    assert out == core().copy_binary(batch)  # same bytes: a fair race


# ---------------------------------------------------------------------------------------------
# json_rows: 50,000 rows in 1000-row slices


@pytest.mark.benchmark(group="codec json 50k wide rows")
def test_json_rows_c_1000_row_slices(benchmark) -> None:
    c = core()
    assert benchmark(_json_all, c) > 0


@pytest.mark.benchmark(group="codec json 50k wide rows")
def test_json_rows_core_metertrack_profile_1000_row_slices(benchmark) -> None:
    c = core()
    assert benchmark(_json_all, c, "metertrack") > 0


@pytest.mark.benchmark(group="codec json 50k wide rows")
def test_json_rows_python_twin_1000_row_slices(benchmark) -> None:
    assert benchmark.pedantic(_json_all, (_codec_py,), rounds=1, iterations=1) > 0


@pytest.mark.benchmark(group="codec json 50k wide rows")
def test_json_polars_write_json_whole_batch(benchmark) -> None:
    pl = pytest.importorskip("polars")
    # polars cannot write binary columns to JSON: give it the ids as text already, and leave
    # that and the Arrow conversion out of the timing (both favour polars).
    batch = wide()
    ids = pa.array([str(uuid.UUID(bytes=b)) for b in batch.column(0).to_pylist()])
    frame = pl.from_arrow(batch.set_column(0, batch.schema.field(0).name, ids))
    assert len(benchmark(frame.write_json)) > 0


@pytest.mark.benchmark(group="codec json 50k wide rows")
def test_json_to_pylist_orjson_1000_row_slices(benchmark) -> None:
    orjson = pytest.importorskip("orjson")

    def encode() -> int:
        return sum(len(orjson.dumps(s.to_pylist(), default=str)) for s in wide_slices())

    assert benchmark.pedantic(encode, rounds=2, iterations=1) > 0


# ---------------------------------------------------------------------------------------------
# Body-size splitting: 50,000 rows against MeterTrack's 10 MiB body limit


@pytest.mark.benchmark(group="codec body sizes 50k wide rows")
def test_json_row_sizes_core(benchmark) -> None:
    c = core()
    sizes = benchmark(c.json_row_sizes, wide())
    assert len(sizes) == ROWS


@pytest.mark.benchmark(group="codec body sizes 50k wide rows")
def test_json_rows_c_whole_batch(benchmark) -> None:
    """The reference for the sizes: encoding the whole batch once. (Only this entry of the group
    is named ``*_c_*``: benchmarks/summarize.py takes the one C entry as the group's own.)"""
    c = core()
    assert len(benchmark(c.json_rows, wide())) > 0


@pytest.mark.benchmark(group="codec body sizes 50k wide rows")
def test_split_by_body_size_core_10_mib(benchmark) -> None:
    c = core()
    parts = benchmark(c.split_by_body_size, wide(), 10_485_760, profile="metertrack")
    assert sum(p.num_rows for p in parts) == ROWS and len(parts) > 1


# ---------------------------------------------------------------------------------------------
# from_copy_binary: one 1000-row page


@pytest.mark.benchmark(group="codec from_copy_binary 1000-row page")
def test_from_copy_binary_c(benchmark) -> None:
    c = core()
    data, schema = page()
    assert benchmark(c.from_copy_binary, data, schema).num_rows == SLICE


@pytest.mark.benchmark(group="codec from_copy_binary 1000-row page")
def test_from_copy_binary_python_twin(benchmark) -> None:
    data, schema = page()
    result = benchmark.pedantic(_codec_py.from_copy_binary, (data, schema), rounds=3)
    assert result.num_rows == SLICE

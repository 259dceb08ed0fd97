"""Realistic synthetic meter readings as Arrow record batches (demo, tests, benchmarks).

Built with numpy straight into Arrow buffers, so a million wide readings cost about a second and
no Python object per value. Columns are the upload columns of the standard ``meter_reading``:
``meter_reading_id`` (fixed_size_binary(16), random UUIDv4), ``created_at`` (timestamp us UTC,
increasing), ``meter_id``, ``meter_element_id`` (int64, some nulls) and the 40 measurement columns
as ``decimal128(18, 4)`` with about ``null_fraction`` nulls.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from metersync.model import MEASUREMENT_COLUMNS

DECIMAL_TYPE = pa.decimal128(18, 4)
UUID_TYPE = pa.binary(16)
TIMESTAMPTZ_TYPE = pa.timestamp("us", tz="UTC")

# Typical magnitude (in units, before the 4 decimal digits) and whether negative values occur.
_RANGES: dict[str, tuple[float, float]] = {
    "frequency": (49.8, 50.2),
    "power_factor": (-1.0, 1.0),
    "voltage_thd": (0.0, 8.0),
    "voltage": (200.0, 420.0),
    "current": (0.0, 400.0),
    "energy": (0.0, 9_000_000.0),
    "power": (-250_000.0, 250_000.0),
    "demand": (0.0, 500_000.0),
}


def _range_for(column: str) -> tuple[float, float]:
    for key in ("frequency", "power_factor", "voltage_thd", "voltage", "current", "energy"):
        if column.startswith(key) or f"_{key}" in column:
            return _RANGES[key]
    if column.startswith("maximum_demand"):
        return _RANGES["demand"]
    return _RANGES["power"]


def _validity(rng: np.random.Generator, n: int, null_fraction: float) -> pa.Buffer | None:
    if null_fraction <= 0:
        return None
    valid = rng.random(n) >= null_fraction
    return pa.py_buffer(np.packbits(valid, bitorder="little").tobytes())


def decimal_array(
    scaled: np.ndarray, validity: pa.Buffer | None = None, type_: pa.DataType = DECIMAL_TYPE
) -> pa.Array:
    """Build a decimal128 array from int64 values already multiplied by 10**scale."""
    words = np.empty((len(scaled), 2), dtype="<i8")
    words[:, 0] = scaled
    words[:, 1] = scaled >> 63  # two's complement sign extension into the high word
    return pa.Array.from_buffers(type_, len(scaled), [validity, pa.py_buffer(words.tobytes())])


def reading_batch(
    n: int,
    *,
    seed: int = 0,
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC),
    interval_s: float = 15.0,
    meters: int = 50,
    null_fraction: float = 0.05,
    columns: tuple[str, ...] = MEASUREMENT_COLUMNS,
    tenant_id: int | None = None,
) -> pa.RecordBatch:
    """Return ``n`` synthetic readings; with ``tenant_id`` a leading ``tenant_id`` column is added.

    The same ``seed`` gives the same values but always fresh UUIDs unless ``seed`` is fixed too:
    ids are drawn from the seeded generator, so equal seeds mean equal ids.
    """
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    ids[:, 6] = (ids[:, 6] & 0x0F) | 0x40  # version 4
    ids[:, 8] = (ids[:, 8] & 0x3F) | 0x80  # RFC 4122 variant
    start_us = int(start.timestamp() * 1_000_000)
    created = start_us + (
        np.arange(n, dtype=np.int64) * int(interval_s * 1_000_000) // max(meters, 1)
    )
    created += rng.integers(0, 1000, size=n)  # sub-millisecond jitter keeps timestamps distinct
    arrays: list[pa.Array] = []
    names: list[str] = []
    if tenant_id is not None:
        arrays.append(pa.array(np.full(n, tenant_id, dtype=np.int64)))
        names.append("tenant_id")
    arrays += [
        pa.Array.from_buffers(UUID_TYPE, n, [None, pa.py_buffer(ids.tobytes())]),
        pa.Array.from_buffers(
            TIMESTAMPTZ_TYPE, n, [None, pa.py_buffer(np.sort(created).astype("<i8").tobytes())]
        ),
        pa.array(rng.integers(1, meters + 1, size=n, dtype=np.int64)),
        pa.Array.from_buffers(
            pa.int64(),
            n,
            [
                _validity(rng, n, 0.2),
                pa.py_buffer(rng.integers(1, 4, size=n, dtype=np.int64).tobytes()),
            ],
        ),
    ]
    names += ["meter_reading_id", "created_at", "meter_id", "meter_element_id"]
    for column in columns:
        low, high = _range_for(column)
        scaled = (rng.uniform(low, high, size=n) * 10_000).round().astype(np.int64)
        arrays.append(decimal_array(scaled, _validity(rng, n, null_fraction)))
        names.append(column)
    return pa.RecordBatch.from_arrays(arrays, names=names)

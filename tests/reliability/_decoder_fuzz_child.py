"""Child process of test_decoder_fuzz.py: throw corrupted binary COPY at ``from_copy_binary``.

Run as ``python _decoder_fuzz_child.py <examples>`` with ``METERSYNC_IMPL`` chosen by the
parent. It runs in its own process so that a segfault in the Cython core shows up as a signal
exit code instead of killing pytest. Exit 0 when every input either decoded into a batch that
passes Arrow's full validation or raised ``ValueError``; exit 1 with a description otherwise.
It prints one JSON line with counts.
"""

from __future__ import annotations

import datetime as dt
import json
import struct
import sys
from decimal import Decimal

import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metersync import codec

SCHEMA = pa.schema(
    [
        ("id", pa.binary(16)),
        ("i2", pa.int16()),
        ("i4", pa.int32()),
        ("i8", pa.int64()),
        ("f4", pa.float32()),
        ("f8", pa.float64()),
        ("b", pa.bool_()),
        ("s", pa.string()),
        ("d", pa.date32()),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("tn", pa.timestamp("us")),
        ("n", pa.decimal128(18, 4)),
    ]
)


def _batch() -> pa.RecordBatch:
    rows = 5
    return pa.RecordBatch.from_pydict(
        {
            "id": [bytes([i]) * 16 for i in range(rows)],
            "i2": [1, -2, None, 32767, -32768],
            "i4": [1, None, 3, 2**31 - 1, -(2**31)],
            "i8": [None, 2, 3, 2**63 - 1, -(2**63)],
            "f4": [1.5, None, -0.0, 3.25, 1e30],
            "f8": [1.5, 2.5, None, -1e300, 5e-324],
            "b": [True, False, None, True, False],
            "s": ["a", "", None, "ünïcødé ☃", "x" * 300],
            "d": [dt.date(2026, 1, 1), None, dt.date(1, 1, 1), dt.date(9999, 12, 31), None],
            "ts": [dt.datetime(2026, 1, 1, tzinfo=dt.UTC)] * 4 + [None],
            "tn": [None] + [dt.datetime(2000, 1, 1, 0, 0, 0, 1)] * 4,
            "n": [
                Decimal("99999999999999.9999"),
                Decimal("-0.0001"),
                None,
                Decimal("0"),
                Decimal("12.5"),
            ],
        },
        schema=SCHEMA,
    )


GOOD = codec.copy_binary(_batch())
stats: dict[str, int] = {"examples": 0, "decoded": 0, "value_errors": 0}
#: Problem category -> first input showing it (hex, shortened).
problems: dict[str, str] = {}


@st.composite
def corrupted(draw: st.DrawFn) -> bytes:
    data = bytearray(GOOD)
    kind = draw(st.sampled_from(["truncate", "flip", "length", "splice", "random", "count"]))
    if kind == "truncate":
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
        return bytes(data)
    if kind == "length":
        # Overwrite 4 bytes anywhere after the header with a hostile length.
        i = draw(st.integers(19, len(data) - 4))
        value = draw(st.sampled_from([-2, -1, 0, 1, 7, 15, 17, 2**31 - 1, -(2**31), 65536]))
        data[i : i + 4] = struct.pack(">i", value)
        return bytes(data)
    if kind == "count":
        i = draw(st.integers(19, len(data) - 2))
        data[i : i + 2] = struct.pack(">h", draw(st.sampled_from([-1, 0, 1, 11, 13, 32767])))
        return bytes(data)
    if kind == "splice":
        a = draw(st.integers(0, len(data)))
        b = draw(st.integers(a, len(data)))
        return bytes(data[:a]) + draw(st.binary(max_size=64)) + bytes(data[b:])
    return GOOD[:19] + draw(st.binary(max_size=400))


def check(data: bytes) -> None:
    """Record a problem instead of stopping, so one run reports every kind of failure."""
    stats["examples"] += 1
    try:
        batch = codec.from_copy_binary(data, SCHEMA)
    except ValueError:
        stats["value_errors"] += 1
        return
    except Exception as exc:  # any other exception type breaks the documented contract
        problems.setdefault(f"raised {type(exc).__name__}: {str(exc)[:80]}", data[:200].hex())
        return
    # Decoded without complaint: the result must be a sound Arrow batch, or a consumer may crash.
    try:
        batch.validate(full=True)
    except pa.ArrowInvalid as exc:
        problems.setdefault(f"invalid Arrow batch returned: {str(exc)[:80]}", data.hex())
        return
    stats["decoded"] += 1


def main() -> int:
    examples = int(sys.argv[1])
    assert codec.from_copy_binary(GOOD, SCHEMA).equals(_batch())

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
    )
    @given(corrupted())
    def run(data: bytes) -> None:
        check(data)

    run()
    print(json.dumps({"impl": codec.IMPL, **stats, "problems": problems}), flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

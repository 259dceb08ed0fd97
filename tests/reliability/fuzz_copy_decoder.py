"""Coverage-guided fuzzing of the binary COPY decoder with atheris (not collected by pytest).

    METERSYNC_IMPL=python .venv/bin/python tests/reliability/fuzz_copy_decoder.py -max_total_time=60
    METERSYNC_IMPL=c      .venv/bin/python tests/reliability/fuzz_copy_decoder.py -max_total_time=60

The contract under test: ``from_copy_binary`` either returns a record batch that passes Arrow's
full validation or raises ``ValueError``; anything else (another exception, an invalid batch, a
crash) is reported by atheris with the input that caused it. ``FUZZ_KNOWN_UTF8=1`` tolerates the
known invalid-UTF-8 finding (see the reliability report) so the run can look for others; add
``-artifact_prefix=/tmp/`` to keep crash files out of the work tree. Inputs starting with a zero
byte get a valid header, so the fuzzer spends its time inside the format.
"""

from __future__ import annotations

import os
import sys

import atheris

with atheris.instrument_imports():
    import pyarrow as pa

    from metersync import codec
    from metersync.codec import _python as _codec_py

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _decoder_fuzz_child import GOOD, SCHEMA


def test_one_input(data: bytes) -> None:
    # Half the inputs keep the valid header so the fuzzer spends its time on tuples and fields.
    if data[:1] == b"\x00":
        data = GOOD[:19] + data[1:]
    try:
        batch = codec.from_copy_binary(data, SCHEMA)
    except ValueError:
        return
    try:
        batch.validate(full=True)
    except pa.ArrowInvalid as exc:
        if not (KNOWN_UTF8 and "UTF8" in str(exc)):
            raise


KNOWN_UTF8 = os.environ.get("FUZZ_KNOWN_UTF8") == "1"


def main() -> None:
    print(f"fuzzing from_copy_binary, implementation {codec.IMPL}", flush=True)
    assert _codec_py is not None and pa is not None
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

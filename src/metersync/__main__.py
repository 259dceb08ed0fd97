"""``python -m metersync``: the same command line as the ``metersync`` script."""

from __future__ import annotations

from metersync.cli import entrypoint

if __name__ == "__main__":
    entrypoint()

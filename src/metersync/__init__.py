"""metersync: move meter readings between a site's PostgreSQL sync database and the Client System.

Fast (Arrow batches, a Cython codec, binary COPY, one UPDATE per batch) and safe (a reading is
marked synchronized only after the Client System confirmed it).
"""

from __future__ import annotations

from ._impl import IMPL as __impl__

__version__ = "0.1.0"

__all__ = ["__impl__", "__version__"]

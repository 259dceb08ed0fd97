"""Fixtures of the reliability tests: a ``world`` = fresh migrated sync database + the reference
Client System (``reference_server`` from ``fix_server``, wiped for each test)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from _harness import World, migrate, run


@pytest.fixture
def world(fresh_dsn: str, reference_server: Any) -> Iterator[World]:
    """A migrated, empty sync database and a clean reference server, no tenants yet."""
    run(migrate(fresh_dsn))
    yield World(fresh_dsn, reference_server)

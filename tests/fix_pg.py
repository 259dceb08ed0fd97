"""PostgreSQL fixtures: the embedded server (or METERSYNC_TEST_DSN), a fresh database per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from metersync.tools import embedded
from metersync.tools.embedded import EmbeddedPostgres


@pytest.fixture(scope="session")
def pg_admin_dsn() -> Iterator[str]:
    """DSN of a server where the tests may create and drop databases."""
    external = os.environ.get("METERSYNC_TEST_DSN")
    if external:
        yield external
        return
    server = EmbeddedPostgres()
    dsn = server.start()
    try:
        yield dsn
    finally:
        server.stop()


def create_database(admin_dsn: str, prefix: str = "ms_test") -> str:
    """Create an empty database with a unique name and return its DSN."""
    return embedded.create_database(admin_dsn, f"{prefix}_{uuid.uuid4().hex[:12]}")


def drop_database(admin_dsn: str, dsn: str) -> None:
    """Drop a database made by :func:`create_database`, disconnecting its sessions."""
    embedded.drop_database(admin_dsn, dsn)


@pytest.fixture
def fresh_dsn(pg_admin_dsn: str) -> Iterator[str]:
    """DSN of a new, empty database, dropped after the test."""
    dsn = create_database(pg_admin_dsn)
    try:
        yield dsn
    finally:
        drop_database(pg_admin_dsn, dsn)


@pytest.fixture(scope="module")
def module_dsn(pg_admin_dsn: str) -> Iterator[str]:
    """DSN of a new, empty database shared by one test module."""
    dsn = create_database(pg_admin_dsn, "ms_mod")
    try:
        yield dsn
    finally:
        drop_database(pg_admin_dsn, dsn)

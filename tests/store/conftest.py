"""Fixtures of the store tests: the module's migrated sync database and an adapter on it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from metersync.store.database import SyncDatabase


@pytest.fixture(scope="module")
def dsn(engine_dsn: str) -> str:
    """The module's migrated sync database (``engine_dsn`` of fix_engine); every test uses its
    own tenant ids, so the tests of a module share it."""
    return engine_dsn


@pytest.fixture
async def db(dsn: str) -> AsyncIterator[SyncDatabase]:
    """A connected :class:`SyncDatabase` on it, closed after the test."""
    async with await SyncDatabase.connect(dsn) as db:
        yield db

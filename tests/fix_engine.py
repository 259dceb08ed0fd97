"""Sync-engine fixtures: a migrated sync database with tenants, the reference server knowing them.

``engine_dsn`` is one migrated database per test module (tenants get unique ids, so tests and
hypothesis examples share it without seeing each other's rows). ``engine`` yields an
:class:`Engine` per test: an open ``SyncDatabase``, the reference server (wiped for the test)
and helpers that create a tenant on both sides, seed readings and build the engine's parts.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import orjson
import pyarrow as pa
import pytest

from fix_server import ServerHandle
from metersync.engine.download import DownloadManager
from metersync.engine.tenant_cache import TenantCache
from metersync.engine.upload import MeterReadingUploadManager
from metersync.remote.client import ClientSystemApiClient
from metersync.tools.synthetic import reading_batch

if TYPE_CHECKING:
    from metersync.store.database import SyncDatabase

# Tenant ids unique across the session (the server's own counter starts at 1001; stay clear).
_tenant_ids = itertools.count(500_001)
_seeds = itertools.count(1)


async def _migrate(dsn: str) -> None:
    from metersync.store.database import (
        SyncDatabase,  # imported late: a plugin must not break collection
    )

    async with await SyncDatabase.connect(dsn) as db:
        await db.migrate()


async def eventually(predicate: Any, timeout: float = 20.0, *, step: float = 0.02) -> bool:
    """Poll ``predicate()`` (plain or async) every ``step`` seconds until it is true or
    ``timeout`` seconds passed; then its last answer."""

    async def check() -> bool:
        answer = predicate()
        return bool(await answer if inspect.isawaitable(answer) else answer)

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await check():
            return True
        await asyncio.sleep(step)
    return await check()


@pytest.fixture(scope="module")
def engine_dsn(module_dsn: str) -> str:
    """A migrated sync database shared by the test module."""
    asyncio.run(_migrate(module_dsn))
    return module_dsn


class RecordingTransport(httpx.AsyncHTTPTransport):
    """The real network transport, noting how many readings each request carried.

    ``posted`` holds the reading count of every ``POST .../batch`` body; ``pages`` holds
    ``(limit asked, readings returned)`` of every download page. Nothing is altered.
    """

    def __init__(self) -> None:
        super().__init__(verify=False)  # plain http on loopback: no CA bundle to load
        self.posted: list[int] = []
        self.pages: list[tuple[int, int]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        path = request.url.path
        if request.method == "POST" and path.endswith("/sync/readings/batch"):
            self.posted.append(len(orjson.loads(request.content)["readings"]))
        elif request.method == "GET" and path.endswith("/sync/readings"):
            await response.aread()
            body = orjson.loads(response.content)
            got = len(body["readings"]) if isinstance(body.get("readings"), list) else -1
            self.pages.append((int(request.url.params["limit"]), got))
        return response


@dataclass
class Engine:
    """One test's view of the engine: database, server and factories."""

    db: SyncDatabase
    dsn: str
    server: ServerHandle
    clients: list[ClientSystemApiClient] = field(default_factory=list)
    keys: dict[int, str] = field(default_factory=dict)
    _conns: dict[str, Any] = field(default_factory=dict)

    async def _conn(self, dsn: str) -> Any:
        """A persistent autocommit connection for the test's own queries (not ``db``'s)."""
        import psycopg

        conn = self._conns.get(dsn)
        if conn is None or conn.closed:
            conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
            self._conns[dsn] = conn
        return conn

    async def aclose(self) -> None:
        """Close the clients and the test's own connections."""
        for client in self.clients:
            with contextlib.suppress(Exception):
                await client.aclose()
        self.clients.clear()
        for conn in self._conns.values():
            with contextlib.suppress(Exception):
                await conn.close()
        self._conns.clear()

    @contextlib.asynccontextmanager
    async def client_for(self, tenant_id: int, **kwargs: Any) -> AsyncIterator[Any]:
        """Like :meth:`client`, closed when the block ends (cheap hypothesis examples)."""
        client = self.client(tenant_id, **kwargs)
        self.clients.remove(client)
        try:
            yield client
        finally:
            await client.aclose()

    async def tenant(
        self, *, upload: int | None = None, download: int | None = None, server: bool = True
    ) -> int:
        """A new tenant in the sync database (and registered on the server with the same key)."""
        tenant_id = next(_tenant_ids)
        key = f"engine-key-{secrets.token_hex(12)}"
        await self.db.add_tenant(
            tenant_id,
            f"tenant {tenant_id}",
            key,
            upload_batch_size=upload,
            download_batch_size=download,
        )
        if server:
            self.server.register_tenant(tenant_id, key, f"tenant {tenant_id}")
        self.keys[tenant_id] = key
        return tenant_id

    async def seed(self, tenant_id: int, n: int, **kwargs: Any) -> pa.RecordBatch:
        """Insert ``n`` pending synthetic readings for the tenant; returns them (upload columns)."""
        batch = reading_batch(n, seed=next(_seeds), tenant_id=tenant_id, **kwargs)
        await self.db.insert_readings(batch, 10_000)
        return batch.drop_columns(["tenant_id"])

    def client(self, tenant_id: int, **kwargs: Any) -> ClientSystemApiClient:
        """A Client System client with the tenant's key (closed after the test)."""
        kwargs.setdefault("backoff_base", 0.01)
        kwargs.setdefault("backoff_max", 0.05)
        kwargs.setdefault("max_retries", 2)
        # Plain http on loopback: skip loading the CA bundle (~0.15 s of CPU per client).
        kwargs.setdefault("verify", False)
        client = ClientSystemApiClient(self.server.base_url, self.keys[tenant_id], **kwargs)
        self.clients.append(client)
        return client

    def uploader(
        self,
        tenant_id: int,
        *,
        db: SyncDatabase | None = None,
        cache: TenantCache | None = None,
        client: ClientSystemApiClient | None = None,
        **kwargs: Any,
    ) -> MeterReadingUploadManager:
        """An upload manager for the tenant (fresh cache and client unless given)."""
        db = db or self.db
        return MeterReadingUploadManager(
            db,
            client or self.client(tenant_id),
            cache or TenantCache(db),
            tenant_id=tenant_id,
            **kwargs,
        )

    def downloader(
        self,
        tenant_id: int,
        *,
        cache: TenantCache | None = None,
        client: ClientSystemApiClient | None = None,
        **kwargs: Any,
    ) -> DownloadManager:
        """A download manager for the tenant (fresh cache and client unless given)."""
        return DownloadManager(
            self.db,
            client or self.client(tenant_id),
            cache or TenantCache(self.db),
            tenant_id=tenant_id,
            **kwargs,
        )

    async def scalar(self, sql: str, *params: Any) -> Any:
        """One value from a query on a separate connection (does not count as our statement)."""
        cur = await (await self._conn(self.dsn)).execute(sql, params)
        if cur.description is None:  # a statement without a result (UPDATE, DELETE)
            return cur.rowcount
        row = await cur.fetchone()
        return None if row is None else row[0]

    async def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """All rows of a query on a separate connection."""
        cur = await (await self._conn(self.dsn)).execute(sql, params)
        return list(await cur.fetchall())

    async def status_counts(self, tenant_id: int) -> dict[str, int]:
        """``{sync_status: count}`` of the tenant's readings."""
        rows = await self.rows(
            "SELECT sync_status || ':' || is_synchronized::text, count(*) FROM meter_reading "
            "WHERE tenant_id = %s GROUP BY 1",
            tenant_id,
        )
        return {k: int(n) for k, n in rows}

    async def server_ids(self, tenant_id: int) -> set[str]:
        """Ids the reference server holds for the tenant (read from its database)."""
        cur = await (await self._conn(self.server.dsn)).execute(
            "SELECT meter_reading_id::text FROM cs_meter_reading WHERE tenant_id = %s",
            (tenant_id,),
        )
        return {r[0] for r in await cur.fetchall()}

    async def local_ids(self, tenant_id: int, where: str = "true") -> set[str]:
        """Ids of the tenant's readings in the sync database matching ``where``."""
        rows = await self.rows(
            f"SELECT meter_reading_id::text FROM meter_reading WHERE tenant_id = %s AND {where}",
            tenant_id,
        )
        return {r[0] for r in rows}


@contextlib.asynccontextmanager
async def engine_world(dsn: str, server: ServerHandle) -> AsyncIterator[Engine]:
    """An :class:`Engine` over the sync database ``dsn`` and the Client System ``server``,
    closed (clients, then the database connection) on the way out."""
    from metersync.store.database import SyncDatabase

    db = await SyncDatabase.connect(dsn)
    eng = Engine(db, dsn, server)
    try:
        yield eng
    finally:
        await eng.aclose()
        await db.close()


@pytest.fixture
async def engine(engine_dsn: str, reference_server: ServerHandle) -> AsyncIterator[Engine]:
    """The engine's world for one test (see :class:`Engine`)."""
    async with engine_world(engine_dsn, reference_server) as eng:
        yield eng


@pytest.fixture
async def mt(engine_dsn: str, metertrack_server: ServerHandle) -> AsyncIterator[Engine]:
    """The engine's world with the MeterTrack emulation as its Client System (issue 10)."""
    async with engine_world(engine_dsn, metertrack_server) as eng:
        yield eng

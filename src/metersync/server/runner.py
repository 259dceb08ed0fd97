"""Running the reference Client System: in an event loop, in a background thread, forever (CLI)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from types import TracebackType

from aiohttp import web

from metersync.errors import ConfigError
from metersync.server import quiet
from metersync.server.admin_auth import new_admin_token
from metersync.server.app import DEFAULT_MAX_BATCH, DEFAULT_MAX_BODY_BYTES, STATE, create_app
from metersync.server.faults import FaultPlan
from metersync.server.metertrack import MT_STATE, check_plan, create_metertrack_app
from metersync.server.metertrack_store import MeterTrackStore
from metersync.server.sink import SINK_STATE, create_sink_app
from metersync.server.store import Store

log = logging.getLogger("metersync.server")

#: What a server can emulate: our contract (``metersync``) or the original MeterTrack Client
#: System (``metertrack``, see :mod:`metersync.server.metertrack`).
#: ``sink`` answers from the body and stores nothing (:mod:`metersync.server.sink`; no database).
PROFILES = ("metersync", "metertrack", "sink")


class ReferenceServer:
    """The reference Client System over its own PostgreSQL database (``dsn``).

    ``profile="metertrack"`` runs the emulation of the original MeterTrack Client System instead
    (its own tables in the same kind of database; ``reading_delay_ms`` slows each reading down;
    ``max_batch``/``max_body_bytes`` do not apply: it has the original's 10 MB limit).
    ``profile="sink"`` runs the zero-cost Client System of :mod:`metersync.server.sink` (``dsn``
    is not used; ``sink_download`` readings per tenant are pre-built for download).
    ``await start()`` creates the schema (idempotent), binds ``host:port`` (``port=0`` picks a free
    port; :attr:`port` is the real one afterwards) and serves until ``await stop()``.
    """

    def __init__(
        self,
        dsn: str,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        admin_token: str | None = None,
        faults: FaultPlan | None = None,
        pool_size: int = 8,
        shutdown_timeout: float = 2.0,
        profile: str = "metersync",
        reading_delay_ms: float = 0.0,
        sink_download: int = 0,
    ) -> None:
        if max_batch < 1:
            raise ConfigError(f"max_batch must be >= 1, got {max_batch}")
        if profile not in PROFILES:
            raise ConfigError(f"unknown server profile {profile!r}: one of {', '.join(PROFILES)}")
        if reading_delay_ms < 0:
            raise ConfigError(f"reading_delay_ms must be >= 0, got {reading_delay_ms}")
        if profile == "metertrack" and faults is not None:
            check_plan(faults)  # a fault this profile cannot inject: say so before starting
        if profile == "sink" and faults is not None and not faults.empty:
            raise ConfigError("the sink injects no faults (it measures the engine alone)")
        if sink_download < 0:
            raise ConfigError(f"sink_download must be >= 0, got {sink_download}")
        self.profile = profile
        self._reading_delay_ms = reading_delay_ms
        self._sink_download = sink_download
        self._dsn = dsn
        self.host = host
        self.port = port
        self._max_batch = max_batch
        self._max_body_bytes = max_body_bytes
        # Never an open admin API (it can delete everything): no token given, one is made.
        self.admin_token_generated = not admin_token
        self._admin_token = admin_token or new_admin_token()
        self._faults = faults
        self._pool_size = pool_size
        self._shutdown_timeout = shutdown_timeout
        self._store: Store | MeterTrackStore | None = None
        self._runner: web.AppRunner | None = None
        self._app: web.Application | None = None

    def __repr__(self) -> str:
        return f"ReferenceServer(host={self.host!r}, port={self.port})"

    @property
    def base_url(self) -> str:
        """Base URL of the Client System API (ends with ``/api``)."""
        return f"http://{self._url_host}:{self.port}/api"

    @property
    def admin_url(self) -> str:
        """Base URL of the admin API (ends with ``/admin``)."""
        return f"http://{self._url_host}:{self.port}/admin"

    @property
    def _url_host(self) -> str:
        if self.host in ("", "0.0.0.0"):
            return "127.0.0.1"
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def admin_token(self) -> str:
        """The token the admin API requires (``X-Admin-Token``): the one given, else a random
        one made at construction (:attr:`admin_token_generated` then says so)."""
        return self._admin_token

    @property
    def running(self) -> bool:
        """True between a successful :meth:`start` and :meth:`stop`."""
        return self._runner is not None

    def set_faults(self, plan: FaultPlan | None) -> None:
        """Replace the fault plan in process (None clears it). Call from the server's loop."""
        if self._app is None:
            self._faults = plan
            return
        if SINK_STATE in self._app:
            if plan is not None and not plan.empty:
                raise ConfigError("the sink injects no faults")
        elif MT_STATE in self._app:
            self._app[MT_STATE].set_faults(plan or FaultPlan())
        else:
            self._app[STATE].set_faults(plan or FaultPlan())

    def _open_store(self) -> Store | MeterTrackStore | None:
        if self.profile == "sink":
            return None
        if self.profile == "metertrack":
            return MeterTrackStore(self._dsn, max_size=self._pool_size)
        return Store(self._dsn, max_size=self._pool_size)

    def _create_app(self, store: Store | MeterTrackStore | None) -> web.Application:
        if store is None:
            return create_sink_app(
                download_readings=self._sink_download,
                max_body_bytes=self._max_body_bytes,
                admin_token=self._admin_token,
            )
        if isinstance(store, MeterTrackStore):
            return create_metertrack_app(
                store,
                admin_token=self._admin_token,
                faults=self._faults,
                reading_delay_ms=self._reading_delay_ms,
            )
        return create_app(
            store,
            max_batch=self._max_batch,
            max_body_bytes=self._max_body_bytes,
            admin_token=self._admin_token,
            faults=self._faults,
        )

    async def start(self) -> None:
        """Open the database pool, create the schema and start serving."""
        if self._runner is not None:
            raise RuntimeError("server already started")
        store = self._open_store()
        if store is not None:
            await store.open()
        try:
            app = self._create_app(store)
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=self._shutdown_timeout)
            await runner.setup()
            try:
                site = web.TCPSite(runner, self.host, self.port)
                await site.start()
            except BaseException:
                await runner.cleanup()
                raise
        except BaseException:
            if store is not None:
                await store.close()
            raise
        self._store, self._runner, self._app = store, runner, app
        quiet.install()
        self.port = int(runner.addresses[0][1])
        log.info("%s Client System listening on %s", self.profile, self.base_url)

    async def stop(self) -> None:
        """Stop serving and close the database pool (idempotent)."""
        runner, store = self._runner, self._store
        self._runner = self._store = self._app = None
        if runner is not None:
            await runner.cleanup()
            quiet.uninstall()
        if store is not None:
            await store.close()

    async def __aenter__(self) -> ReferenceServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


class ServerThread:
    """A :class:`ReferenceServer` on its own event loop in a daemon thread, for sync callers.

    Takes the same arguments as :class:`ReferenceServer`. ``start()`` returns once the server
    listens (or raises what made it fail); ``stop()`` shuts it down and joins the thread.
    """

    def __init__(self, dsn: str, host: str = "127.0.0.1", port: int = 0, **kwargs: object) -> None:
        self.server = ReferenceServer(dsn, host, port, **kwargs)  # type: ignore[arg-type]
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def base_url(self) -> str:
        """See :attr:`ReferenceServer.base_url`."""
        return self.server.base_url

    @property
    def admin_url(self) -> str:
        """See :attr:`ReferenceServer.admin_url`."""
        return self.server.admin_url

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        return self.server.port

    @property
    def admin_token(self) -> str:
        """See :attr:`ReferenceServer.admin_token`."""
        return self.server.admin_token

    def start(self, timeout: float = 30.0) -> ServerThread:
        """Start the thread and wait until the server listens."""
        if self._thread is not None:
            raise RuntimeError("server thread already started")
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=self._run, name="metersync-cs", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"reference server did not start within {timeout} s")
        if self._error is not None:
            self._thread.join()
            self._thread = None
            raise self._error
        return self

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        try:
            await self.server.start()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop_event.wait()
        finally:
            await self.server.stop()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server and join the thread (idempotent)."""
        thread, loop, event = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        if loop is not None and event is not None and not loop.is_closed():
            loop.call_soon_threadsafe(event.set)
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"reference server thread did not stop within {timeout} s")
        self._thread = self._loop = self._stop_event = None

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


async def serve_forever(
    dsn: str,
    host: str = "127.0.0.1",
    port: int = 3001,
    *,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    admin_token: str | None = None,
    faults: FaultPlan | None = None,
    on_ready: Callable[[ReferenceServer], None] | None = None,
    profile: str = "metersync",
    reading_delay_ms: float = 0.0,
    sink_download: int = 0,
) -> None:
    """Serve until cancelled (the CLI's ``metersync serve`` cancels it on SIGINT/SIGTERM).

    ``on_ready(server)`` is called once the server listens (``server.base_url`` is then real).
    """
    server = ReferenceServer(
        dsn,
        host,
        port,
        max_batch=max_batch,
        max_body_bytes=max_body_bytes,
        admin_token=admin_token,
        faults=faults,
        profile=profile,
        reading_delay_ms=reading_delay_ms,
        sink_download=sink_download,
    )
    await server.start()
    try:
        if on_ready is not None:
            on_ready(server)
        await asyncio.Event().wait()
    finally:
        await server.stop()

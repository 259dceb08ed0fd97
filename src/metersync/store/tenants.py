"""Tenant rows of the sync database: read (also before migrating), add, change batch sizes
(with a notification to other processes), and the batch sizes a cycle uses (spec §3 fallbacks).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import psycopg

from metersync.batch_sizes import (
    DEFAULT_DOWNLOAD_BATCH_SIZE,
    DEFAULT_UPLOAD_BATCH_SIZE,
    MAX_BATCH_SIZE,
    MIN_BATCH_SIZE,
    SIZE_DEFAULTS,
    BatchSizes,
    batch_size_problem,
    sizes_after_failed_lookup,
    sizes_from_row,
)
from metersync.errors import (
    ConfigError,
    SchemaError,
    UnknownTenantError,
)
from metersync.store import sql as q
from metersync.store._connection import Connection, _first_line, _operation
from metersync.store.values import TenantRow, _check_tenant_id

log = logging.getLogger("metersync.store.database")  # one logger for the whole adapter


class TenantOps(Connection):
    """The ``tenant`` table's operations of :class:`~metersync.store.database.SyncDatabase`."""

    @_operation
    async def get_tenant(self, tenant_id: int) -> TenantRow | None:
        """The tenant's row, or ``None``.

        Works on a ``tenant`` table that lacks the batch-size columns (not migrated yet): the
        row then shows the defaults, as the sync cycles use them (spec §3). A table without
        ``api_key`` or ``name`` is a :class:`SchemaError` asking for ``metersync migrate``."""
        cur = await self._execute(q.GET_TENANT_JSON, (_check_tenant_id(tenant_id),))
        row = await cur.fetchone()
        return None if row is None else _tenant_row(row[0])

    @_operation
    async def list_tenants(self) -> list[TenantRow]:
        """All tenants, by id (like :meth:`get_tenant`, also before migrating)."""
        cur = await self._execute(q.LIST_TENANTS_JSON)
        return [_tenant_row(row[0]) for row in await cur.fetchall()]

    @_operation
    async def add_tenant(
        self,
        tenant_id: int,
        name: str,
        api_key: str | None,
        *,
        upload_batch_size: int | None = None,
        download_batch_size: int | None = None,
    ) -> TenantRow:
        """Create a tenant (sizes default to 100 / 1000); ``ConfigError`` if it exists or a
        size is outside 1..10000."""
        _check_tenant_id(tenant_id)
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"tenant {tenant_id}: name must be a non-empty string")
        upload = DEFAULT_UPLOAD_BATCH_SIZE if upload_batch_size is None else upload_batch_size
        download = (
            DEFAULT_DOWNLOAD_BATCH_SIZE if download_batch_size is None else download_batch_size
        )
        _validate_size(tenant_id, "upload_batch_size", upload)
        _validate_size(tenant_id, "download_batch_size", download)
        try:
            async with self._transaction():
                cur = await self._execute(
                    q.ADD_TENANT, (tenant_id, name, api_key, download, upload)
                )
                row = await cur.fetchone()
                await self._execute(q.NOTIFY_TENANT, (tenant_id,))
        except psycopg.errors.UniqueViolation:
            raise ConfigError(f"tenant {tenant_id} already exists") from None
        except (psycopg.errors.UndefinedColumn, psycopg.errors.UndefinedTable) as exc:
            raise _needs_migrate(exc) from None
        assert row is not None
        return TenantRow(*row)

    @_operation
    async def set_tenant_batch_sizes(
        self, tenant_id: int, *, upload: int | None = None, download: int | None = None
    ) -> TenantRow:
        """Change a tenant's sizes and notify other processes (``metersync_tenant`` channel),
        in one transaction. ``ConfigError`` names the field and the valid range;
        :class:`UnknownTenantError` when there is no such tenant."""
        _check_tenant_id(tenant_id)
        if upload is None and download is None:
            raise ConfigError(f"tenant {tenant_id}: give upload and/or download batch size")
        if upload is not None:
            _validate_size(tenant_id, "upload_batch_size", upload)
        if download is not None:
            _validate_size(tenant_id, "download_batch_size", download)
        try:
            async with self._transaction():
                cur = await self._execute(q.SET_TENANT_SIZES, (upload, download, tenant_id))
                row = await cur.fetchone()
                if row is None:
                    raise UnknownTenantError(tenant_id)
                await self._execute(q.NOTIFY_TENANT, (tenant_id,))
        except (psycopg.errors.UndefinedColumn, psycopg.errors.UndefinedTable) as exc:
            raise _needs_migrate(exc) from None
        log.info(
            "tenant %s: batch sizes set to upload_batch_size=%s download_batch_size=%s",
            tenant_id,
            row[5],
            row[4],
        )
        return TenantRow(*row)

    @_operation
    async def get_tenant_batch_config(self, tenant_id: int) -> BatchSizes:
        """The tenant's batch sizes, with the spec §3 fallbacks of
        :func:`metersync.batch_sizes.sizes_from_row` (missing row, column or value: WARNING and
        the default; invalid value: ERROR and the default). Raises only
        :class:`DatabaseUnavailableError` (the connection was lost), never for another database
        problem (that is a WARNING and the defaults)."""
        _check_tenant_id(tenant_id)
        try:
            data = await self._scalar(q.TENANT_BATCH_ROW, (tenant_id,))
        except psycopg.Error as exc:
            if self._connection_lost(exc):
                raise  # DatabaseUnavailableError (``_operation``): defaults cannot help there
            return sizes_after_failed_lookup(tenant_id, exc)
        return sizes_from_row(tenant_id, data)


def _needs_migrate(exc: BaseException) -> ConfigError:
    """A tenant write on a table ``tenant`` that lacks what it writes (not migrated yet)."""
    return ConfigError(
        f"table tenant is not up to date ({_first_line(exc)}): run `metersync migrate` first"
    )


def _tenant_row(data: dict[str, Any]) -> TenantRow:
    """A :class:`TenantRow` from ``to_jsonb(tenant)``: absent size columns (an old table) show
    their defaults, an absent ``active`` means active; no ``name``/``api_key``: SchemaError."""
    missing = [c for c in ("name", "api_key") if c not in data]
    if missing:
        raise SchemaError(
            f"table tenant has no column {', '.join(missing)}: run `metersync migrate`"
        )
    updated = data.get("updated_at")
    return TenantRow(
        tenant_id=int(data["tenant_id"]),
        name=data["name"],
        api_key=data["api_key"],
        active=bool(data.get("active", True)),
        download_batch_size=_stored_size(data, "download_batch_size"),
        upload_batch_size=_stored_size(data, "upload_batch_size"),
        updated_at=None if updated is None else datetime.fromisoformat(updated),
    )


def _stored_size(data: dict[str, Any], column: str) -> int:
    value = data.get(column)
    return SIZE_DEFAULTS[column] if value is None else int(value)


def _validate_size(tenant_id: int, field: str, value: object) -> None:
    problem = batch_size_problem(value)
    if problem:
        raise ConfigError(
            f"tenant {tenant_id}: {field} {problem} "
            f"(valid range {MIN_BATCH_SIZE}..{MAX_BATCH_SIZE})"
        )

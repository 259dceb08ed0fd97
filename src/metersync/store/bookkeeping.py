"""Bookkeeping of the sync database: the ``sync_log`` of cycles, the queue counts per tenant,
and this site's stable id.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg

from metersync.store import sql as q
from metersync.store._connection import Connection, _operation
from metersync.store.values import CycleRow, QueueStatus, _check_tenant_id, _clean_text

log = logging.getLogger("metersync.store.database")  # one logger for the whole adapter


class BookkeepingOps(Connection):
    """The bookkeeping operations of :class:`~metersync.store.database.SyncDatabase`."""

    @_operation
    async def site_id(self) -> str | None:
        """This site's stable id, generated once by :meth:`migrate` (table ``sync_site``);
        ``None`` when the database was not migrated yet (the caller picks its own fallback).

        Sent as ``X-Metersync-Site`` with uploads, so that a download from a Client System with
        a site filter skips the readings this site uploaded itself (issue 12)."""
        try:
            return await self._scalar(q.GET_SITE_ID)
        except psycopg.errors.UndefinedTable:
            return None

    @_operation
    async def write_sync_log(
        self,
        tenant_id: int,
        operation: str,
        batches: int,
        records: int,
        statements: int,
        duration_s: float,
        success: bool,
        error: str | None = None,
    ) -> None:
        """Append one cycle to ``sync_log``."""
        await self._execute(
            q.WRITE_SYNC_LOG,
            (
                _check_tenant_id(tenant_id),
                operation,
                float(duration_s),
                batches,
                records,
                statements,
                float(duration_s),
                bool(success),
                None if error is None else _clean_text(error),
            ),
        )

    @_operation
    async def write_sync_logs(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Append many cycles to ``sync_log`` in ONE round trip (a pipeline); each row has the
        keyword arguments of :meth:`write_sync_log`. Many tenants' bookkeeping, batched."""
        params = [
            (
                _check_tenant_id(r["tenant_id"]),
                r["operation"],
                float(r["duration_s"]),
                r["batches"],
                r["records"],
                r["statements"],
                float(r["duration_s"]),
                bool(r["success"]),
                None if r.get("error") is None else _clean_text(r["error"]),
            )
            for r in rows
        ]
        if not params:
            return
        self.statements += 1
        async with self._conn.cursor() as cur:
            await cur.executemany(q.WRITE_SYNC_LOG, params)

    @_operation
    async def recent_cycles(self, tenant_id: int, limit: int = 10) -> list[CycleRow]:
        """The tenant's last ``limit`` cycles, newest first."""
        cur = await self._execute(q.RECENT_CYCLES, (_check_tenant_id(tenant_id), limit))
        return [CycleRow(*row) for row in await cur.fetchall()]

    @_operation
    async def queue_status(
        self, tenant_id: int | None = None, max_retries: int = 5
    ) -> list[QueueStatus]:
        """Queue counts per tenant (one tenant, or every tenant of table ``tenant``)."""
        if tenant_id is None:
            cur = await self._execute(q.QUEUE_STATUS_ALL, {"r": max_retries})
        else:
            cur = await self._execute(
                q.QUEUE_STATUS_ONE, {"r": max_retries, "t": _check_tenant_id(tenant_id)}
            )
        return [QueueStatus(*row) for row in await cur.fetchall()]

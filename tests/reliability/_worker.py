"""A sync worker process for the crash tests, driven through the public library.

    python _worker.py upload|download|sync TENANT [TENANT ...] [--read-timeout S]
                      [--max-batches N] [--max-seconds S] [--deadline S]
                      [--client-profile auto|metersync|metertrack] [--max-in-flight N]

Sync database and Client System come from ``METERSYNC_DSN`` / ``METERSYNC_API_URL``, API keys
from the tenant rows (never from arguments), failpoints from ``METERSYNC_FAILPOINTS``. It prints
``ready`` once connected, one JSON line per cycle, and ``{"done": ...}`` when every tenant's
queue is empty (upload) or its download cycle ended cleanly, then exits 0. Cycles that end with
an error (Client System unavailable) are repeated until ``--deadline``. The tests kill it with
SIGKILL at any moment.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

from metersync.engine.download import DownloadManager
from metersync.engine.tenant_cache import TenantCache
from metersync.engine.upload import MeterReadingUploadManager
from metersync.errors import TenantBusyError
from metersync.remote.client import ClientSystemApiClient
from metersync.store.database import SyncDatabase


def _emit(obj: object) -> None:
    print(json.dumps(obj), flush=True)


async def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["upload", "download", "sync"])
    p.add_argument("tenants", nargs="+", type=int)
    p.add_argument("--read-timeout", type=float, default=10.0)
    p.add_argument("--max-batches", type=int, default=None)
    p.add_argument("--max-seconds", type=float, default=None)
    p.add_argument("--deadline", type=float, default=120.0)
    p.add_argument("--client-profile", default="auto", choices=["auto", "metersync", "metertrack"])
    p.add_argument("--max-in-flight", type=int, default=2)
    args = p.parse_args(argv)

    db = await SyncDatabase.connect(os.environ["METERSYNC_DSN"])
    cache = TenantCache(db)
    clients: dict[int, ClientSystemApiClient] = {}
    uploaders: dict[int, MeterReadingUploadManager] = {}
    downloaders: dict[int, DownloadManager] = {}
    for t in args.tenants:
        settings = await cache.get(t)
        clients[t] = ClientSystemApiClient(
            os.environ["METERSYNC_API_URL"],
            settings.api_key,
            connect_timeout=2.0,
            read_timeout=args.read_timeout,
            max_retries=3,
            backoff_base=0.01,
            backoff_max=0.2,
            client_profile=args.client_profile,
        )
        uploaders[t] = MeterReadingUploadManager(
            db,
            clients[t],
            cache,
            tenant_id=t,
            max_batches=args.max_batches,
            max_seconds=args.max_seconds,
            max_in_flight=args.max_in_flight,
        )
        downloaders[t] = DownloadManager(db, clients[t], cache, tenant_id=t)
    print("ready", flush=True)
    stop_at = time.monotonic() + args.deadline
    done: set[int] = set()
    totals = {"batches": 0, "readings": 0, "pages": 0, "downloaded": 0, "errors": 0}
    try:
        while len(done) < len(args.tenants):
            if time.monotonic() > stop_at:
                _emit({"timeout": True, "done_tenants": sorted(done), **totals})
                return 3
            for t in args.tenants:
                if t in done:
                    continue
                clean = True
                idle = True
                try:
                    if args.mode in ("upload", "sync"):
                        up = await uploaders[t].upload()
                        totals["batches"] += up.batches
                        totals["readings"] += up.readings_sent
                        _emit(
                            {
                                "tenant": t,
                                "op": "upload",
                                "batches": up.batches,
                                "readings": up.readings_sent,
                                "error": up.error,
                            }
                        )
                        clean &= up.error is None
                        idle &= up.batches == 0
                    if args.mode in ("download", "sync"):
                        down = await downloaders[t].download()
                        totals["pages"] += down.pages
                        totals["downloaded"] += down.inserted
                        _emit(
                            {
                                "tenant": t,
                                "op": "download",
                                "pages": down.pages,
                                "inserted": down.inserted,
                                "error": down.error,
                            }
                        )
                        clean &= down.error is None
                except TenantBusyError:
                    clean = False
                if clean and (idle or args.mode == "download"):
                    done.add(t)
                elif not clean:
                    totals["errors"] += 1
                    await asyncio.sleep(0.05)
        _emit({"done": True, **totals})
        return 0
    finally:
        for c in clients.values():
            await c.aclose()
        await db.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))

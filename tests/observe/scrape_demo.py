"""Scrape /metrics while `metersync demo` syncs (same process; endpoint on 127.0.0.1:9818).

Not collected by pytest. Run ``.venv/bin/python tests/observe/scrape_demo.py``: the scrapes are
written to /tmp/ops/scrape_NNN.txt (one a second), the queue gauges read from the demo's
scratch sync database once it exists.
"""

import os
import sys
import threading
import time
import urllib.request

import psycopg

from metersync import observe
from metersync.cli import main as cli_main
from metersync.observe import metrics
from metersync.observe.probe import DatabaseProbe
from metersync.tools.embedded import EmbeddedPostgres


def main() -> None:
    """Run the demo with the endpoint up and a scraper thread."""
    pg = EmbeddedPostgres()
    admin = pg.start()
    server = observe.serve(9818)
    scrapes = []
    done = threading.Event()

    def scraper():
        probe = None
        while not done.is_set():
            if probe is None:
                with psycopg.connect(admin, autocommit=True) as c:
                    names = [
                        r[0]
                        for r in c.execute(
                            "SELECT datname FROM pg_database "
                            "WHERE datname LIKE 'metersync_demo_%_sync'"
                        )
                    ]
                if names:
                    dsn = psycopg.conninfo.make_conninfo(admin, dbname=names[0])
                    probe = DatabaseProbe(dsn)
                    metrics.QUEUE.set_source(probe.queue_status, ttl=0.5)
                    print("probing", names[0], file=sys.stderr)
            try:
                with urllib.request.urlopen("http://127.0.0.1:9818/metrics", timeout=5) as r:
                    scrapes.append((time.time(), r.read().decode()))
            except Exception as exc:
                print("scrape failed", exc, file=sys.stderr)
            time.sleep(1.0)

    t = threading.Thread(target=scraper, daemon=True)
    t.start()
    try:
        code = cli_main(["demo", "--readings", "100000", "--dsn", admin])
    finally:
        done.set()
        t.join(10)
        server.close()
        pg.stop()
    for i, (_ts, text) in enumerate(scrapes):
        os.makedirs("/tmp/ops", exist_ok=True)
        with open(f"/tmp/ops/scrape_{i:03d}.txt", "w") as fh:
            fh.write(text)
    print("exit", code, "scrapes", len(scrapes))


if __name__ == "__main__":
    main()

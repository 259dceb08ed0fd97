"""Every SQL statement of the sync database, in one place.

Values are always parameters (``%s``), except inside ``COPY (SELECT ...) TO STDOUT``, which
cannot take parameters: there the few values are composed with :class:`psycopg.sql.Literal`
from validated ints and hex-only UUID text. Names that vary (the reflected columns of
``meter_reading``) are composed with :class:`psycopg.sql.Identifier`. Every statement that
touches ``meter_reading`` outside the migration is keyed by ``tenant_id`` (spec §9: the table
can be distributed by ``tenant_id`` on Citus without changes).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from psycopg import sql

from metersync.batch_sizes import DEFAULT_DOWNLOAD_BATCH_SIZE, DEFAULT_UPLOAD_BATCH_SIZE
from metersync.model import KEY_COLUMNS, MEASUREMENT_COLUMNS, SYNC_STATUSES

READING = "meter_reading"
QUEUE_INDEX = "meter_reading_queue_idx"
STATUS_CHECK = "meter_reading_sync_status_check"
#: The index of sync_log before its primary key became (tenant_id, id); migrate drops it.
OLD_SYNC_LOG_INDEX = "sync_log_tenant_id_idx"

# ---------------------------------------------------------------------------------- migrate

#: Serializes concurrent migrations (released at commit/rollback).
MIGRATE_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('metersync:migrate', 0))"

#: Columns of a table in table order: name, typname, SQL spelling, typmod, NOT NULL, default.
#: Domains are resolved to their base type so that a domain over a supported type works.
TABLE_COLUMNS = """
SELECT a.attname,
       CASE WHEN t.typtype = 'd' THEN bt.typname ELSE t.typname END,
       format_type(a.atttypid, a.atttypmod),
       CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END,
       a.attnotnull,
       pg_get_expr(d.adbin, d.adrelid)
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_type bt ON bt.oid = t.typbasetype
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = to_regclass(%s::text) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

TABLE_EXISTS = "SELECT to_regclass(%s::text) IS NOT NULL"
CONSTRAINT_DEF = (
    "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = to_regclass(%s::text) "
    "AND conname = %s"
)
#: A table's primary key: its name and its columns in key order (no row: no primary key).
PRIMARY_KEY = """
SELECT c.conname, array_agg(a.attname::text ORDER BY k.ord)
FROM pg_constraint c
CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
WHERE c.conrelid = to_regclass(%s::text) AND c.contype = 'p'
GROUP BY c.conname
"""
INDEX_EXISTS = "SELECT to_regclass(%s::text) IS NOT NULL"

_STATUS_LIST = ", ".join(f"'{s}'" for s in SYNC_STATUSES)

# The batch sizes get no CHECK constraint on purpose: spec §3 wants a stored value <= 0 or
# > 10000 handled at read time (ERROR log + that field's default), operators change the sizes
# with plain SQL too (R4.5), and a CHECK (even NOT VALID) would make any later UPDATE of such a
# row (its name, its key) fail. Writes through metersync are validated in the adapter.
CREATE_TENANT = f"""
CREATE TABLE tenant (
    tenant_id bigint PRIMARY KEY,
    name text NOT NULL,
    api_key text,
    active boolean NOT NULL DEFAULT true,
    download_batch_size integer NOT NULL DEFAULT {DEFAULT_DOWNLOAD_BATCH_SIZE},
    upload_batch_size integer NOT NULL DEFAULT {DEFAULT_UPLOAD_BATCH_SIZE},
    updated_at timestamptz
)
"""

_MEASUREMENTS = ",\n".join(f"    {name} numeric(18,4)" for name in MEASUREMENT_COLUMNS)
assert KEY_COLUMNS == ("meter_reading_id", "created_at", "meter_id", "meter_element_id")
CREATE_READING = f"""
CREATE TABLE meter_reading (
    meter_reading_id uuid NOT NULL DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now(),
    tenant_id bigint NOT NULL,
    meter_id bigint NOT NULL,
    meter_element_id bigint,
{_MEASUREMENTS},
    is_synchronized boolean NOT NULL DEFAULT false,
    sync_status varchar(20) NOT NULL DEFAULT 'pending',
    retry_count integer NOT NULL DEFAULT 0,
    last_error text,
    in_doubt_since timestamptz,
    CONSTRAINT meter_reading_pkey PRIMARY KEY (tenant_id, meter_reading_id),
    CONSTRAINT {STATUS_CHECK} CHECK (sync_status IN ({_STATUS_LIST}))
)
"""

CREATE_SYNC_STATE = """
CREATE TABLE sync_state (
    tenant_id bigint PRIMARY KEY,
    download_cursor text,
    updated_at timestamptz NOT NULL DEFAULT now()
)
"""

# Every primary key includes tenant_id: Citus requires the distribution column in every key and
# unique constraint of a distributed table (docs/scaling.md; tests/store/test_schema.py checks).
CREATE_SYNC_LOG = """
CREATE TABLE sync_log (
    id bigint GENERATED ALWAYS AS IDENTITY,
    tenant_id bigint NOT NULL,
    operation text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    batches integer NOT NULL DEFAULT 0,
    records bigint NOT NULL DEFAULT 0,
    statements bigint NOT NULL DEFAULT 0,
    duration_s double precision NOT NULL DEFAULT 0,
    success boolean NOT NULL,
    error text,
    CONSTRAINT sync_log_pkey PRIMARY KEY (tenant_id, id)
)
"""

#: One row: this site's stable id (the upload's ``X-Metersync-Site``, issue 12's site filter).
CREATE_SYNC_SITE = """
CREATE TABLE sync_site (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    site_id text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)
"""
GET_SITE_ID = "SELECT site_id FROM sync_site"
INSERT_SITE_ID = (
    "INSERT INTO sync_site (site_id) "
    "VALUES ('site-' || left(replace(gen_random_uuid()::text, '-', ''), 16)) RETURNING site_id"
)

# The queue index. Partial on NOT is_synchronized: "oldest unsynchronized readings of tenant T"
# is a range scan over exactly the queue, however many synchronized rows the table holds.
# Its price is that a mark can never be a HOT update (the predicate column changes), so every
# mark also writes a primary-key entry. The alternatives measured: docs/store-notes.md.
CREATE_QUEUE_INDEX = f"""
CREATE INDEX {QUEUE_INDEX} ON meter_reading (tenant_id, created_at, meter_reading_id)
WHERE NOT is_synchronized
"""

DROP_OLD_SYNC_LOG_INDEX = f"DROP INDEX {OLD_SYNC_LOG_INDEX}"

ADD_STATUS_CHECK = (
    f"ALTER TABLE meter_reading ADD CONSTRAINT {STATUS_CHECK} "
    f"CHECK (sync_status IN ({_STATUS_LIST}))"
)
DROP_STATUS_CHECK = f"ALTER TABLE meter_reading DROP CONSTRAINT {STATUS_CHECK}"
BAD_STATUS_VALUES = (
    f"SELECT DISTINCT sync_status FROM meter_reading WHERE sync_status NOT IN ({_STATUS_LIST}) "
    "ORDER BY 1 LIMIT 5"
)
STATUS_FROM_FLAG = (
    "UPDATE meter_reading SET sync_status = 'synchronized' "
    "WHERE is_synchronized AND sync_status <> 'synchronized'"
)


COUNT_QUARANTINED = (
    "SELECT count(*) FROM meter_reading WHERE NOT is_synchronized AND retry_count >= %s"
)


def add_primary_key(table: str, columns: Sequence[str]) -> sql.Composed:
    """``ALTER TABLE t ADD CONSTRAINT t_pkey PRIMARY KEY (columns)``."""
    return sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY ({})").format(
        sql.Identifier(table),
        sql.Identifier(f"{table}_pkey"),
        sql.SQL(", ").join(map(sql.Identifier, columns)),
    )


def replace_primary_key(table: str, old_name: str, columns: Sequence[str]) -> sql.Composed:
    """Drop the key ``old_name`` and add ``t_pkey (columns)`` in one ``ALTER TABLE`` (one
    rebuild of the key's index; the migration's transaction makes it all or nothing)."""
    return sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}, ADD CONSTRAINT {} PRIMARY KEY ({})").format(
        sql.Identifier(table),
        sql.Identifier(old_name),
        sql.Identifier(f"{table}_pkey"),
        sql.SQL(", ").join(map(sql.Identifier, columns)),
    )


def add_column(table: str, column: str, type_sql: str, default: str | None) -> sql.Composed:
    """``ALTER TABLE t ADD COLUMN IF NOT EXISTS c type [NOT NULL DEFAULT d]``.

    With a constant default PostgreSQL adds the column without rewriting the table.
    """
    q = sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
        sql.Identifier(table), sql.Identifier(column), sql.SQL(type_sql)
    )
    if default is not None:
        q = q + sql.SQL(" NOT NULL DEFAULT {}").format(sql.SQL(default))
    return q


def fill_nulls(table: str, column: str, value: str) -> sql.Composed:
    """``UPDATE t SET c = value WHERE c IS NULL`` (migration only)."""
    return sql.SQL("UPDATE {t} SET {c} = {v} WHERE {c} IS NULL").format(
        t=sql.Identifier(table), c=sql.Identifier(column), v=sql.SQL(value)
    )


def out_of_int_range(table: str, column: str) -> sql.Composed:
    """Count and an example of values an ``integer`` cannot hold."""
    return sql.SQL(
        "SELECT count(*), min({c}), max({c}) FROM {t} WHERE {c} < -2147483648 OR {c} > 2147483647"
    ).format(t=sql.Identifier(table), c=sql.Identifier(column))


def alter_type_integer(table: str, column: str) -> sql.Composed:
    """Convert a column to ``integer`` (rewrites the table: a one-time upgrade)."""
    return sql.SQL("ALTER TABLE {t} ALTER COLUMN {c} TYPE integer USING {c}::integer").format(
        t=sql.Identifier(table), c=sql.Identifier(column)
    )


def set_default(table: str, column: str, default: str) -> sql.Composed:
    return sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET DEFAULT {}").format(
        sql.Identifier(table), sql.Identifier(column), sql.SQL(default)
    )


def set_not_null(table: str, column: str) -> sql.Composed:
    return sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET NOT NULL").format(
        sql.Identifier(table), sql.Identifier(column)
    )


# ---------------------------------------------------------------------------------- tenants

_TENANT_COLUMNS = (
    "tenant_id, name, api_key, active, download_batch_size, upload_batch_size, updated_at"
)
#: A tenant row as JSON: works on an old ``tenant`` lacking columns (they are absent from the
#: object), so that reading a tenant never fails before ``metersync migrate`` (spec §3).
GET_TENANT_JSON = "SELECT to_jsonb(t) FROM tenant AS t WHERE t.tenant_id = %s"
LIST_TENANTS_JSON = "SELECT to_jsonb(t) FROM tenant AS t ORDER BY t.tenant_id"
ADD_TENANT = f"""
INSERT INTO tenant (tenant_id, name, api_key, active, download_batch_size, upload_batch_size,
                    updated_at)
VALUES (%s, %s, %s, true, %s, %s, now())
RETURNING {_TENANT_COLUMNS}
"""
SET_TENANT_SIZES = f"""
UPDATE tenant
SET upload_batch_size = coalesce(%s, upload_batch_size),
    download_batch_size = coalesce(%s, download_batch_size),
    updated_at = now()
WHERE tenant_id = %s
RETURNING {_TENANT_COLUMNS}
"""
NOTIFY_TENANT = "SELECT pg_notify('metersync_tenant', %s::text)"
TENANT_CHANNEL = "metersync_tenant"

#: The tenant row as JSON without the secret: works on an old ``tenant`` lacking the batch-size
#: columns (they are simply absent from the object), so the §3 fallbacks need one statement.
TENANT_BATCH_ROW = "SELECT to_jsonb(t) - 'api_key' - 'name' FROM tenant AS t WHERE t.tenant_id = %s"

# ---------------------------------------------------------------------------------- upload


def queue_select(
    columns: Sequence[str],
    tenant_id: int,
    limit: int,
    max_retries: int,
    exclude_literal: str | None = None,
    after: tuple[object, bytes] | None = None,
    held_by: tuple[int, str] | None = None,
) -> sql.Composed:
    """``SELECT`` of a tenant's oldest unsynchronized, not quarantined readings.

    ``held_by``: ``(backend pid, lock key text)`` — the statement FAILS with division by zero
    (SQLSTATE 22012) unless that session holds the advisory lock (:func:`lock_held`; a one-time
    filter, checked before any row is read): a companion connection reading for the lock
    holder gets nothing once the holder's lock is gone, and learns it without a second
    statement.

    ``after``: a keyset lower bound ``(created_at, meter_reading_id)`` (a datetime and the
    16 id bytes) — only readings after it in queue order; the upload cycle passes the last
    reading it fetched, so readings in flight or rejected earlier in the cycle are skipped
    without an exclusion list (the bound is one index condition of the range scan).

    COPY takes no parameters, so the values are literals: ``tenant_id``, ``limit`` and
    ``max_retries`` are checked ints; ``exclude_literal`` is a ``{uuid,...}`` array text built
    from raw 16-byte ids (hex digits and dashes only). The ``ORDER BY`` matches the queue index
    ``(tenant_id, created_at, meter_reading_id) WHERE NOT is_synchronized``: an index range
    scan that stops after ``limit`` rows, never a sort of the backlog.
    """
    for name, value in (("tenant_id", tenant_id), ("limit", limit), ("max_retries", max_retries)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {value!r}")
    where = _pending(sql.Literal(tenant_id), max_retries)
    if exclude_literal is not None:
        where = where + sql.SQL(" AND NOT (meter_reading_id = ANY({}::uuid[]))").format(
            sql.Literal(exclude_literal)
        )
    if after is not None:
        where = where + keyset_after(after)
    if held_by is not None:
        where = where + sql.SQL(" AND ") + lock_fence(*held_by)
    return sql.SQL(
        "SELECT {cols} FROM meter_reading WHERE {where} "
        "ORDER BY created_at, meter_reading_id LIMIT {limit}"
    ).format(
        cols=sql.SQL(", ").join(map(sql.Identifier, columns)),
        where=where,
        limit=sql.Literal(limit),
    )


def _pending(tenant: sql.Composable, max_retries: int) -> sql.Composed:
    """The queue's condition: the tenant's unsynchronized, not quarantined, not in-doubt rows.

    In-doubt readings (outcome unknown at a non-idempotent Client System) are never resent
    automatically: the queue skips them until ``metersync resolve`` releases them.
    """
    return sql.SQL(
        "tenant_id = {} AND NOT is_synchronized AND retry_count < {} AND sync_status <> {}"
    ).format(tenant, sql.Literal(max_retries), sql.Literal(IN_DOUBT))


def queue_select_many(
    columns: Sequence[str], limits: Sequence[tuple[int, int]], max_retries: int
) -> sql.Composed:
    """``SELECT`` of several tenants' first batches at once: for each ``(tenant_id, limit)``
    in ``limits``, exactly the rows :func:`queue_select` gives for it (no ``after``, no
    exclusions), prefixed by the 1-based position of the tenant in ``limits`` (column
    ``group_pos``), ordered by that position and then in queue order.

    One ``LATERAL`` index range scan per tenant (the queue index, stopping after its limit):
    many small tenants cost one statement instead of one each (issue 12). Literals (COPY takes
    no parameters): every tenant id and limit is a checked int.
    """
    if isinstance(max_retries, bool) or not isinstance(max_retries, int):
        raise TypeError(f"max_retries must be an int, got {max_retries!r}")
    if not limits:
        raise ValueError("queue_select_many needs at least one (tenant_id, limit)")
    for pair in limits:
        if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in pair):
            raise TypeError(f"(tenant_id, limit) must be two ints, got {pair!r}")
    tenants = "{" + ",".join(str(t) for t, _ in limits) + "}"
    sizes = "{" + ",".join(str(n) for _, n in limits) + "}"
    cols = sql.SQL(", ").join(map(sql.Identifier, columns))
    return sql.SQL(
        "SELECT g.group_pos, q.* FROM unnest({tenants}::bigint[], {sizes}::int[]) "
        "WITH ORDINALITY AS g(tenant, size, group_pos) "
        "CROSS JOIN LATERAL (SELECT {cols} FROM meter_reading WHERE {where} "
        "ORDER BY created_at, meter_reading_id LIMIT g.size) AS q "
        "ORDER BY g.group_pos, q.created_at, q.meter_reading_id"
    ).format(
        tenants=sql.Literal(tenants),
        sizes=sql.Literal(sizes),
        cols=cols,
        where=_pending(sql.SQL("g.tenant"), max_retries),
    )


def keyset_after(after: tuple[object, bytes]) -> sql.Composed:
    """`` AND (created_at, meter_reading_id) > (ts, id)`` from a datetime and 16 id bytes
    (literals: COPY takes no parameters; the id is hex digits only)."""
    created_at, raw_id = after
    if not isinstance(raw_id, bytes | bytearray) or len(raw_id) != 16:
        raise TypeError(f"keyset id must be 16 bytes, got {raw_id!r}")
    if not hasattr(created_at, "isoformat"):
        raise TypeError(f"keyset created_at must be a datetime, got {created_at!r}")
    return sql.SQL(" AND (created_at, meter_reading_id) > ({}::timestamptz, {}::uuid)").format(
        sql.Literal(created_at.isoformat()), sql.Literal(bytes(raw_id).hex())
    )


#: A batch whose outcome is unknown against a non-idempotent Client System (issue 10).
IN_DOUBT = "in_doubt"


def queue_claim(
    columns: Sequence[str],
    tenant_id: int,
    limit: int,
    max_retries: int,
    after: tuple[object, bytes] | None = None,
) -> sql.Composed:
    """Claim-and-fetch of the non-idempotent upload path, ONE statement (inside ``COPY``).

    ``UPDATE ... SET sync_status = 'in_doubt', in_doubt_since = now()`` on the tenant's oldest
    ``limit`` readings that :func:`queue_select` would return (minus those already in doubt),
    ``RETURNING`` the upload columns (``in_doubt_since`` lets ``metersync resolve`` refuse
    readings the Client System may still be storing). The claim is committed before the POST,
    so a process killed between the POST and the mark leaves the readings held ``in_doubt`` —
    never resent — instead of pending. The
    ``SELECT ... FOR UPDATE SKIP LOCKED`` (a materialized CTE) walks the queue index like the
    plain fetch.
    ``RETURNING`` has no guaranteed order: the caller sorts the (small) batch.
    """
    for name, value in (("tenant_id", tenant_id), ("limit", limit), ("max_retries", max_retries)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {value!r}")
    where = _pending(sql.Literal(tenant_id), max_retries)
    if after is not None:
        where = where + keyset_after(after)
    # A MATERIALIZED CTE, not ``IN (SELECT ... LIMIT n FOR UPDATE SKIP LOCKED)``: the planner
    # may rescan such a subquery inside the join, and with SKIP LOCKED every rescan returns
    # other rows (measured: 73 rows claimed for a limit of 40). The CTE runs exactly once.
    return sql.SQL(
        "WITH c AS MATERIALIZED (SELECT meter_reading_id FROM meter_reading WHERE {where} "
        "ORDER BY created_at, meter_reading_id LIMIT {limit} FOR UPDATE SKIP LOCKED) "
        "UPDATE meter_reading AS m SET sync_status = {doubt}, in_doubt_since = now() FROM c "
        "WHERE m.tenant_id = {tenant} AND m.meter_reading_id = c.meter_reading_id "
        "RETURNING {cols}"
    ).format(
        doubt=sql.Literal(IN_DOUBT),
        tenant=sql.Literal(tenant_id),
        where=where,
        limit=sql.Literal(limit),
        cols=sql.SQL(", ").join(sql.Identifier("m", c) for c in columns),
    )


def copy_out(select: sql.Composable) -> sql.Composed:
    """``COPY (select) TO STDOUT (FORMAT BINARY)``: the fetch path (see :func:`queue_select`)."""
    return sql.SQL("COPY ({}) TO STDOUT (FORMAT BINARY)").format(select)


# One UPDATE per batch, keyed by tenant_id. ``is_synchronized IS NOT TRUE`` (the column is NOT
# NULL, so it means NOT is_synchronized) makes a repeated mark (crash between POST and mark,
# replay) write nothing and rowcount mean "newly marked". It is spelled so on purpose: ``NOT
# is_synchronized`` would imply the queue index's predicate, and with statistics showing a short
# queue (or a generic plan) PostgreSQL then picks the queue index with ``tenant_id = $1`` as its
# only bound and walks the tenant's whole backlog for every mark. This way only the primary key
# (one probe per id) can serve the id list (tests/test_db.py checks both plans).
_NOT_SYNCED = "is_synchronized IS NOT TRUE"
# What marking a reading synchronized sets, wherever it is marked (one tenant, a group, in doubt).
_SET_SYNCED = (
    "is_synchronized = true, sync_status = 'synchronized', last_error = NULL, in_doubt_since = NULL"
)
MARK_SYNCHRONIZED = f"""
UPDATE meter_reading
SET {_SET_SYNCED}
WHERE tenant_id = %s AND meter_reading_id = ANY(%s) AND {_NOT_SYNCED}
"""


# One UPDATE for the confirmed batches of several tenants (a group of small tenants, issue 12):
# the same SET and the same "newly marked" condition as MARK_SYNCHRONIZED, one
# ``(tenant_id = %s AND meter_reading_id = ANY(%s))`` term per tenant. Spelled as OR'ed terms on
# purpose: joined to unnest()ed (tenant, id) pairs instead, the planner hashes the pairs and
# scans the whole table (measured on 30,000 readings); the terms give one primary-key index
# scan each, OR'ed in one bitmap (tests/store/test_group_queue.py checks the plan). Returns how
# many rows each tenant had newly marked.
@functools.lru_cache(maxsize=32)
def mark_synchronized_many(tenants: int) -> str:
    """The statement for ``tenants`` terms (parameters: tenant id, ``uuid[]``, per tenant)."""
    if isinstance(tenants, bool) or not isinstance(tenants, int) or tenants < 1:
        raise ValueError(f"tenants must be an int >= 1, got {tenants!r}")
    terms = " OR ".join(["(m.tenant_id = %s AND m.meter_reading_id = ANY(%s))"] * tenants)
    return f"""
WITH marked AS (
    UPDATE meter_reading AS m
    SET {_SET_SYNCED}
    WHERE ({terms}) AND m.{_NOT_SYNCED}
    RETURNING m.tenant_id
)
SELECT tenant_id, count(*) FROM marked GROUP BY tenant_id
"""


# One UPDATE for a batch's individual rejections; RETURNING tells how many reached quarantine.
MARK_REJECTED = f"""
UPDATE meter_reading AS m
SET sync_status = 'failed', retry_count = m.retry_count + 1, last_error = r.error,
    in_doubt_since = NULL
FROM unnest(%s::uuid[], %s::text[]) AS r(id, error)
WHERE m.tenant_id = %s AND m.meter_reading_id = r.id AND m.{_NOT_SYNCED}
RETURNING m.retry_count >= %s
"""

# Never an in-doubt reading: requeueing one would resend it to a Client System that may hold it
# already (non-idempotent: a second copy). Only `metersync resolve` releases those.
REQUEUE_IDS = f"""
UPDATE meter_reading SET retry_count = 0, sync_status = 'pending'
WHERE tenant_id = %s AND meter_reading_id = ANY(%s) AND {_NOT_SYNCED}
  AND (retry_count <> 0 OR sync_status <> 'pending') AND sync_status <> 'in_doubt'
"""
REQUEUE_ALL = """
UPDATE meter_reading SET retry_count = 0, sync_status = 'pending'
WHERE tenant_id = %s AND NOT is_synchronized AND (retry_count <> 0 OR sync_status <> 'pending')
  AND sync_status <> 'in_doubt'
"""
# In-doubt readings (non-idempotent Client System). Released back to the queue with their old
# status (failed if they were rejected before, else pending), held with the server's words as
# last_error, or marked synchronized after an operator checked the Client System.
_RELEASE = (
    "UPDATE meter_reading SET sync_status = CASE WHEN retry_count > 0 THEN 'failed' "
    "ELSE 'pending' END, in_doubt_since = NULL "
    "WHERE tenant_id = %s AND sync_status = 'in_doubt' AND "
)
RELEASE_IN_DOUBT_IDS = _RELEASE + f"meter_reading_id = ANY(%s) AND {_NOT_SYNCED}"
RELEASE_IN_DOUBT_ALL = _RELEASE + "NOT is_synchronized"
HOLD_IN_DOUBT = f"""
UPDATE meter_reading AS m SET last_error = r.error, in_doubt_since = now()
FROM unnest(%s::uuid[], %s::text[]) AS r(id, error)
WHERE m.tenant_id = %s AND m.meter_reading_id = r.id AND m.sync_status = 'in_doubt'
  AND m.{_NOT_SYNCED}
"""
_IN_DOUBT_SYNCED = (
    f"UPDATE meter_reading SET {_SET_SYNCED} WHERE tenant_id = %s AND sync_status = 'in_doubt' AND "
)
MARK_IN_DOUBT_SYNCHRONIZED_IDS = _IN_DOUBT_SYNCED + f"meter_reading_id = ANY(%s) AND {_NOT_SYNCED}"
MARK_IN_DOUBT_SYNCHRONIZED_ALL = _IN_DOUBT_SYNCED + "NOT is_synchronized"
IN_DOUBT_IDS = """
SELECT meter_reading_id FROM meter_reading
WHERE tenant_id = %s AND NOT is_synchronized AND sync_status = 'in_doubt'
ORDER BY created_at, meter_reading_id
"""
# The same readings with how long each has been held (seconds, by the database's clock): since
# its claim or hold (``in_doubt_since``); a reading held before that column existed falls back
# to its created_at.
IN_DOUBT_HELD = """
SELECT meter_reading_id, extract(epoch FROM now() - coalesce(in_doubt_since, created_at))::float8
FROM meter_reading
WHERE tenant_id = %s AND NOT is_synchronized AND sync_status = 'in_doubt'
ORDER BY created_at, meter_reading_id
"""

QUARANTINED_IDS = """
SELECT meter_reading_id FROM meter_reading
WHERE tenant_id = %s AND NOT is_synchronized AND retry_count >= %s
ORDER BY created_at, meter_reading_id
"""

# ---------------------------------------------------------------------------------- download

EXISTING_IDS = (
    "SELECT meter_reading_id FROM meter_reading WHERE tenant_id = %s AND meter_reading_id = ANY(%s)"
)


def copy_in(columns: Sequence[str], table: str = READING) -> sql.Composed:
    """``COPY meter_reading (columns) FROM STDIN (FORMAT BINARY)`` (or into ``table``)."""
    return sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
    )


#: The staging table of an insert that met a concurrent writer: a temporary copy of
#: ``meter_reading``'s columns, dropped at commit (the fallback only; the fast path COPYs
#: straight into the table).
STAGE = "metersync_stage"
CREATE_STAGE = (
    f"CREATE TEMPORARY TABLE {STAGE} (LIKE meter_reading INCLUDING DEFAULTS) ON COMMIT DROP"
)


def insert_from_stage(columns: Sequence[str]) -> sql.Composed:
    """Move the staged rows into ``meter_reading``, skipping those whose key is present by
    then (whoever committed them). Only the key is a conflict target: a violation of any
    other unique constraint still fails."""
    cols = sql.SQL(", ").join(map(sql.Identifier, columns))
    return sql.SQL(
        "INSERT INTO meter_reading ({cols}) SELECT {cols} FROM {stage} "
        "ON CONFLICT (tenant_id, meter_reading_id) DO NOTHING"
    ).format(cols=cols, stage=sql.Identifier(STAGE))


GET_CURSOR = "SELECT download_cursor FROM sync_state WHERE tenant_id = %s"
_CURSOR_CONFLICT = """
ON CONFLICT (tenant_id) DO UPDATE
SET download_cursor = EXCLUDED.download_cursor, updated_at = EXCLUDED.updated_at
"""
UPSERT_CURSOR = (
    "INSERT INTO sync_state (tenant_id, download_cursor, updated_at) VALUES (%s, %s, now())"
    + _CURSOR_CONFLICT
)


def upsert_cursor_held_by(pid: int, key: str) -> sql.Composed:
    """:data:`UPSERT_CURSOR` that FAILS with division by zero (SQLSTATE 22012) unless backend
    ``pid`` holds the advisory lock of ``key``: a second session writing pages for the lock
    holder moves the cursor only while the holder's lock stands (checked in the statement)."""
    return sql.SQL(
        "INSERT INTO sync_state (tenant_id, download_cursor, updated_at) "
        "SELECT %s, %s, now() WHERE {}" + _CURSOR_CONFLICT
    ).format(lock_fence(pid, key))


# ---------------------------------------------------------------------------------- locks

# Session-level advisory locks: released by unlock, or by PostgreSQL when the session ends
# (process killed, connection cut), so a dead worker never keeps a tenant locked. One row per
# lock key of the ``text[]`` parameter, in order (one tenant or a group of them).
_EACH_KEY = (
    "SELECT {}(hashtextextended(k.key, 0)) "
    "FROM unnest(%s::text[]) WITH ORDINALITY AS k(key, n) ORDER BY k.n"
)
TRY_LOCKS = _EACH_KEY.format("pg_try_advisory_lock")
UNLOCKS = _EACH_KEY.format("pg_advisory_unlock")


def lock_held(pid: int, key: str) -> sql.Composed:
    """``SELECT 1`` when backend ``pid`` holds the advisory lock of ``key`` (the text hashed as
    in TRY_LOCKS; a bigint lock shows in pg_locks as classid = high 32 bits, objid = low 32
    bits, objsubid 1). Literals: it also goes inside COPY, which takes no parameters."""
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise TypeError(f"pid must be an int, got {pid!r}")
    return sql.SQL(
        "SELECT 1 FROM pg_locks l, (SELECT hashtextextended({key}, 0) AS k) x "
        "WHERE l.locktype = 'advisory' AND l.pid = {pid} AND l.granted AND l.objsubid = 1 "
        "AND l.classid::bigint = (x.k >> 32) & 4294967295 AND l.objid::bigint = x.k & 4294967295"
    ).format(pid=sql.Literal(pid), key=sql.Literal(key))


def lock_fence(pid: int, key: str) -> sql.Composed:
    """A condition true when backend ``pid`` holds the lock of ``key`` that otherwise FAILS
    the statement with division by zero (SQLSTATE 22012), checked once before any row."""
    return sql.SQL("(SELECT 1 / count(*)::int FROM ({}) h) = 1").format(lock_held(pid, key))


def lock_key(operation: str, tenant_id: int) -> str:
    """Text hashed into the bigint advisory-lock key: ``metersync:<operation>:<tenant>``."""
    return f"metersync:{operation}:{tenant_id}"


# ---------------------------------------------------------------------------------- bookkeeping

WRITE_SYNC_LOG = """
INSERT INTO sync_log (tenant_id, operation, started_at, batches, records, statements,
                      duration_s, success, error)
VALUES (%s, %s, clock_timestamp() - make_interval(secs => %s), %s, %s, %s, %s, %s, %s)
"""

#: Newest first by the order the cycles were logged (at their end).
RECENT_CYCLES = """
SELECT tenant_id, operation, started_at, batches, records, statements, duration_s, success, error
FROM sync_log WHERE tenant_id = %s ORDER BY id DESC LIMIT %s
"""

# pending: waiting for its first upload; failed: rejected, will retry; quarantined: rejected
# max_retries times, skipped by the queue; in_doubt: sent to a non-idempotent Client System with
# an unknown outcome, skipped until resolved; synchronized: confirmed. The five partition a
# tenant's readings. The counts are a LATERAL subquery per tenant, so even "all tenants" stays
# keyed by tenant_id (the tenants of table ``tenant``: readings of an unknown tenant cannot be
# synced).
_QUEUE_STATUS = """
SELECT t.tenant_id, s.pending, s.failed, s.quarantined, s.synchronized, s.oldest,
       extract(epoch FROM now() - s.oldest)::float8,
       s.in_doubt, s.oldest_in_doubt, extract(epoch FROM now() - s.oldest_in_doubt)::float8
FROM {tenants} AS t
CROSS JOIN LATERAL (
    SELECT count(*) FILTER (WHERE NOT m.is_synchronized AND m.retry_count < %(r)s
                            AND m.sync_status NOT IN ('failed', 'in_doubt')) AS pending,
           count(*) FILTER (WHERE NOT m.is_synchronized AND m.retry_count < %(r)s
                            AND m.sync_status = 'failed') AS failed,
           count(*) FILTER (WHERE NOT m.is_synchronized AND m.retry_count >= %(r)s
                            AND m.sync_status <> 'in_doubt') AS quarantined,
           count(*) FILTER (WHERE m.is_synchronized) AS synchronized,
           min(m.created_at) FILTER (WHERE NOT m.is_synchronized AND m.retry_count < %(r)s
                                     AND m.sync_status <> 'in_doubt') AS oldest,
           count(*) FILTER (WHERE NOT m.is_synchronized AND m.sync_status = 'in_doubt')
               AS in_doubt,
           min(coalesce(m.in_doubt_since, m.created_at))
               FILTER (WHERE NOT m.is_synchronized AND m.sync_status = 'in_doubt')
               AS oldest_in_doubt
    FROM meter_reading AS m WHERE m.tenant_id = t.tenant_id
) AS s
ORDER BY t.tenant_id
"""
QUEUE_STATUS_ONE = _QUEUE_STATUS.format(tenants="(SELECT %(t)s::bigint AS tenant_id)")
QUEUE_STATUS_ALL = _QUEUE_STATUS.format(tenants="tenant")

"""codec.cast: id lists and batches shaped for COPY (pure Arrow, no database)."""

from __future__ import annotations

import uuid

import pyarrow as pa
import pytest

from metersync.codec.cast import cast_column, id_array, insert_batch

COLUMNS = [
    ("meter_reading_id", pa.binary(16)),
    ("created_at", pa.timestamp("us", tz="UTC")),
    ("meter_id", pa.int64()),
    ("power", pa.decimal128(18, 4)),
]


def _batch(n: int = 3, **extra: pa.Array) -> pa.RecordBatch:
    cols = {
        "meter_reading_id": pa.array([uuid.uuid4().bytes for _ in range(n)], pa.binary(16)),
        "meter_id": pa.array(range(n), pa.int32()),  # cast to int64
        "power": pa.array([1.5] * n),  # float64 → decimal128(18, 4)
        **extra,
    }
    return pa.RecordBatch.from_pydict(cols)


def test_insert_batch_orders_casts_and_adds_the_constants() -> None:
    out = insert_batch(_batch(), COLUMNS, 9, True)
    assert out.schema.names == [
        "tenant_id", "meter_reading_id", "meter_id", "power", "is_synchronized", "sync_status"
    ]  # fmt: skip
    assert out.column("meter_id").type == pa.int64()
    assert out.column("power").to_pylist()[0] == pa.scalar(1.5).cast(pa.decimal128(18, 4)).as_py()
    assert out.column("tenant_id").to_pylist() == [9, 9, 9]
    assert out.column("sync_status").to_pylist() == ["synchronized"] * 3


@pytest.mark.parametrize(
    ("batch", "tenant", "message"),
    [
        (_batch(sync_status=pa.array(["x"] * 3)), 1, "set by metersync"),
        (_batch(nope=pa.array([1, 2, 3])), 1, "'nope' is not a column"),
        (_batch().drop_columns(["meter_reading_id"]), 1, "no meter_reading_id"),
        (_batch(), None, "no tenant_id column"),
        (_batch(tenant_id=pa.array([1, 2, 1])), 1, "holds a reading of tenant 2"),
        (_batch(power=pa.array(["x", "y", "z"])), 1, "column 'power': cannot convert"),
    ],
)
def test_insert_batch_names_what_is_wrong(
    batch: pa.RecordBatch, tenant: int | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        insert_batch(batch, COLUMNS, tenant, False)


def test_ids_in_every_form() -> None:
    raw = [uuid.uuid4() for _ in range(3)]
    want = pa.array([u.bytes for u in raw], pa.binary(16))
    assert id_array([raw[0].bytes, raw[1], str(raw[2])]).equals(want)
    assert id_array(pa.array([str(u) for u in raw])).equals(want)
    assert id_array(pa.chunked_array([want])).equals(want)
    with pytest.raises(ValueError, match="not-a-uuid"):
        id_array(["not-a-uuid"])
    with pytest.raises(ValueError, match="int64"):
        id_array(pa.array([1, 2]))
    ext = pa.ExtensionArray.from_storage(pa.uuid(), want)
    assert cast_column(ext, pa.binary(16), "meter_reading_id").equals(want)


def test_the_adapter_uses_no_private_psycopg_api() -> None:
    """Issue 9 item 7: COPY output is read through psycopg's public API (measured within 10%
    of the private ``_read_gen``; see docs/store-notes.md). Nothing private may creep back."""
    import ast
    import importlib
    import inspect
    import pkgutil

    import metersync.store

    # Every module of the store package: the adapter is split in several (issue 9).
    # (The compiled _copy_rows has no Python source: it imports nothing of psycopg and reads
    # only the documented PGconn.pgconn_ptr; tests/store/test_copy_rows.py covers it.)
    modules = [
        module
        for info in pkgutil.iter_modules(metersync.store.__path__)
        if (module := importlib.import_module(f"metersync.store.{info.name}")).__file__.endswith(
            ".py"
        )
    ]
    assert len(modules) >= 5, [m.__name__ for m in modules]
    trees = [ast.parse(inspect.getsource(module)) for module in modules]
    private = sorted(
        {
            node.attr
            for tree in trees
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and isinstance(node.value, ast.Name)
            and node.value.id in {"copy", "conn", "cur", "psycopg", "pq"}
        }
    )
    assert private == [], private

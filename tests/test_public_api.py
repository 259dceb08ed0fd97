"""The public surface: ``__all__`` is what the daemon may import, and every name resolves."""

from __future__ import annotations

import inspect

import metersync
import metersync.codec

EXPECTED = {
    "BatchConfig",
    "BatchSizes",
    "ClientSystemApiClient",
    "DownloadManager",
    "MeterReadingUploadManager",
    "SyncConfig",
    "SyncOptions",
    "SyncDatabase",
    "SyncManager",
    "TenantCache",
    "__impl__",
    "__version__",
}


def test_all_lists_the_public_api() -> None:
    assert set(metersync.__all__) == EXPECTED
    assert set(metersync.__all__) - {"__impl__", "__version__"} == set(metersync._LAZY)


def test_every_public_name_resolves_to_a_documented_object() -> None:
    for name in metersync.__all__:
        value = getattr(metersync, name)
        if inspect.isclass(value):
            assert value.__doc__, f"{name} has no docstring"


def test_unknown_attribute_is_an_attribute_error() -> None:
    try:
        metersync.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_codec_api_names() -> None:
    assert set(metersync.codec.__all__) == {
        "IMPL",
        "JsonProfile",
        "copy_binary",
        "from_copy_binary",
        "json_row_sizes",
        "json_rows",
        "parse_page",
        "slices",
        "sorted_uuid_bytes",
        "split_by_body_size",
        "uuid_array_binary",
    }
    assert metersync.codec.IMPL == metersync.__impl__ in ("c", "python")


def test_deprecated_names_are_the_same_classes() -> None:
    """The seed's names (``BatchConfig``, ``SyncConfig``) still import, as the new classes."""
    from metersync.batch_sizes import BatchConfig, BatchSizes
    from metersync.engine.manager import SyncConfig, SyncOptions

    assert BatchConfig is BatchSizes and metersync.BatchConfig is BatchSizes
    assert SyncConfig is SyncOptions and metersync.SyncConfig is SyncOptions

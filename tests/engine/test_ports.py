"""The managers' protocols (engine/ports.py) are met by the real adapters, method by method."""

from __future__ import annotations

import inspect

import pytest

from metersync.engine import ports
from metersync.remote.client import ClientSystemApiClient
from metersync.store.database import SyncDatabase

CASES = [
    (ports.UploadStore, SyncDatabase),
    (ports.DownloadStore, SyncDatabase),
    (ports.UploadClient, ClientSystemApiClient),
    (ports.DownloadClient, ClientSystemApiClient),
]


def _methods(protocol: type) -> dict[str, inspect.Signature]:
    found: dict[str, inspect.Signature] = {}
    for klass in reversed(protocol.__mro__):
        if klass in (object,) or not getattr(klass, "_is_protocol", False):
            continue
        for name, value in vars(klass).items():
            if not name.startswith("_") and inspect.isfunction(value):
                found[name] = inspect.signature(value)
    return found


@pytest.mark.parametrize(("protocol", "adapter"), CASES, ids=lambda c: c.__name__)
def test_adapter_has_every_method_with_the_protocols_parameters(
    protocol: type, adapter: type
) -> None:
    methods = _methods(protocol)
    assert methods, f"{protocol.__name__} declares no method"
    for name, wanted in methods.items():
        real = getattr(adapter, name, None)
        assert real is not None, f"{adapter.__name__} lacks {name}()"
        have = inspect.signature(real).parameters
        for param in wanted.parameters.values():
            assert param.name in have, f"{adapter.__name__}.{name}() lacks {param.name!r}"
            assert have[param.name].kind == param.kind, (adapter.__name__, name, param.name)
        assert inspect.iscoroutinefunction(real) == inspect.iscoroutinefunction(
            getattr(protocol, name)
        ), f"{adapter.__name__}.{name}() async-ness differs from {protocol.__name__}"

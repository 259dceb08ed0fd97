"""Shared test configuration: fixture plugins and the implementation header."""

from __future__ import annotations

import pytest

import metersync

pytest_plugins = ["fix_pg", "fix_server", "fix_engine", "fix_arrow"]


def pytest_report_header(config: pytest.Config) -> str:
    return f"metersync {metersync.__version__}, codec implementation: {metersync.__impl__}"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-stress", action="store_true", default=False, help="run full-size stress tests"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-stress"):
        return
    skip = pytest.mark.skip(reason="full-size stress test: run with `make stress`")
    for item in items:
        if "stress" in item.keywords:
            item.add_marker(skip)

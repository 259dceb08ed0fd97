"""Shared test configuration: fixture plugins and the implementation header."""

from __future__ import annotations

import logging
from collections.abc import Iterator

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


_LOGGERS = ("", "metersync", "httpx", "httpcore", "aiohttp.access", "asyncio")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Undo logging set-up done by in-process CLI calls (``main()`` configures the root logger).

    Without this, a test that runs the CLI in-process leaves a handler on a closed stream and
    the ``metersync`` logger at WARNING, and later tests' ``caplog`` misses DEBUG/INFO records.
    """
    saved = {
        name: (logging.getLogger(name).level, list(logging.getLogger(name).handlers))
        for name in _LOGGERS
    }
    yield
    for name, (level, handlers) in saved.items():
        logger = logging.getLogger(name)
        logger.setLevel(level)
        for handler in list(logger.handlers):
            if handler not in handlers:
                logger.removeHandler(handler)

"""Registers the ``slow`` marker: tests that train a model to its quality target (run in CI;
skip locally with ``-m "not slow"``)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: trains a model to its quality target (~10 s+)")

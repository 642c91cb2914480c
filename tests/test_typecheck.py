"""The package type-checks: mypy with the project's configuration (pyproject.toml
[tool.mypy]: dlcore/, Python 3.10, unannotated bodies checked too) reports no errors."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_clean() -> None:
    if importlib.util.find_spec("mypy") is None:
        pytest.fail("mypy is not installed; it is part of the test extra")
    # A subprocess runs exactly what `python -m mypy` does at the repository root; no paths
    # are given, so the config's `files` says what is checked.
    result = subprocess.run([sys.executable, "-m", "mypy", "--config-file", "pyproject.toml"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, f"mypy found errors:\n{result.stdout}{result.stderr}"

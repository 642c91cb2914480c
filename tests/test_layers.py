"""The package's layering holds: import-linter's contracts in pyproject.toml
([tool.importlinter]) are kept, and the contracts really constrain something."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports() -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if not Path(exe).exists():
        pytest.fail("import-linter is not installed; it is part of the test extra")
    return subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True)


def test_import_contracts_are_kept() -> None:
    result = _lint_imports()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_layers_name_every_subpackage_and_module() -> None:
    """A new module must be placed in a layer (or it would be unconstrained)."""
    tomllib = pytest.importorskip("tomllib")  # the standard library from Python 3.11
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = config["contracts"][0]["layers"]
    named = {name.strip() for layer in layers for name in layer.replace(":", "|").split("|")}
    present = {p.stem for p in (ROOT / "dlcore").glob("*.py") if not p.stem.startswith("_")}
    present |= {p.parent.name for p in (ROOT / "dlcore").glob("*/__init__.py")}
    assert present <= named, f"not in any layer: {sorted(present - named)}"

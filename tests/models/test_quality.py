"""The quality target of the default ``dlcore train cnn`` (CI runs it; ~10 s on 2 cores)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dlcore.cli import main


@pytest.mark.slow
def test_default_cnn_reaches_98_5_percent(tmp_path: Path) -> None:
    assert main(["train", "cnn", "--out", str(tmp_path), "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["test_accuracy"] >= 0.985, metrics["test_accuracy"]

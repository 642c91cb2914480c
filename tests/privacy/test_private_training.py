"""``dlcore train cnn --dp-epsilon``: one short private run through the CLI, its metrics, and
the option checks."""

from __future__ import annotations

import json
from pathlib import Path

from dlcore.cli import main


def test_private_cnn_run_reports_its_privacy(tmp_path: Path) -> None:
    out = tmp_path / "dp"
    code = main(["train", "cnn", "--dp-epsilon", "2", "--epochs", "1", "--device", "cpu",
                 "--no-progress", "--out", str(out)])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 1.99 <= metrics["epsilon"] <= 2.0 and metrics["delta"] == 1e-5
    assert metrics["noise_multiplier"] > 0 and 0.0 <= metrics["test_accuracy"] <= 1.0
    assert metrics["config"]["model"] == "PrivateCNN"


def test_dp_epsilon_is_for_the_cnn_task(capsys) -> None:
    assert main(["train", "rnn", "--dp-epsilon", "3", "--device", "cpu"]) == 2
    assert "--dp-epsilon applies to the cnn task only" in capsys.readouterr().err


def test_dp_epsilon_refuses_amp(tmp_path: Path, capsys) -> None:
    assert main(["train", "cnn", "--dp-epsilon", "3", "--amp", "--device", "cpu",
                 "--out", str(tmp_path)]) == 2
    assert "--amp" in capsys.readouterr().err

"""attribution_figure and the attributions.png of ``dlcore train cnn``."""

from __future__ import annotations

from pathlib import Path

import pytest

import dlcore
from dlcore.cli import main
from dlcore.data import TensorDataset, datasets
from dlcore.explain import attribution_figure
from dlcore.models import LeNet

PNG = b"\x89PNG\r\n\x1a\n"


def test_the_figure_is_a_png_and_the_mode_is_restored(tmp_path: Path) -> None:
    dlcore.manual_seed(0)
    model = LeNet()  # training mode: the figure runs it in eval mode, then restores
    path = attribution_figure(model, dlcore.rand(3, 1, 8, 8), dlcore.tensor([0, 4, 9]),
                              tmp_path / "a.png")
    assert path.read_bytes()[:8] == PNG and model.training


def test_train_cnn_writes_attributions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    full = datasets.digits

    def small() -> tuple[TensorDataset, TensorDataset]:
        train, test = full()
        return (TensorDataset(*(t[:128] for t in train.tensors)),
                TensorDataset(*(t[:64] for t in test.tensors)))

    monkeypatch.setattr(datasets, "digits", small)
    assert main(["train", "cnn", "--epochs", "1", "--batch-size", "16", "--out",
                 str(tmp_path), "--no-progress", "--device", "cpu"]) == 0
    assert (tmp_path / "attributions.png").read_bytes()[:8] == PNG

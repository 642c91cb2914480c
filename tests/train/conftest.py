"""Fixtures for the training-loop tests: a cut-down digits set, so a cnn epoch under --amp
(whose float16 conv on the CPU is NumPy without BLAS, ~20x slower than float32) takes a
second or two."""

from __future__ import annotations

import pytest

from dlcore.data import TensorDataset, datasets

SMALL_TRAIN, SMALL_TEST = 128, 64


@pytest.fixture
def small_digits(monkeypatch: pytest.MonkeyPatch) -> None:
    """``datasets.digits()`` returns its first 128 training and 64 test images."""
    full = datasets.digits

    def cut() -> tuple[TensorDataset, TensorDataset]:
        train, test = full()
        return (TensorDataset(*(t[:SMALL_TRAIN] for t in train.tensors)),
                TensorDataset(*(t[:SMALL_TEST] for t in test.tensors)))

    monkeypatch.setattr(datasets, "digits", cut)

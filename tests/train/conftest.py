"""Fixtures for the training-loop tests: a cut-down digits set, so a cnn epoch under --amp
(whose float16 conv on the CPU is NumPy without BLAS, ~20x slower than float32) takes a
second or two, and a dropout-free LeNet (for comparisons that dropout's random masks would
spoil). ``mpi_worker.py`` applies the same two under mpiexec."""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest

from dlcore.data import TensorDataset, datasets
from dlcore.models import LeNet
from dlcore.train import classify

SMALL_TRAIN, SMALL_TEST = 128, 64

Digits = Callable[[], tuple[TensorDataset, TensorDataset]]


def first_digits(full: Digits) -> Digits:
    """``full`` cut to its first 128 training and 64 test images."""
    def cut() -> tuple[TensorDataset, TensorDataset]:
        train, test = full()
        return (TensorDataset(*(t[:SMALL_TRAIN] for t in train.tensors)),
                TensorDataset(*(t[:SMALL_TEST] for t in test.tensors)))

    return cut


DROPOUT_FREE_LENET = functools.partial(LeNet, dropout=0.0)


@pytest.fixture
def small_digits(monkeypatch: pytest.MonkeyPatch) -> None:
    """``datasets.digits()`` returns its first 128 training and 64 test images."""
    monkeypatch.setattr(datasets, "digits", first_digits(datasets.digits))


@pytest.fixture
def no_dropout(monkeypatch: pytest.MonkeyPatch) -> None:
    """``dlcore train cnn`` trains a LeNet without dropout."""
    monkeypatch.setattr(classify, "LeNet", DROPOUT_FREE_LENET)

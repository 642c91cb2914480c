"""Built-in datasets: shapes, dtypes, ranges and a fixed split."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from dlcore.data import datasets
from dlcore.data.datasets.digits import load_digits_arrays, split_indices


def test_digits_shapes_and_fixed_stratified_split() -> None:
    train, test = datasets.digits()
    x, y = train.tensors
    assert x.shape == (1437, 1, 8, 8) and x.dtype == np.float32 and y.dtype == np.int64
    assert len(test) == 360 and 0.0 <= x.numpy().min() and x.numpy().max() == 1.0
    test_counts = np.bincount(test.tensors[1].numpy(), minlength=10)
    assert test_counts.min() >= 35 and test_counts.max() <= 37
    again, _ = datasets.digits()
    np.testing.assert_array_equal(again.tensors[0].numpy(), x.numpy())
    _, labels = load_digits_arrays()
    train_idx, test_idx = split_indices(labels)
    assert sorted(np.concatenate([train_idx, test_idx]).tolist()) == list(range(1797))
    np.testing.assert_array_equal(y.numpy(), labels[train_idx])


def test_digit_rows_are_sequences_of_rows() -> None:
    train, test = datasets.digit_rows()
    images, _ = datasets.digits()
    assert train.tensors[0].shape == (1437, 8, 8) and len(test) == 360
    np.testing.assert_array_equal(train.tensors[0].numpy(), images.tensors[0].numpy()[:, 0])


def test_digits_without_scikit_learn_says_what_to_install(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"pip install dlcore\[datasets\]"):
        datasets.digits()


def test_ring() -> None:
    ds = datasets.ring(4000, modes=8, radius=2.0, std=0.02, seed=1)
    points, modes = (t.numpy() for t in ds.tensors)
    assert points.shape == (4000, 2) and points.dtype == np.float32 and modes.dtype == np.int64
    assert set(modes.tolist()) == set(range(8))
    np.testing.assert_allclose(np.linalg.norm(points, axis=1), 2.0, atol=0.1)
    np.testing.assert_array_equal(datasets.ring(4000, seed=1).tensors[0].numpy(), points)
    assert not np.array_equal(datasets.ring(4000, seed=2).tensors[0].numpy(), points)


def test_adding_problem() -> None:
    ds = datasets.adding_problem(500, seq_len=30, seed=0)
    x, y = (t.numpy() for t in ds.tensors)
    assert x.shape == (500, 30, 2) and y.shape == (500, 1) and x.dtype == y.dtype == np.float32
    markers = x[:, :, 1]
    assert (markers.sum(axis=1) == 2).all()
    assert (markers[:, :15].sum(axis=1) == 1).all()  # one marker in each half
    np.testing.assert_allclose(y[:, 0], (x[:, :, 0] * markers).sum(axis=1), rtol=1e-6)
    np.testing.assert_array_equal(datasets.adding_problem(500, 30, seed=0).tensors[0].numpy(), x)

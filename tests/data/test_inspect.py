"""Data quality (dlcore/data/inspect.py): DataLoader(check_finite=True) and inspect() on
planted faults: NaN and Inf, duplicates, conflicting labels, a constant feature, imbalance."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import dlcore
from dlcore.data import DataLoader, Dataset, IterableDataset, TensorDataset, inspect


def _planted() -> tuple[np.ndarray, np.ndarray]:
    """30 samples of 4 features: NaN in sample 5 (feature 1), Inf and -Inf in sample 9
    (features 2, 3), sample 12 equal to sample 3 with another label, 20 equal to 3 with the
    same label, feature 0 constant; labels 0 (24 times) and 1 (6 times)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 4)).astype(np.float32)
    x[:, 0] = 7.0
    x[5, 1] = np.nan
    x[9, 2], x[9, 3] = np.inf, -np.inf
    x[12] = x[20] = x[3]
    y = np.zeros(30, dtype=np.int64)
    y[[1, 12, 15, 18, 25, 28]] = 1
    return x, y


@pytest.mark.parametrize("workers", [0, 2])
def test_check_finite_names_the_dataset_indices(workers: int) -> None:
    x, y = _planted()
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True, generator=0,
                        num_workers=workers, check_finite=True)
    with pytest.raises(ValueError, match=r"check_finite=True\): batch\[0\] holds non-finite "
                                         r"values .* at dataset indices \[(5|9)\]"):
        for _ in loader:
            pass
    assert len(list(DataLoader(TensorDataset(x, y), batch_size=8))) == 4  # off by default
    clean = np.nan_to_num(x, posinf=0, neginf=0)
    assert len(list(DataLoader(TensorDataset(clean, y), batch_size=8, check_finite=True))) == 4


def test_check_finite_counts_and_nested_batches() -> None:
    class Pairs(Dataset):
        def __getitem__(self, i: int) -> dict[str, Any]:
            value = np.full(3, np.inf if i in (2, 3) else 1.0, dtype=np.float32)
            return {"label": i, "image": value}

        def __len__(self) -> int:
            return 6

    with pytest.raises(ValueError, match=r"batch\['image'\] holds non-finite values "
                                         r"\(0 NaN, 6 Inf\) in 2 samples, at dataset "
                                         r"indices \[2, 3\]"):
        list(DataLoader(Pairs(), batch_size=6, check_finite=True, prefetch=0))


def test_check_finite_on_an_iterable_dataset_names_positions() -> None:
    class Stream(IterableDataset):
        def __iter__(self) -> Iterator[np.ndarray]:
            for i in range(4):
                yield np.array([np.nan if i == 3 else 0.0])

    with pytest.raises(ValueError, match=r"positions \[1\] of the batch"):
        list(DataLoader(Stream(), batch_size=2, check_finite=True))


def test_inspect_finds_the_planted_faults() -> None:
    x, y = _planted()
    report = inspect(TensorDataset(x, y))
    assert report.size == 30 and report.feature_shape == (4,)
    assert report.nan_counts.tolist() == [0, 1, 0, 0]
    assert report.inf_counts.tolist() == [0, 0, 1, 1]
    assert report.nonfinite_samples == [5, 9]
    finite = np.where(np.isfinite(x), x, np.nan)
    np.testing.assert_array_equal(report.minimum, np.nanmin(finite, axis=0))
    np.testing.assert_array_equal(report.maximum, np.nanmax(finite, axis=0))
    assert report.constant_features == [0]
    assert report.duplicates == [[3, 12, 20]] and report.conflicting == [[3, 12, 20]]
    assert report.label_counts == {0: 24, 1: 6} and report.imbalance == 4.0
    text = str(report)
    for phrase in ("30 samples", "non-finite: 1 NaN, 2 Inf, in 2 samples [5, 9]",
                   "constant features: 1 [0]", "duplicates: 1 groups", "conflicting labels",
                   "labels: 2 classes (0: 24, 1: 6); imbalance (largest / smallest class) 4"):
        assert phrase in text, (phrase, text)


def test_inspect_reads_any_dataset_alike_and_in_chunks(monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    x, y = _planted()

    class Samples(Dataset):  # the slow path: one dataset[i] at a time
        def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
            return x[i], int(y[i])

        def __len__(self) -> int:
            return len(x)

    # NOTE: dlcore.data.inspect is the function; its module is found by name
    module = importlib.import_module("dlcore.data.inspect")
    whole = inspect(TensorDataset(x, y))
    monkeypatch.setattr(module, "CHUNK", 7)  # duplicates and counts across chunks
    for report in (inspect(Samples()), inspect(TensorDataset(dlcore.tensor(x),
                                                             dlcore.tensor(y)))):
        assert str(report) == str(whole)
        assert report.duplicates == whole.duplicates
        np.testing.assert_array_equal(report.minimum, whole.minimum)


def test_inspect_without_labels_and_of_clean_data() -> None:
    report = inspect(TensorDataset(dlcore.arange(12.0).reshape(6, 2)))
    assert report.label_counts is None and report.imbalance is None
    assert report.duplicates == [] and report.nonfinite_samples == []
    assert "non-finite: none" in str(report) and "duplicates: none" in str(report)


def test_inspect_of_an_empty_tensor_dataset_keeps_its_feature_shape() -> None:
    """No sample to read, but a TensorDataset's tensors still have their per-sample shape:
    the report says (3,), 3 features, and no NaN/Inf (it said () and 1 per sample)."""
    report = inspect(TensorDataset(dlcore.zeros(0, 3), dlcore.zeros(0, dtype=dlcore.int64)))
    assert report.size == 0
    assert report.feature_shape == (3,)
    assert str(report).startswith("0 samples, features of shape (3,) (3 per sample)")
    assert report.nan_counts.tolist() == [0, 0, 0]
    assert report.duplicates == [] and report.nonfinite_samples == []

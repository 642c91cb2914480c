"""Data quality: what is in a dataset (:func:`inspect`) and the DataLoader's finite check.

:func:`inspect` reads a dataset once, in chunks (the memory it keeps is per feature plus 16
bytes per sample for finding duplicates), and reports per-feature ranges, NaN and Inf
counts and the samples holding them, constant features, duplicate samples (and duplicates
whose labels disagree) and the label counts with their imbalance.

A sample is what ``dataset[i]`` returns: a tuple or list whose element ``features`` (default
0) holds the features and element ``label`` (default -1, the last; None: no labels) the
class index, or a lone array (features only). Shape letters: N samples, F features (a
sample's features flattened).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..dtypes import bfloat16
from ..tensor import Tensor
from .dataset import TensorDataset

CHUNK = 4096  # samples read at a time
SHOWN = 8  # indices quoted per finding in messages and reports


def _host(value: Any) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.numpy()
    if type(value).__module__.startswith("cupy"):
        return value.get()
    return np.asarray(value)


def _floating(a: np.ndarray) -> np.ndarray | None:
    """``a`` as a float array when it holds floating-point values, else None."""
    if a.dtype == bfloat16:
        return a.astype(np.float32)
    return a if a.dtype.kind in "fc" else None


def _quote(indices: Sequence[int]) -> str:
    shown = ", ".join(str(i) for i in indices[:SHOWN])
    return f"[{shown}{', ...' if len(indices) > SHOWN else ''}]"


# ---- the DataLoader's check_finite=True ---------------------------------------------------

def _leaves(batch: Any, where: str) -> Iterator[tuple[str, Any]]:
    if isinstance(batch, Tensor | np.ndarray):
        yield where, batch
    elif isinstance(batch, dict):
        for key, value in batch.items():
            yield from _leaves(value, f"{where}[{key!r}]")
    elif isinstance(batch, tuple | list):
        for i, value in enumerate(batch):
            yield from _leaves(value, f"{where}[{i}]")


def check_finite(batch: Any, indices: Sequence[int] | None) -> None:
    """Raise ValueError when a floating-point tensor of ``batch`` holds NaN or Inf, naming
    the samples' dataset ``indices`` (None: an IterableDataset's, named by position)."""
    for where, leaf in _leaves(batch, "batch"):
        a = _host(leaf)
        values = _floating(a)
        if values is None or values.ndim == 0:
            continue
        finite = np.isfinite(values)
        if finite.all():
            continue
        rows = np.flatnonzero(~finite.reshape(len(values), -1).all(axis=1)).tolist()
        named = (f"dataset indices {_quote([indices[r] for r in rows])}" if indices is not None
                 else f"positions {_quote(rows)} of the batch (an IterableDataset has no "
                      "indices)")
        nans = int(np.isnan(values).sum())
        raise ValueError(f"DataLoader(check_finite=True): {where} holds non-finite values "
                         f"({nans} NaN, {int((~finite).sum()) - nans} Inf) in {len(rows)} "
                         f"samples, at {named}")


# ---- inspect() ----------------------------------------------------------------------------

@dataclass
class DatasetReport:
    """What :func:`inspect` found; ``str(report)`` is a readable summary.

    ``minimum``/``maximum`` are per feature over the finite values (NaN where a feature has
    none), ``nan_counts``/``inf_counts`` per feature; ``nonfinite_samples`` are the indices
    of the samples holding any NaN or Inf; ``duplicates`` the groups of indices of samples
    with equal features, ``conflicting`` those among them whose labels differ;
    ``label_counts`` maps each class to its count (None: no labels)."""

    size: int
    feature_shape: tuple[int, ...]
    minimum: np.ndarray
    maximum: np.ndarray
    nan_counts: np.ndarray
    inf_counts: np.ndarray
    nonfinite_samples: list[int]
    duplicates: list[list[int]]
    conflicting: list[list[int]]
    label_counts: dict[int, int] | None = field(default=None)

    @property
    def constant_features(self) -> list[int]:
        """Features with one value throughout (no information for a model)."""
        return np.flatnonzero(self.minimum == self.maximum).tolist()

    @property
    def imbalance(self) -> float | None:
        """Count of the largest class over that of the smallest (1.0: balanced)."""
        if not self.label_counts:
            return None
        counts = self.label_counts.values()
        return max(counts) / min(counts)

    def __str__(self) -> str:
        features = int(np.prod(self.feature_shape))
        lines = [f"{self.size} samples, features of shape {self.feature_shape} "
                 f"({features} per sample)"]
        if self.size == 0:
            return lines[0]
        finite = np.isfinite(self.minimum)
        if finite.any():
            lines.append(f"values: {np.min(self.minimum[finite]):.6g} to "
                         f"{np.max(self.maximum[finite]):.6g}; per feature in .minimum and "
                         ".maximum")
        nan, inf = int(self.nan_counts.sum()), int(self.inf_counts.sum())
        if nan or inf:
            bad = np.flatnonzero(self.nan_counts + self.inf_counts).tolist()
            lines.append(f"non-finite: {nan} NaN, {inf} Inf, in {len(self.nonfinite_samples)} "
                         f"samples {_quote(self.nonfinite_samples)}, features {_quote(bad)}")
        else:
            lines.append("non-finite: none")
        constant = self.constant_features
        lines.append(f"constant features: {len(constant)} {_quote(constant)}" if constant
                     else "constant features: none")
        extra = sum(len(g) - 1 for g in self.duplicates)
        lines.append(f"duplicates: {len(self.duplicates)} groups of equal samples ({extra} "
                     f"extra copies), e.g. {self.duplicates[0]}" if self.duplicates
                     else "duplicates: none")
        if self.conflicting:
            lines.append(f"conflicting labels: {len(self.conflicting)} groups of equal "
                         f"features with different labels, e.g. {self.conflicting[0]}")
        if self.label_counts is not None:
            counts = ", ".join(f"{k}: {v}" for k, v in sorted(self.label_counts.items()))
            lines.append(f"labels: {len(self.label_counts)} classes ({counts}); imbalance "
                         f"(largest / smallest class) {self.imbalance:.3g}")
        return "\n".join(lines)


def _chunks(dataset: Any, features: int, label: int | None
            ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """``(features (n, ...), labels (n,) or None)`` for consecutive runs of samples."""
    n = len(dataset)
    if isinstance(dataset, TensorDataset):  # rows by slicing: no per-sample Python
        x = dataset.tensors[features]
        y = None if label is None or len(dataset.tensors) < 2 else dataset.tensors[label]
        for start in range(0, n, CHUNK):
            stop = min(n, start + CHUNK)
            yield (Tensor._make(x._data[start:stop], x.device).numpy(),
                   None if y is None else Tensor._make(y._data[start:stop], y.device).numpy())
        return
    for start in range(0, n, CHUNK):
        xs, ys = [], []
        for i in range(start, min(n, start + CHUNK)):
            sample = dataset[i]
            if isinstance(sample, tuple | list):
                xs.append(_host(sample[features]))
                if label is not None and len(sample) > 1:
                    ys.append(_host(sample[label]))
            else:
                xs.append(_host(sample))
        yield np.stack(xs), (np.stack(ys) if ys else None)


def inspect(dataset: Any, features: int = 0, label: int | None = -1) -> DatasetReport:
    """Per-feature ranges, NaN/Inf counts, duplicate samples and label counts of
    ``dataset`` (see the module's docstring for what a sample is).

    >>> report = inspect(TensorDataset(dlcore.tensor([[0.0, 1.0], [0.0, 1.0], [2.0, 3.0]]),
    ...                                dlcore.tensor([0, 0, 1])))
    >>> report.duplicates, report.label_counts
    ([[0, 1]], {0: 2, 1: 1})
    """
    size = len(dataset)
    shape: tuple[int, ...] = ()
    lo = hi = nans = infs = np.zeros(0)
    if size == 0 and isinstance(dataset, TensorDataset):  # no sample, but a known shape
        shape = tuple(dataset.tensors[features].shape[1:])
        width = int(np.prod(shape))
        lo = hi = np.full(width, np.nan)
        nans = infs = np.zeros(width, np.int64)
    nonfinite: list[int] = []
    groups: dict[bytes, list[int]] = {}
    labels: list[np.ndarray] = []
    start = 0
    for x, y in _chunks(dataset, features, label):
        if start == 0:
            shape = tuple(x.shape[1:])
            width = int(np.prod(shape))
            lo, hi = np.full(width, np.inf), np.full(width, -np.inf)
            nans, infs = np.zeros(width, np.int64), np.zeros(width, np.int64)
        rows = x.reshape(len(x), -1)
        values = _floating(rows)
        if values is not None:
            finite = np.isfinite(values)
            nans += np.isnan(values).sum(axis=0)
            infs += (~finite).sum(axis=0) - np.isnan(values).sum(axis=0)
            nonfinite += (start + np.flatnonzero(~finite.all(axis=1))).tolist()
            lo = np.minimum(lo, np.where(finite, values, np.inf).min(axis=0))
            hi = np.maximum(hi, np.where(finite, values, -np.inf).max(axis=0))
            rows = values + 0.0  # -0.0 and 0.0 compare equal, so hash them alike
        else:
            lo, hi = np.minimum(lo, rows.min(axis=0)), np.maximum(hi, rows.max(axis=0))
        rows = np.ascontiguousarray(rows)
        for i in range(len(rows)):
            key = hashlib.blake2b(rows[i].tobytes(), digest_size=16).digest()
            groups.setdefault(key, []).append(start + i)
        if y is not None and y.dtype.kind in "iub" and y.size == len(x):
            labels.append(y.reshape(-1))
        start += len(x)
    lo = np.where(np.isfinite(lo), lo, np.nan)  # features with no finite value
    hi = np.where(np.isfinite(hi), hi, np.nan)
    duplicates = [g for g in groups.values() if len(g) > 1]
    label_counts = None
    conflicting: list[list[int]] = []
    if labels and sum(len(y) for y in labels) == size:
        every = np.concatenate(labels)
        classes, counts = np.unique(every, return_counts=True)
        label_counts = {int(c): int(k) for c, k in zip(classes, counts)}
        conflicting = [g for g in duplicates if len(set(every[g].tolist())) > 1]
    return DatasetReport(size=size, feature_shape=shape, minimum=lo, maximum=hi,
                         nan_counts=nans, inf_counts=infs, nonfinite_samples=nonfinite,
                         duplicates=duplicates, conflicting=conflicting,
                         label_counts=label_counts)

"""Datasets: map-style (``len`` + ``[i]``) and iterable (streams), as in PyTorch.

A map-style :class:`Dataset` lets the DataLoader shuffle by index; an
:class:`IterableDataset` produces samples in its own order (for data that cannot be
indexed cheaply, such as shards on disk; see :mod:`dlcore.data.shards`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np

from ..creation import as_tensor
from ..tensor import Tensor
from .sampler import GeneratorLike, draw_permutation, numpy_generator


class SizedIndexable(Protocol):
    """What a map-style dataset needs to be: ``len(d)`` and ``d[i]``. A :class:`Dataset`
    qualifies, and so do a list, a ``range`` or a NumPy array."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int, /) -> Any: ...


class Dataset:
    """Base class of map-style datasets: subclasses define ``__getitem__`` and
    ``__len__``."""

    def __getitem__(self, index: int) -> Any:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError


class IterableDataset:
    """Base class of streaming datasets: subclasses define ``__iter__`` (and may define
    ``__len__`` so that ``len(loader)`` works)."""

    def __iter__(self) -> Iterator[Any]:
        raise NotImplementedError


class TensorDataset(Dataset):
    """Samples are the ``i``-th rows of equally long tensors (or arrays).

    Samples are cheap views of the rows, cut off from autograd: a dataset is input, not
    something to differentiate.

    >>> ds = TensorDataset(dlcore.zeros(5, 2), dlcore.arange(5))
    >>> len(ds), ds[1][1].item()
    (5, 1)
    """

    def __init__(self, *tensors: Any) -> None:
        if not tensors:
            raise ValueError("TensorDataset: needs at least one tensor")
        self.tensors = tuple(t if isinstance(t, Tensor) else as_tensor(t) for t in tensors)
        lengths = [t.shape[0] if t.ndim else None for t in self.tensors]
        if None in lengths or len(set(lengths)) != 1:
            shapes = [tuple(t.shape) for t in self.tensors]
            raise ValueError(f"TensorDataset: tensors must share their first dimension, "
                             f"got shapes {shapes}")

    def __getitem__(self, index: int) -> tuple[Tensor, ...]:
        # NOTE: ``[index, ...]``: a plain ``[index]`` on a 1-d array gives a NumPy scalar,
        # not the 0-d array a Tensor must hold.
        return tuple(Tensor._make(t._data[index, ...], t.device) for t in self.tensors)

    def __len__(self) -> int:
        return self.tensors[0].shape[0]


class Subset(Dataset):
    """The samples of ``dataset`` at ``indices``, in that order."""

    def __init__(self, dataset: SizedIndexable, indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = [int(i) for i in indices]

    def __getitem__(self, index: int) -> Any:
        return self.dataset[self.indices[index]]

    def __len__(self) -> int:
        return len(self.indices)


def random_split(dataset: SizedIndexable, lengths: Sequence[int | float],
                 generator: GeneratorLike = None) -> list[Subset]:
    """Split ``dataset`` into non-overlapping random subsets of the given ``lengths``
    (counts summing to ``len(dataset)``, or fractions summing to 1).

    Seed it (``generator=0``) so that the split, and so the test set, is the same in
    every run; without one it draws from dlcore's cpu generator (``manual_seed``).

    >>> train, test = random_split(range(10), [0.8, 0.2], generator=0)
    >>> len(train), len(test)
    (8, 2)
    """
    n = len(dataset)
    counts = _split_counts(n, lengths)
    perm = draw_permutation(n, numpy_generator(generator)).tolist()
    subsets, start = [], 0
    for count in counts:
        subsets.append(Subset(dataset, perm[start:start + count]))
        start += count
    return subsets


def _split_counts(n: int, lengths: Sequence[int | float]) -> list[int]:
    """Counts from ``lengths``; fractions are floored, then the remainder is handed out
    one at a time from the first subset on (PyTorch's rule)."""
    if all(isinstance(x, int | np.integer) for x in lengths):
        counts = [int(x) for x in lengths]
        if sum(counts) != n or min(counts, default=0) < 0:
            raise ValueError(f"random_split: lengths {counts} must be non-negative and sum "
                             f"to the dataset length {n}")
        return counts
    if not math.isclose(sum(lengths), 1.0) or min(lengths) < 0:
        raise ValueError(f"random_split: fractions {list(lengths)} must be non-negative and "
                         "sum to 1")
    counts = [int(math.floor(n * f)) for f in lengths]
    for i in range(n - sum(counts)):
        counts[i % len(counts)] += 1
    return counts

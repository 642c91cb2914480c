"""DistributedSampler: each rank's part of a map-style dataset (PyTorch's semantics).

Per epoch, every rank computes the same order (a permutation drawn from ``seed + epoch``
when ``shuffle``, else ``0 .. N-1``), makes it a multiple of the number of replicas (padding
it with indices from its start, or, with ``drop_last``, cutting its tail), and takes every
``num_replicas``-th index from its own rank on. So the parts are disjoint apart from the
padding, together cover the dataset, have equal lengths (every rank runs the same number of
steps, which the collectives need), and change every epoch after ``set_epoch(epoch)``.

NOTE: the shuffled orders are NumPy's (PCG64 seeded with ``seed + epoch``), not PyTorch's
``randperm``: the same seed gives other permutations than torch, with the same properties.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sized

import numpy as np

from .. import distributed as dist
from .sampler import Sampler


def _from_group(value: int | None, what: str) -> int:
    if value is not None:
        return value
    if not dist.is_initialized():
        raise RuntimeError(f"DistributedSampler: {what} not given and the default process "
                           "group has not been initialized; call "
                           "dlcore.distributed.init_process_group() first, or pass "
                           "num_replicas and rank")
    return dist.get_world_size() if what == "num_replicas" else dist.get_rank()


class DistributedSampler(Sampler[int]):
    """Indices of this rank's part of ``dataset`` (``num_replicas`` and ``rank`` default to
    the process group's). Call :meth:`set_epoch` at the start of every epoch, before making
    the DataLoader's iterator, or every epoch sees the same order.

    >>> s = DistributedSampler(range(10), num_replicas=3, rank=0, shuffle=False)
    >>> list(s)
    [0, 3, 6, 9]
    """

    def __init__(self, dataset: Sized, num_replicas: int | None = None,
                 rank: int | None = None, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False) -> None:
        num_replicas = _from_group(num_replicas, "num_replicas")
        rank = _from_group(rank, "rank")
        if not isinstance(num_replicas, int) or num_replicas < 1:
            raise ValueError(f"DistributedSampler: num_replicas must be a positive int, got "
                             f"{num_replicas!r}")
        if not isinstance(rank, int) or rank >= num_replicas or rank < 0:
            raise ValueError(f"Invalid rank {rank}, rank should be in the interval "
                             f"[0, {num_replicas - 1}]")
        self.dataset, self.num_replicas, self.rank = dataset, num_replicas, rank
        self.shuffle, self.seed, self.drop_last = shuffle, int(seed), drop_last
        self.epoch = 0
        n = len(dataset)
        if drop_last and n % num_replicas != 0:
            # the largest equal share that needs no padding
            self.num_samples = math.ceil((n - num_replicas) / num_replicas)
        else:
            self.num_samples = math.ceil(n / num_replicas)
        self.total_size = self.num_samples * num_replicas

    def __iter__(self) -> Iterator[int]:
        n = len(self.dataset)
        if self.shuffle:
            generator = np.random.Generator(np.random.PCG64(self.seed + self.epoch))
            indices = generator.permutation(n).tolist()
        else:
            indices = list(range(n))
        if not self.drop_last:
            padding = self.total_size - len(indices)
            if padding <= len(indices):
                indices += indices[:padding]
            else:
                indices += (indices * math.ceil(padding / len(indices)))[:padding]
        else:
            indices = indices[:self.total_size]
        assert len(indices) == self.total_size
        return iter(indices[self.rank:self.total_size:self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` (the same on every rank) from the next iteration on."""
        self.epoch = epoch

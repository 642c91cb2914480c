"""DistributedSampler: PyTorch's index semantics (lengths, padding from the start, drop_last,
rank striding; equal to torch's lists when not shuffling), parts that are disjoint, cover the
data and change per epoch, and the exports where PyTorch users look."""

from __future__ import annotations

import itertools

import pytest

import dlcore
from dlcore.data import DataLoader, DistributedSampler, TensorDataset

CASES = list(itertools.product([1, 5, 10, 11, 12, 13], [1, 2, 3, 4, 7], [False, True]))


def parts(n: int, replicas: int, drop_last: bool, shuffle: bool = True, seed: int = 0,
          epoch: int = 0) -> list[list[int]]:
    out = []
    for rank in range(replicas):
        sampler = DistributedSampler(range(n), replicas, rank, shuffle=shuffle, seed=seed,
                                     drop_last=drop_last)
        sampler.set_epoch(epoch)
        out.append(list(sampler))
        assert len(out[-1]) == len(sampler)
    return out


@pytest.mark.parametrize("n, replicas, drop_last", CASES)
def test_parts_are_equal_disjoint_and_cover(n: int, replicas: int, drop_last: bool) -> None:
    got = parts(n, replicas, drop_last)
    assert len({len(p) for p in got}) == 1  # every rank runs the same number of steps
    flat = [i for p in got for i in p]
    if drop_last:
        assert len(flat) == len(set(flat)) == n - n % replicas  # disjoint, the tail dropped
    else:
        assert set(flat) == set(range(n))  # covers; only the padding repeats
        assert len(flat) == -(-n // replicas) * replicas


def test_padding_repeats_indices_from_the_start_and_ranks_stride() -> None:
    assert parts(10, 4, False, shuffle=False) == [[0, 4, 8], [1, 5, 9], [2, 6, 0], [3, 7, 1]]
    assert parts(2, 5, False, shuffle=False) == [[0], [1], [0], [1], [0]]
    assert parts(10, 4, True, shuffle=False) == [[0, 4], [1, 5], [2, 6], [3, 7]]


def test_order_changes_per_epoch_and_follows_the_seed() -> None:
    e0, e1 = parts(100, 2, False, epoch=0), parts(100, 2, False, epoch=1)
    assert e0 != e1 and sorted(e0[0] + e0[1]) == sorted(e1[0] + e1[1]) == list(range(100))
    assert parts(100, 2, False, epoch=1) == e1  # the same on every rank, every time
    assert parts(100, 2, False, seed=1) != e0
    assert parts(100, 2, False, seed=1, epoch=0) == parts(100, 2, False, seed=0, epoch=1)


@pytest.mark.parametrize("n, replicas, drop_last", CASES)
def test_matches_torch(n: int, replicas: int, drop_last: bool) -> None:
    torch_data = pytest.importorskip("torch.utils.data")
    for rank in range(replicas):
        ours = DistributedSampler(range(n), replicas, rank, shuffle=False, drop_last=drop_last)
        theirs = torch_data.DistributedSampler(range(n), replicas, rank, shuffle=False,
                                               drop_last=drop_last)
        assert list(ours) == list(theirs) and len(ours) == len(theirs)
        # shuffled: other permutations (torch's generator is not NumPy's), same structure
        ours = DistributedSampler(range(n), replicas, rank, drop_last=drop_last)
        theirs = torch_data.DistributedSampler(range(n), replicas, rank, drop_last=drop_last)
        assert len(list(ours)) == len(list(theirs)) == len(ours) == len(theirs)


def test_errors_and_defaults_without_a_group() -> None:
    with pytest.raises(ValueError, match=r"Invalid rank 2, rank should be in the interval "
                                         r"\[0, 1\]"):
        DistributedSampler(range(4), num_replicas=2, rank=2)
    with pytest.raises(RuntimeError, match="init_process_group"):
        DistributedSampler(range(4))


def test_with_the_data_loader_and_under_pytorch_names() -> None:
    from dlcore.utils.data import DistributedSampler as via_utils
    from dlcore.utils.data.distributed import DistributedSampler as via_torch_path

    assert via_utils is via_torch_path is DistributedSampler
    data = TensorDataset(dlcore.arange(10))
    sampler = DistributedSampler(data, num_replicas=2, rank=1, shuffle=False)
    loader = DataLoader(data, batch_size=2, sampler=sampler)
    assert [b[0].tolist() for b in loader] == [[1, 3], [5, 7], [9]]

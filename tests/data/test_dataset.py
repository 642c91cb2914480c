"""Datasets, random_split, samplers and default_collate."""

from __future__ import annotations

from collections import namedtuple

import numpy as np
import pytest

import dlcore
from dlcore.data import (Generator, Subset, TensorDataset, default_collate, random_split)
from dlcore.data.sampler import BatchSampler, RandomSampler, numpy_generator
from dlcore.tensor import Tensor


def test_tensor_dataset_rows_and_validation() -> None:
    ds = TensorDataset(dlcore.arange(12).reshape(6, 2), np.arange(6.0))
    assert len(ds) == 6
    x, y = ds[4]
    assert x.tolist() == [8, 9] and y.item() == 4.0 and isinstance(y, Tensor)
    with pytest.raises(ValueError, match="first dimension"):
        TensorDataset(dlcore.zeros(3), dlcore.zeros(4))


def test_random_split_is_seeded_and_disjoint() -> None:
    a = random_split(range(100), [70, 20, 10], generator=3)
    b = random_split(range(100), [70, 20, 10], generator=Generator(3))
    c = random_split(range(100), [70, 20, 10], generator=4)
    assert [s.indices for s in a] == [s.indices for s in b] != [s.indices for s in c]
    assert sorted(i for s in a for i in s.indices) == list(range(100))
    assert isinstance(a[0], Subset) and a[0][5] == a[0].indices[5]
    assert [len(s) for s in random_split(range(10), [0.5, 0.3, 0.2], generator=0)] == [5, 3, 2]
    assert [len(s) for s in random_split(range(11), [0.5, 0.5], generator=0)] == [6, 5]
    with pytest.raises(ValueError, match="sum"):
        random_split(range(10), [5, 6])


def test_random_split_without_generator_follows_manual_seed() -> None:
    dlcore.manual_seed(7)
    first = random_split(range(50), [25, 25])[0].indices
    dlcore.manual_seed(7)
    assert random_split(range(50), [25, 25])[0].indices == first


def test_generator_forms() -> None:
    g = Generator().manual_seed(5)
    state = g.get_state()
    p = g.permutation(10)
    g.set_state(state)
    np.testing.assert_array_equal(g.permutation(10), p)
    np.testing.assert_array_equal(numpy_generator(5).permutation(10), p)
    rng = np.random.default_rng(1)
    assert numpy_generator(rng) is rng and numpy_generator(None) is None
    with pytest.raises(TypeError, match="generator"):
        numpy_generator("seed")


def test_random_sampler_draws_at_iter_time() -> None:
    sampler = RandomSampler(range(5), generator=0)
    order = iter(sampler)  # the permutation is fixed now, before any next()
    assert sorted(order) == [0, 1, 2, 3, 4]
    assert list(BatchSampler(range(5), 2, drop_last=False)) == [[0, 1], [2, 3], [4]]
    assert len(BatchSampler(range(5), 2, drop_last=True)) == 2
    with pytest.raises(ValueError, match="batch_size"):
        BatchSampler(range(5), 0, drop_last=False)


Point = namedtuple("Point", ["x", "label"])


def test_default_collate_structures() -> None:
    samples = [{"img": np.full((2, 2), i, np.float32), "meta": (i, float(i), f"n{i}", True)}
               for i in range(3)]
    batch = default_collate(samples)
    assert batch["img"].shape == (3, 2, 2) and batch["img"].dtype == np.float32
    ints, floats, names, flags = batch["meta"]
    assert isinstance(batch["meta"], tuple)
    assert ints.dtype == np.int64 and ints.tolist() == [0, 1, 2]
    assert floats.dtype == np.float64 and names == ["n0", "n1", "n2"]
    assert flags.dtype == np.bool_
    points = default_collate([Point(dlcore.ones(2), 1), Point(dlcore.zeros(2), 0)])
    assert isinstance(points, Point) and points.x.shape == (2, 2)
    assert default_collate([[1, 2], [3, 4]])[1].tolist() == [2, 4]
    assert default_collate([np.int32(1), np.int32(2)]).dtype == np.int32


def test_default_collate_errors() -> None:
    with pytest.raises(ValueError, match="empty"):
        default_collate([])
    with pytest.raises(ValueError, match="shapes"):
        default_collate([dlcore.zeros(2), dlcore.zeros(3)])
    with pytest.raises(ValueError, match="lengths"):
        default_collate([(1, 2), (1,)])
    with pytest.raises(TypeError, match="object"):
        default_collate([object(), object()])

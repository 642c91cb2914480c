"""Indexing t[...] (ints, slices, None, Ellipsis, integer tensors, boolean masks),
t[idx] = v, gather, scatter_add, index_select, masked_fill."""

from __future__ import annotations

import numpy as np
import pytest
from op_check import check, grad_ok, on, rand

import dlcore

X_SHAPE = (3, 4, 5)
_IDX = np.array([2, 0, 2, 1])
_MASK = rand(*X_SHAPE, seed=9) > 0

# name, index built on a device (device -> index), same index for NumPy
INDEXES = [
    ("int", lambda d: 1, 1),
    ("neg_int", lambda d: -1, -1),
    ("slice", lambda d: slice(1, 3), slice(1, 3)),
    ("step_slice", lambda d: (slice(None), slice(None, None, 2)),
     (slice(None), slice(None, None, 2))),
    ("int_slice", lambda d: (0, slice(1, None), 2), (0, slice(1, None), 2)),
    ("none", lambda d: (None, 1), (None, 1)),
    ("ellipsis", lambda d: (Ellipsis, 1), (Ellipsis, 1)),
    ("ellipsis_none", lambda d: (1, ..., None), (1, ..., None)),
    ("int_tensor", lambda d: dlcore.tensor(_IDX, device=d), _IDX),
    ("int_tensor_dim1", lambda d: (slice(None), dlcore.tensor(_IDX[:3], device=d)),
     (slice(None), _IDX[:3])),
    ("two_int_tensors", lambda d: (dlcore.tensor([0, 2, 2], device=d),
                                   dlcore.tensor([1, 1, 3], device=d)),
     (np.array([0, 2, 2]), np.array([1, 1, 3]))),
    ("int_tensor_and_none", lambda d: (None, dlcore.tensor(_IDX, device=d)), (None, _IDX)),
    ("list", lambda d: [0, 0, 2], [0, 0, 2]),
    ("bool_mask", lambda d: dlcore.tensor(_MASK, device=d), _MASK),
    ("bool_mask_rows", lambda d: dlcore.tensor(np.array([True, False, True]), device=d),
     np.array([True, False, True])),
]
IDS = [i[0] for i in INDEXES]


@pytest.mark.parametrize("name,index,np_index", INDEXES, ids=IDS)
def test_getitem_forward(device, name, index, np_index):
    x = rand(*X_SHAPE, seed=1)
    check(on(device, x)[index(device)], x[np_index])


@pytest.mark.parametrize("name,index,np_index", INDEXES, ids=IDS)
def test_getitem_gradcheck(device, name, index, np_index):
    idx = index(device)
    assert grad_ok(lambda t: t[idx], [rand(*X_SHAPE, seed=2)], device)


def test_getitem_repeated_indices_accumulate_gradient(device):
    t = on(device, np.zeros(4), requires_grad=True)
    t[dlcore.tensor([1, 1, 3, 1], device=device)].sum().backward()
    expected = np.zeros(4)
    for i in [1, 1, 3, 1]:
        expected[i] += 1.0
    check(t.grad, expected)


def test_getitem_out_of_range_names_shape(device):
    with pytest.raises(IndexError, match=r"\(3, 4\)"):
        on(device, rand(3, 4))[5]


@pytest.mark.parametrize("name,index,np_index", INDEXES, ids=IDS)
def test_setitem_forward(device, name, index, np_index):
    x = rand(*X_SHAPE, seed=3)
    t = on(device, x)
    t[index(device)] = 7.5
    x[np_index] = 7.5
    check(t, x)


def test_setitem_with_tensor_value_and_gradients(device):
    x, v = rand(3, 4, seed=4), rand(4, seed=5)

    def fn(base, value):
        out = base * 1.0  # a non-leaf to write into
        out[1] = value
        return out

    check(fn(on(device, x), on(device, v)), np.vstack([x[0], v, x[2]]))
    assert grad_ok(fn, [x, v], device)

    def fn_mask(base, value):
        out = base * 1.0
        out[:, 1:3] = value * 2
        return out

    assert grad_ok(fn_mask, [x, rand(3, 2, seed=6)], device)


def test_setitem_broadcast_value(device):
    x = rand(3, 4, seed=7)
    t = on(device, x)
    t[:, 0] = on(device, np.array([1.0, 2.0, 3.0]))
    x[:, 0] = [1.0, 2.0, 3.0]
    check(t, x)


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_gather(device, dim):
    x = rand(3, 4, seed=8)
    rng = np.random.default_rng(0)
    shape = [3, 4]
    shape[dim] = 5
    idx = rng.integers(0, x.shape[dim], shape)
    d = dim % 2
    expected = np.empty(shape)
    for i in range(shape[0]):
        for j in range(shape[1]):
            expected[i, j] = x[idx[i, j], j] if d == 0 else x[i, idx[i, j]]
    it = on(device, idx)
    check(on(device, x).gather(dim, it), expected)
    assert grad_ok(lambda t: dlcore.gather(t, dim, it), [x], device)


@pytest.mark.parametrize("dim", [0, 1])
def test_scatter_add_accumulates_repeated_indices(device, dim):
    x, src = rand(3, 4, seed=10), rand(3, 4, seed=11)
    idx = np.array([[0, 1, 2, 0], [0, 0, 1, 1], [2, 2, 2, 0]])
    idx = idx if dim == 1 else idx % 3
    expected = x.copy()
    for i in range(3):
        for j in range(4):
            if dim == 0:
                expected[idx[i, j], j] += src[i, j]
            else:
                expected[i, idx[i, j]] += src[i, j]
    it = on(device, idx)
    check(on(device, x).scatter_add(dim, it, on(device, src)), expected)
    assert grad_ok(lambda a, b: dlcore.scatter_add(a, dim, it, b), [x, src], device)


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_index_select(device, dim):
    x = rand(3, 4, seed=12)
    idx = np.array([2, 0, 2])
    it = on(device, idx)
    check(on(device, x).index_select(dim, it), np.take(x, idx, axis=dim))
    assert grad_ok(lambda t: dlcore.index_select(t, dim, it), [x], device)


def test_masked_fill(device):
    x = rand(3, 4, seed=13)
    mask = np.array([True, False, True, False])  # broadcasts over rows
    m = on(device, mask)
    check(on(device, x).masked_fill(m, -1.0), np.where(mask, -1.0, x))
    assert grad_ok(lambda t: t.masked_fill(m, 0.5), [x], device)
    with pytest.raises(TypeError, match="bool"):
        on(device, x).masked_fill(on(device, mask.astype(np.int64)), 0.0)


def test_index_tensor_on_other_device_raises():
    with pytest.raises(RuntimeError, match="emu.*cpu|cpu.*emu"):
        dlcore.ones(3)[dlcore.tensor([0], device="emu")]

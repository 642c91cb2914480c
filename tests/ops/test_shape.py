"""Shape ops: reshape/view flatten unflatten squeeze unsqueeze transpose permute expand
repeat cat stack split chunk pad flip, forward against NumPy and gradcheck."""

from __future__ import annotations

import numpy as np
import pytest
from op_check import check, grad_ok, on, rand

import dlcore

# name, dlcore fn (one tensor), NumPy reference
SHAPE_OPS = [
    ("reshape", lambda t: t.reshape(4, 6), lambda x: x.reshape(4, 6)),
    ("reshape_tuple_neg", lambda t: t.reshape((-1, 3)), lambda x: x.reshape(-1, 3)),
    ("view", lambda t: t.view(2, -1), lambda x: x.reshape(2, -1)),
    ("flatten", lambda t: t.flatten(), lambda x: x.reshape(-1)),
    ("flatten_1", lambda t: t.flatten(1), lambda x: x.reshape(2, 12)),
    ("flatten_0_1", lambda t: dlcore.flatten(t, 0, 1), lambda x: x.reshape(6, 4)),
    ("unflatten", lambda t: t.unflatten(2, (2, 2)), lambda x: x.reshape(2, 3, 2, 2)),
    ("unsqueeze", lambda t: t.unsqueeze(1), lambda x: np.expand_dims(x, 1)),
    ("unsqueeze_neg", lambda t: t.unsqueeze(-1), lambda x: np.expand_dims(x, -1)),
    ("squeeze", lambda t: t.reshape(2, 1, 3, 1, 4).squeeze(),
     lambda x: x.reshape(2, 1, 3, 1, 4).squeeze()),
    ("squeeze_dim", lambda t: t.reshape(2, 1, 3, 1, 4).squeeze(1),
     lambda x: x.reshape(2, 1, 3, 1, 4).squeeze(1)),
    ("squeeze_non1", lambda t: t.squeeze(0), lambda x: x),
    ("transpose", lambda t: t.transpose(0, 2), lambda x: np.swapaxes(x, 0, 2)),
    ("transpose_neg", lambda t: dlcore.transpose(t, -1, -2), lambda x: np.swapaxes(x, -1, -2)),
    ("permute", lambda t: t.permute(2, 0, 1), lambda x: x.transpose(2, 0, 1)),
    ("permute_tuple", lambda t: t.permute((1, 2, 0)), lambda x: x.transpose(1, 2, 0)),
    ("T", lambda t: t.T, lambda x: x.transpose(2, 1, 0)),
    ("expand", lambda t: t[:, :1].expand(2, 3, 4),
     lambda x: np.broadcast_to(x[:, :1], (2, 3, 4))),
    ("expand_new_dims", lambda t: t.expand(5, -1, -1, -1),
     lambda x: np.broadcast_to(x, (5, 2, 3, 4))),
    ("repeat", lambda t: t.repeat(2, 1, 3), lambda x: np.tile(x, (2, 1, 3))),
    ("repeat_more_dims", lambda t: t.repeat(2, 1, 1, 2), lambda x: np.tile(x, (2, 1, 1, 2))),
    ("flip", lambda t: t.flip(0), lambda x: np.flip(x, 0)),
    ("flip_dims", lambda t: dlcore.flip(t, (0, 2)), lambda x: np.flip(x, (0, 2))),
    ("pad", lambda t: dlcore.pad(t, (1, 2)), lambda x: np.pad(x, ((0, 0), (0, 0), (1, 2)))),
    ("pad_2d_value", lambda t: dlcore.pad(t, (0, 1, 2, 0), value=1.5),
     lambda x: np.pad(x, ((0, 0), (2, 0), (0, 1)), constant_values=1.5)),
    ("pad_negative_crops", lambda t: dlcore.pad(t, (-1, 1, 1, -1)),
     lambda x: np.pad(x, ((0, 0), (1, 0), (0, 1)))[:, :-1, 1:]),
    ("contiguous", lambda t: t.T.contiguous(), lambda x: x.T.copy()),
    ("clone", lambda t: t.clone(), lambda x: x.copy()),
]
IDS = [s[0] for s in SHAPE_OPS]


@pytest.mark.parametrize("name,fn,ref", SHAPE_OPS, ids=IDS)
def test_shape_op_forward(device, name, fn, ref):
    x = rand(2, 3, 4, seed=1)
    check(fn(on(device, x)), ref(x))
    x32 = x.astype(np.float32)
    check(fn(on(device, x32)), ref(x32))


@pytest.mark.parametrize("name,fn,ref", SHAPE_OPS, ids=IDS)
def test_shape_op_gradcheck(device, name, fn, ref):
    assert grad_ok(fn, [rand(2, 3, 4, seed=2)], device)


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_cat(device, dim):
    shapes = [[2, 3, 4], [2, 3, 4], [2, 3, 4]]
    for i, s in enumerate(shapes):
        s[dim] = i + 1
    xs = [rand(*s, seed=i) for i, s in enumerate(shapes)]
    check(dlcore.cat([on(device, x) for x in xs], dim=dim), np.concatenate(xs, axis=dim))
    assert grad_ok(lambda *ts: dlcore.cat(ts, dim), xs, device)


def test_cat_promotes_and_checks_shapes(device):
    a, b = rand(2, 2).astype(np.float32), rand(1, 2)
    check(dlcore.cat([on(device, a), on(device, b)]), np.concatenate([a, b]), dtype=np.float64)
    with pytest.raises(RuntimeError, match=r"cat.*\(2, 2\).*\(2, 3\)"):
        dlcore.cat([on(device, a), on(device, rand(2, 3))])


@pytest.mark.parametrize("dim", [0, 1, 2, -1])
def test_stack(device, dim):
    xs = [rand(2, 3, seed=i) for i in range(3)]
    check(dlcore.stack([on(device, x) for x in xs], dim=dim), np.stack(xs, axis=dim))
    assert grad_ok(lambda *ts: dlcore.stack(ts, dim), xs, device)
    with pytest.raises(RuntimeError, match="stack"):
        dlcore.stack([on(device, xs[0]), on(device, rand(3, 2))])


@pytest.mark.parametrize("sections,dim", [(2, 0), (2, 1), ([1, 3], 1), ([2, 0, 2], -1), (3, 2)])
def test_split(device, sections, dim):
    x = rand(3, 4, 4, seed=3)
    parts = on(device, x).split(sections, dim)
    if isinstance(sections, int):
        bounds = list(range(sections, x.shape[dim], sections))
    else:
        bounds = list(np.cumsum(sections)[:-1])
    expected = np.split(x, bounds, axis=dim)
    assert len(parts) == len(expected)
    for p, e in zip(parts, expected):
        check(p, e)
    # gradient of a weighted combination of all parts
    assert grad_ok(lambda t: tuple(t.split(sections, dim)), [x], device)


@pytest.mark.parametrize("n,chunks", [(6, 3), (5, 2), (7, 3), (2, 4)])
def test_chunk(device, n, chunks):
    x = rand(n, 2, seed=4)
    parts = on(device, x).chunk(chunks)
    size = -(-n // chunks)
    expected = [x[i:i + size] for i in range(0, n, size)]
    assert [tuple(p.shape) for p in parts] == [e.shape for e in expected]
    for p, e in zip(parts, expected):
        check(p, e)
    assert grad_ok(lambda t: t.chunk(chunks), [x], device)


def test_pad_non_constant_modes_forward(device):
    x = rand(2, 4, seed=5)
    for mode, np_mode in [("reflect", "reflect"), ("replicate", "edge"), ("circular", "wrap")]:
        check(dlcore.pad(on(device, x), (2, 1), mode=mode), np.pad(x, ((0, 0), (2, 1)),
                                                                  mode=np_mode))


def test_reshape_errors_name_shapes(device):
    with pytest.raises(RuntimeError, match=r"reshape.*\(2, 3\)"):
        on(device, rand(2, 3)).reshape(4, 2)
    with pytest.raises(RuntimeError, match="expand"):
        on(device, rand(2, 3)).expand(4, 3)
    with pytest.raises(RuntimeError, match="permute"):
        on(device, rand(2, 3)).permute(0, 0)


def test_views_share_data_with_base(device):
    t = on(device, np.zeros((2, 3)))
    v = t.view(6)
    with dlcore.no_grad():
        v[1] = 5.0
    assert t.numpy()[0, 1] == 5.0


@pytest.mark.parametrize("shape,dim,chunks", [((0, 2), 0, 3), ((2, 0), 1, 2), ((0,), 0, 1)])
def test_chunk_and_unbind_of_an_empty_dim_as_torch(device, shape, dim, chunks):
    """PyTorch: chunk of a size-0 dim gives ``chunks`` empty pieces of the input's shape
    (torch.zeros(0, 2).chunk(3) is three (0, 2) tensors), unbind gives none."""
    x = on(device, np.zeros(shape))
    assert [tuple(p.shape) for p in x.chunk(chunks, dim)] == [shape] * chunks
    assert dlcore.unbind(x, dim) == ()


def test_unbind(device):
    x = rand(3, 2, seed=6)
    for p, e in zip(dlcore.unbind(on(device, x), 1), [x[:, 0], x[:, 1]]):
        check(p, e)

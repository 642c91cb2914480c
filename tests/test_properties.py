"""Property tests (hypothesis): binary ops over random broadcastable shapes, reductions
over random dims, forward against NumPy and gradients summed to operand shapes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import mutually_broadcastable_shapes
from op_check import check, on

import dlcore
from dlcore.testing import gradcheck

SETTINGS = settings(max_examples=40, deadline=None)
# cuda is left to the per-op tests; properties check the shared NumPy logic on cpu and emu
DEVICES = ["cpu", "emu"]

BINARY = {
    "add": (lambda a, b: a + b, np.add),
    "sub": (lambda a, b: a - b, np.subtract),
    "mul": (lambda a, b: a * b, np.multiply),
    "div": (lambda a, b: a / b, np.divide),
    "maximum": (dlcore.maximum, np.maximum),
}


def _data(shape: tuple, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0.5, 2.0, shape) * rng.choice([-1.0, 1.0], shape)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", sorted(BINARY))
@SETTINGS
@given(shapes=mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=3),
       seed=st.integers(0, 2**16))
def test_binary_broadcasting(device, op, shapes, seed):
    fn, ref = BINARY[op]
    sa, sb = shapes.input_shapes
    a, b = _data(sa, seed), _data(sb, seed + 1)
    check(fn(on(device, a), on(device, b)), ref(a, b))
    ta, tb = on(device, a, requires_grad=True), on(device, b, requires_grad=True)
    out = fn(ta, tb)
    assert out.shape == shapes.result_shape
    out.sum().backward()
    assert ta.grad.shape == sa and tb.grad.shape == sb
    if op in ("add", "sub"):  # d/da = 1 everywhere: gradient counts the broadcast copies
        copies = int(np.prod(shapes.result_shape)) // max(int(np.prod(sa)), 1)
        check(ta.grad, np.full(sa, float(copies)))


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=30, deadline=None)
@given(shapes=mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=3),
       op=st.sampled_from(["mul", "div"]), seed=st.integers(0, 2**16))
def test_binary_broadcasting_gradcheck(device, shapes, op, seed):
    sa, sb = shapes.input_shapes
    a = on(device, _data(sa, seed), requires_grad=True)
    b = on(device, _data(sb, seed + 1), requires_grad=True)
    assert gradcheck(BINARY[op][0], [a, b])


@st.composite
def _shape_and_dims(draw: st.DrawFn) -> tuple[tuple, object]:
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=4)))
    nd = len(shape)
    dims = draw(st.lists(st.integers(-nd, nd - 1), min_size=1, max_size=nd,
                         unique_by=lambda d: d % nd))
    dim = dims[0] if len(dims) == 1 and draw(st.booleans()) else tuple(dims)
    return shape, dim


REDUCTIONS = {
    "sum": (lambda t, d, k: t.sum(dim=d, keepdim=k), lambda x, a, k: x.sum(axis=a, keepdims=k)),
    "mean": (lambda t, d, k: t.mean(dim=d, keepdim=k),
             lambda x, a, k: x.mean(axis=a, keepdims=k)),
    "amax": (lambda t, d, k: t.amax(dim=d, keepdim=k), lambda x, a, k: x.max(axis=a, keepdims=k)),
    "amin": (lambda t, d, k: t.amin(dim=d, keepdim=k), lambda x, a, k: x.min(axis=a, keepdims=k)),
    "var": (lambda t, d, k: t.var(dim=d, keepdim=k, unbiased=False),
            lambda x, a, k: x.var(axis=a, keepdims=k)),
    "logsumexp": (lambda t, d, k: t.logsumexp(dim=d, keepdim=k),
                  lambda x, a, k: np.log(np.exp(x).sum(axis=a, keepdims=k))),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", sorted(REDUCTIONS))
@SETTINGS
@given(shape_dim=_shape_and_dims(), keepdim=st.booleans(), seed=st.integers(0, 2**16))
def test_reductions_over_random_dims(device, op, shape_dim, keepdim, seed):
    shape, dim = shape_dim
    fn, ref = REDUCTIONS[op]
    x = np.random.default_rng(seed).standard_normal(shape)
    axis = tuple(dim) if isinstance(dim, tuple) else dim
    check(fn(on(device, x), dim, keepdim), ref(x, axis, keepdim))
    t = on(device, x, requires_grad=True)
    fn(t, dim, keepdim).sum().backward()
    assert t.grad.shape == shape
    if op == "sum":
        check(t.grad, np.ones(shape))
    if op == "mean":
        n = int(np.prod([shape[d] for d in ((dim,) if isinstance(dim, int) else dim)]))
        check(t.grad, np.full(shape, 1.0 / n))


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=30, deadline=None)
@given(shape_dim=_shape_and_dims(), keepdim=st.booleans(),
       op=st.sampled_from(["sum", "mean", "var", "logsumexp", "amax"]),
       seed=st.integers(0, 2**16))
def test_reductions_gradcheck_over_random_dims(device, shape_dim, keepdim, op, seed):
    shape, dim = shape_dim
    x = np.random.default_rng(seed).standard_normal(shape)  # continuous: no amax ties
    t = on(device, x, requires_grad=True)
    assert gradcheck(lambda a: REDUCTIONS[op][0](a, dim, keepdim), [t])

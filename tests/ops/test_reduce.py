"""Reductions (sum mean prod max min amax amin argmax argmin var std logsumexp) over
dim None/int/negative/tuple with keepdim, max/min(dim) namedtuples, softmax/log_softmax."""

from __future__ import annotations

import numpy as np
import pytest
from op_check import check, grad_ok, gradgrad_ok, on, rand

import dlcore

FLOATS = [np.float32, np.float64]
DIMS = [None, 0, -1, (0, 2), (1,), (-1, 0)]


def _np_logsumexp(x: np.ndarray, axis: object, keepdims: bool) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=axis)


# name, dlcore call (t, dim, keepdim), NumPy reference (x, axis, keepdims)
REDUCTIONS = [
    ("sum", lambda t, d, k: t.sum(dim=d, keepdim=k), lambda x, a, k: x.sum(axis=a, keepdims=k)),
    ("mean", lambda t, d, k: t.mean(dim=d, keepdim=k), lambda x, a, k: x.mean(axis=a, keepdims=k)),
    ("amax", lambda t, d, k: dlcore.amax(t, dim=() if d is None else d, keepdim=k),
     lambda x, a, k: x.max(axis=a, keepdims=k)),
    ("amin", lambda t, d, k: t.amin(dim=() if d is None else d, keepdim=k),
     lambda x, a, k: x.min(axis=a, keepdims=k)),
    ("var", lambda t, d, k: t.var(dim=d, keepdim=k),
     lambda x, a, k: x.var(axis=a, ddof=1, keepdims=k)),
    ("var_biased", lambda t, d, k: t.var(dim=d, keepdim=k, unbiased=False),
     lambda x, a, k: x.var(axis=a, ddof=0, keepdims=k)),
    ("std", lambda t, d, k: t.std(dim=d, keepdim=k),
     lambda x, a, k: x.std(axis=a, ddof=1, keepdims=k)),
    ("std_correction0", lambda t, d, k: dlcore.std(t, dim=d, keepdim=k, correction=0),
     lambda x, a, k: x.std(axis=a, ddof=0, keepdims=k)),
    ("logsumexp", lambda t, d, k: t.logsumexp(dim=d, keepdim=k), _np_logsumexp),
]
IDS = [r[0] for r in REDUCTIONS]


def _np_axis(dim: object) -> object:
    return tuple(dim) if isinstance(dim, tuple) else dim


@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("dim", DIMS, ids=str)
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("name,fn,ref", REDUCTIONS, ids=IDS)
def test_reduction_forward(device, name, fn, ref, dtype, dim, keepdim):
    x = rand(2, 3, 4, seed=1).astype(dtype)
    check(fn(on(device, x), dim, keepdim), ref(x.astype(np.float64), _np_axis(dim), keepdim),
          dtype=dtype)


@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("dim", DIMS, ids=str)
@pytest.mark.parametrize("name,fn,ref", REDUCTIONS, ids=IDS)
def test_reduction_gradcheck(device, name, fn, ref, dim, keepdim):
    # distinct values: amax/amin are differentiable away from ties
    x = rand(2, 3, 4, seed=2)
    assert grad_ok(lambda t: fn(t, dim, keepdim), [x], device)


@pytest.mark.parametrize("name", ["sum", "mean", "var", "std", "logsumexp"])
def test_reduction_gradgradcheck(device, name):
    fn = REDUCTIONS[IDS.index(name)][1]
    assert gradgrad_ok(lambda t: fn(t, (0, 2), False), [rand(2, 3, 2, seed=3)], device)


@pytest.mark.parametrize("dim", [None, 0, 1, -1])
@pytest.mark.parametrize("keepdim", [False, True])
def test_prod(device, dim, keepdim):
    x = rand(3, 4, seed=4)
    check(dlcore.prod(on(device, x), dim=dim, keepdim=keepdim),
          np.prod(x, axis=dim, keepdims=keepdim))
    assert grad_ok(lambda t: t.prod(dim=dim, keepdim=keepdim), [x], device)


@pytest.mark.parametrize("zeros", [[(0, 1)], [(0, 1), (0, 3)], [(0, 1), (2, 2)]])
@pytest.mark.parametrize("dim", [None, 1])
def test_prod_gradient_with_zeros(device, zeros, dim):
    """Product of the other elements, by an obvious loop (one zero, two zeros)."""
    x = rand(3, 4, seed=5)
    for z in zeros:
        x[z] = 0.0
    t = on(device, x, requires_grad=True)
    t.prod(dim=dim).sum().backward()
    expected = np.empty_like(x)
    for i in range(3):
        for j in range(4):
            group = x.ravel().tolist() if dim is None else x[i].tolist()
            k = i * 4 + j if dim is None else j
            expected[i, j] = np.prod(group[:k] + group[k + 1:])
    check(t.grad, expected)


def test_sum_of_ints_is_int64_and_of_bools_counts(device):
    check(on(device, np.arange(6, dtype=np.int32).reshape(2, 3)).sum(dim=0),
          np.array([3, 5, 7], np.int64))
    check(on(device, np.array([True, False, True])).sum(), np.array(2, np.int64))


def test_mean_of_int_tensor_raises(device):
    with pytest.raises(RuntimeError, match="mean"):
        on(device, np.arange(3)).mean()


@pytest.mark.parametrize("is_max", [True, False])
@pytest.mark.parametrize("dim", [0, 1, -1])
@pytest.mark.parametrize("keepdim", [False, True])
def test_max_min_dim_returns_values_and_indices(device, is_max, dim, keepdim):
    x = rand(3, 4, seed=6)
    t = on(device, x)
    out = t.max(dim, keepdim=keepdim) if is_max else dlcore.min(t, dim=dim, keepdim=keepdim)
    values, indices = out
    assert out.values is values and out.indices is indices
    np_arg = np.argmax if is_max else np.argmin
    np_val = np.max if is_max else np.min
    check(values, np_val(x, axis=dim, keepdims=keepdim))
    check(indices, np.expand_dims(np_arg(x, axis=dim), dim) if keepdim else np_arg(x, axis=dim),
          dtype=np.int64)
    assert grad_ok(lambda a: (a.max(dim, keepdim) if is_max else a.min(dim, keepdim)).values,
                   [x], device)


def test_max_dim_gradient_goes_to_returned_index(device):
    x = np.array([[1.0, 3.0, 3.0], [2.0, 0.0, 2.0]])
    t = on(device, x, requires_grad=True)
    values, indices = t.max(dim=1)
    values.sum().backward()
    expected = np.zeros_like(x)
    for row, col in enumerate(indices.tolist()):
        expected[row, col] = 1.0
    check(t.grad, expected)
    assert indices.tolist() == np.argmax(x, axis=1).tolist()


def test_full_max_min(device):
    x = rand(3, 4, seed=7)
    check(on(device, x).max(), np.max(x))
    check(dlcore.min(on(device, x)), np.min(x))
    assert grad_ok(lambda t: t.max(), [x], device)


def test_amax_ties_share_gradient(device):
    t = on(device, np.array([1.0, 5.0, 5.0, 2.0]), requires_grad=True)
    t.amax().backward()
    check(t.grad, np.array([0.0, 0.5, 0.5, 0.0]))


@pytest.mark.parametrize("fn,ref", [(dlcore.argmax, np.argmax), (dlcore.argmin, np.argmin)])
@pytest.mark.parametrize("dim", [None, 0, 1, -1])
@pytest.mark.parametrize("keepdim", [False, True])
def test_argmax_argmin(device, fn, ref, dim, keepdim):
    x = rand(3, 4, seed=8)
    expected = ref(x, axis=dim, keepdims=keepdim) if dim is not None else (
        np.reshape(ref(x), (1, 1)) if keepdim else ref(x))
    out = fn(on(device, x), dim=dim, keepdim=keepdim)
    check(out, np.asarray(expected, np.int64))
    assert not out.requires_grad


def test_var_is_unbiased_by_default(device):
    x = np.array([1.0, 2.0, 4.0])
    mean = sum(x) / 3
    check(on(device, x).var(), np.array(sum((v - mean) ** 2 for v in x) / 2))


def test_reduction_dim_out_of_range(device):
    with pytest.raises(IndexError, match="sum"):
        on(device, rand(2, 3)).sum(dim=2)


@pytest.mark.parametrize("fn,ref", [
    (dlcore.softmax, lambda x, d: np.exp(x) / np.exp(x).sum(axis=d, keepdims=True)),
    (dlcore.log_softmax, lambda x, d: x - np.log(np.exp(x).sum(axis=d, keepdims=True))),
])
@pytest.mark.parametrize("dim", [0, 1, -1])
@pytest.mark.parametrize("dtype", FLOATS)
def test_softmax_family(device, fn, ref, dim, dtype):
    x = rand(2, 3, 4, seed=9).astype(dtype)
    check(fn(on(device, x), dim), ref(x.astype(np.float64), dim), dtype=dtype)
    assert grad_ok(lambda t: fn(t, dim), [rand(2, 3, 2, seed=10)], device)


@pytest.mark.parametrize("fn", [dlcore.softmax, dlcore.log_softmax])
def test_softmax_family_gradgradcheck(device, fn):
    assert gradgrad_ok(lambda t: fn(t, -1), [rand(2, 3, seed=11)], device)


def test_softmax_is_stable_for_large_inputs(device):
    x = np.array([[1000.0, 1001.0, 1002.0], [-1000.0, -1000.0, -1000.0]], np.float32)
    shifted = x - x.max(axis=1, keepdims=True)
    e = np.exp(shifted.astype(np.float64))
    check(dlcore.softmax(on(device, x), dim=1), e / e.sum(axis=1, keepdims=True),
          dtype=np.float32)
    check(dlcore.log_softmax(on(device, x), dim=1),
          shifted - np.log(e.sum(axis=1, keepdims=True)), dtype=np.float32)
    check(on(device, x).logsumexp(dim=1),
          x.max(axis=1).astype(np.float64) + np.log(e.sum(axis=1)), dtype=np.float32)


def test_var_without_degrees_of_freedom_is_nan_not_a_crash(device):
    """Regression: Var.backward called the module's own ``max`` op on ints. PyTorch's
    UserWarning on every device (it came from NumPy, so cuda gave none: seen on an H200)."""
    t = on(device, np.array([3.0]), requires_grad=True)
    with np.errstate(all="ignore"), pytest.warns(UserWarning, match="degrees of freedom"):
        v = t.var()
        assert np.isnan(v.item())
        v.backward()
    assert np.isnan(t.grad.numpy()).all()


@pytest.mark.parametrize("dtype,n", [(dlcore.bfloat16, 257), (dlcore.float16, 2049)])
def test_amax_backward_counts_many_half_ties_exactly(dtype, n) -> None:
    """amax splits the gradient evenly over ties, counted and divided in float32 as in
    PyTorch: 257 tied bfloat16 ones each get 1/257 rounded once (a bfloat16 count of 257
    is 256)."""
    import ml_dtypes
    np_half = ml_dtypes.bfloat16 if dtype == dlcore.bfloat16 else np.float16
    x = dlcore.ones(n, dtype=dtype, requires_grad=True)
    x.amax().backward()
    assert x.grad.dtype == dtype
    np.testing.assert_array_equal(x.grad.numpy(), np.full(n, np.float32(1) / n).astype(np_half))

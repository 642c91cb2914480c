"""Behaviour pinned down for mutation-testing survivors (mutmut over the elementwise, index,
linalg, loss, pool, reduce, shape and philox modules): each test checks something no test of
the suite checked before, against an independent reference (NumPy, PyTorch's documented
semantics, or values worked out by hand)."""

from __future__ import annotations

import numpy as np
import pytest

import dlcore
import dlcore.nn.functional as F
from dlcore.device import Device
from dlcore.ops import philox_cpu
from dlcore.ops.philox_cuda import PhiloxStream

EMU = Device("emu")

# ---- elementwise --------------------------------------------------------------------------


def test_unary_ops_compute_their_function_elementwise() -> None:
    """The functions built by elementwise._unary (exp, log, neg, sqrt, sigmoid, relu, ...)
    apply their function to the input, as NumPy does, and stay differentiable."""
    a = np.array([0.25, 1.0, 2.5], dtype=np.float32)
    x = dlcore.tensor(a, requires_grad=True)
    for fn, want in [(dlcore.ops.exp, np.exp(a)), (dlcore.ops.log, np.log(a)),
                     (dlcore.ops.neg, -a), (dlcore.ops.sqrt, np.sqrt(a)),
                     (dlcore.ops.sigmoid, 1 / (1 + np.exp(-a))), (dlcore.ops.relu, a)]:
        np.testing.assert_allclose(fn(x).detach().numpy(), want, rtol=1e-6)
    dlcore.ops.exp(x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np.exp(a), rtol=1e-6)


def test_logical_or_is_numpys_logical_or() -> None:
    """logical_or (and the | operator) of two bool tensors is NumPy's logical_or."""
    a = np.array([True, True, False, False])
    b = np.array([True, False, True, False])
    ta, tb = dlcore.tensor(a), dlcore.tensor(b)
    want = np.logical_or(a, b)
    np.testing.assert_array_equal(dlcore.ops.logical_or(ta, tb).numpy(), want)
    np.testing.assert_array_equal((ta | tb).numpy(), want)


def test_pow_with_a_constant_exponent_tensor_under_anomaly_mode() -> None:
    """a ** b with b a tensor that needs no gradient backpropagates under detect_anomaly (the
    gradient checks see no gradient for b) and gives d/da = b * a^(b-1)."""
    x = dlcore.tensor([1.5, 2.0], requires_grad=True)
    b = dlcore.tensor([2.0, 3.0])
    with dlcore.autograd.detect_anomaly():
        (x ** b).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [2 * 1.5, 3 * 2.0 ** 2], rtol=1e-6)


def test_sub_does_not_flag_a_gradient_of_a_constant_under_anomaly_mode() -> None:
    """a - b with b a broadcast constant: under detect_anomaly a large but finite upstream
    gradient passes (its sum over b's broadcast would overflow float32, but b needs no
    gradient, so none is formed); a.grad is the upstream gradient."""
    a = dlcore.tensor(np.zeros(2, np.float32), requires_grad=True)
    b = dlcore.tensor(np.float32(1.0))
    big = np.full(2, 3e38, np.float32)
    with dlcore.autograd.detect_anomaly():
        (a - b).backward(dlcore.tensor(big))
    np.testing.assert_array_equal(a.grad.numpy(), big)


# ---- index --------------------------------------------------------------------------------


def test_scatter_add_gradient_of_a_src_larger_than_index() -> None:
    """scatter_add reads only the part of src the index covers (PyTorch's rule), so the
    gradient w.r.t. src is the upstream gradient at the scattered positions there and zero
    in src's uncovered entries; worked out by hand."""
    src = dlcore.tensor(np.ones((2, 3)), requires_grad=True)
    index = dlcore.tensor([[0, 2], [1, 0]])
    out = dlcore.zeros(2, 3, dtype=dlcore.float64).scatter_add(1, index, src)
    np.testing.assert_array_equal(out.detach().numpy(), [[1, 0, 1], [1, 1, 0]])
    w = dlcore.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=dlcore.float64)
    (out * w).sum().backward()
    assert src.grad.shape == (2, 3)
    np.testing.assert_array_equal(src.grad.numpy(), [[1, 3, 0], [5, 4, 0]])


# ---- linalg -------------------------------------------------------------------------------


def test_norm_with_an_ord_and_an_int_dim_is_a_vector_norm_along_that_dim() -> None:
    """linalg.norm(x, ord, dim=int) of a 2-D input is the vector ord-norm along dim only (as
    numpy.linalg.norm(x, ord, axis=dim)), keepdim keeping that dim."""
    a = np.array([[3.0, -4.0, 1.0], [0.5, 2.0, -2.0]])
    x = dlcore.tensor(a)
    for ord in (1, 3, np.inf):
        for dim in (0, 1, -1):
            np.testing.assert_allclose(dlcore.linalg.norm(x, ord, dim=dim).numpy(),
                                       np.linalg.norm(a, ord, axis=dim), rtol=1e-12)
    got = dlcore.linalg.norm(x, 1, dim=1, keepdim=True)
    np.testing.assert_allclose(got.numpy(), np.linalg.norm(a, 1, axis=1, keepdims=True))


# ---- loss ---------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["nll_loss", "cross_entropy"])
def test_class_index_target_on_another_device_is_a_clear_error(op: str) -> None:
    """A class-index target on another device than the input raises a RuntimeError naming
    the op and both devices."""
    x = dlcore.tensor([[0.1, 2.0]])
    target = dlcore.tensor([1], device=EMU)
    with pytest.raises(RuntimeError, match=rf"^{op}: target on emu, input on cpu$"):
        getattr(F, op)(x, target)


# ---- philox (graph-safe random numbers) ---------------------------------------------------


def test_philox_draws_take_whole_blocks() -> None:
    """Each draw takes ceil(n / 4) whole Philox blocks (4 numbers a block): three draws of 3
    numbers consume 3 blocks and the third starts at block 2, exactly as the twin computes
    one draw of 3 starting there."""
    key = (5, 6)
    stream = PhiloxStream(EMU, key)
    draws = [stream.draw("uniform", (3,), -1.0, 4.0, np.float32) for _ in range(3)]
    assert stream.consumed == 3
    for start, got in enumerate(draws):
        np.testing.assert_array_equal(got, philox_cpu.uniform(start, 3, key, -1.0, 4.0,
                                                              np.float32))


# ---- pool ---------------------------------------------------------------------------------


def test_adaptive_avg_pool2d_bad_input_errors_name_the_op() -> None:
    """adaptive_avg_pool2d rejects a 2-D input (ValueError) and an integer input (TypeError),
    naming adaptive_avg_pool2d."""
    with pytest.raises(ValueError, match=r"^adaptive_avg_pool2d: expected a 3-D"):
        F.adaptive_avg_pool2d(dlcore.zeros(4, 4), 1)
    with pytest.raises(TypeError, match=r"^adaptive_avg_pool2d: expected a floating point"):
        F.adaptive_avg_pool2d(dlcore.zeros(1, 1, 4, 4, dtype=dlcore.int64), 1)


def test_adaptive_max_pool2d_of_an_unbatched_input() -> None:
    """A 3-D (C, H, W) input gives (C, oh, ow) values and indices (flat within each plane),
    the batched result without its batch dim; values are NumPy's window maxima."""
    a = np.random.default_rng(0).permutation(32).astype(np.float64).reshape(2, 4, 4)
    y, idx = F.adaptive_max_pool2d(dlcore.tensor(a), 2, return_indices=True)
    want = a.reshape(2, 2, 2, 2, 2).max(axis=(2, 4))
    assert y.shape == (2, 2, 2) and idx.shape == (2, 2, 2)
    np.testing.assert_array_equal(y.numpy(), want)
    np.testing.assert_array_equal(np.take_along_axis(a.reshape(2, -1),
                                                     idx.numpy().reshape(2, -1), 1),
                                  want.reshape(2, -1))
    assert F.adaptive_max_pool2d(dlcore.tensor(a), 2).shape == (2, 2, 2)


def test_avg_pool2d_ceil_mode_allows_a_window_larger_than_the_input() -> None:
    """avg_pool2d(2x2 input, kernel 3, stride 2, ceil_mode=True) has one output (PyTorch's
    output-size rule; without ceil_mode it would have none): the mean of the 4 inputs the
    clipped window covers."""
    x = dlcore.arange(4.0).reshape(1, 1, 2, 2)
    assert F.avg_pool2d(x, 3, stride=2, ceil_mode=True).tolist() == [[[[1.5]]]]
    with pytest.raises(ValueError, match=r"^avg_pool2d: output size \(0, 0\) is too small"):
        F.avg_pool2d(x, 3, stride=2)


def test_max_pool2d_double_backward() -> None:
    """The gradient of max_pool2d's input gradient w.r.t. the output gradient (double
    backward) picks, for each window, the weight at the window's argmax."""
    a = np.array([[4.0, 1.0, 0.0, 2.0], [3.0, 2.0, 7.0, 5.0]]).reshape(1, 1, 2, 4)
    x = dlcore.tensor(a, requires_grad=True)
    y = F.max_pool2d(x, 2)
    np.testing.assert_array_equal(y.detach().numpy(), [[[[4.0, 7.0]]]])
    gy = dlcore.tensor(np.array([[[[10.0, 20.0]]]]), requires_grad=True)
    (gx,) = dlcore.autograd.grad(y, x, gy, create_graph=True)
    np.testing.assert_array_equal(gx.detach().numpy(),
                                  [[[[10, 0, 0, 0], [0, 0, 20, 0]]]])
    w = np.arange(1.0, 9.0).reshape(1, 1, 2, 4)
    (gx * dlcore.tensor(w)).sum().backward()
    np.testing.assert_array_equal(gy.grad.numpy(), [[[[w[0, 0, 0, 0], w[0, 0, 1, 2]]]]])


# ---- reduce -------------------------------------------------------------------------------


def test_min_with_a_tensor_argument_is_the_elementwise_minimum() -> None:
    """a.min(b) and dlcore.min(a, b) with a tensor b are NumPy's minimum (and max its
    maximum), as torch.min(a, b)."""
    a, b = np.array([1.0, 5.0, 3.0]), np.array([2.0, 4.0, 3.0])
    ta, tb = dlcore.tensor(a), dlcore.tensor(b)
    np.testing.assert_array_equal(ta.min(tb).numpy(), np.minimum(a, b))
    np.testing.assert_array_equal(dlcore.min(ta, tb).numpy(), np.minimum(a, b))
    np.testing.assert_array_equal(ta.max(tb).numpy(), np.maximum(a, b))


# ---- shape --------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["reshape", "view"])
def test_two_inferred_dims_are_a_clear_error(op: str) -> None:
    """reshape/view with -1 twice raise a RuntimeError naming the op and the shape."""
    with pytest.raises(RuntimeError, match=rf"^{op}: shape \(-1, -1\) is invalid for input of "
                       r"shape \(6,\)"):
        getattr(dlcore.zeros(6), op)(-1, -1)

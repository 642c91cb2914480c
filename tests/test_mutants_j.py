"""Behaviour pinned down for survivors of mutation sample 3 (mutmut over elementwise, index,
loss, optim, philox, shape and the autograd engine's anomaly mode): each test checks something
no test of the suite checked before, against an independent reference (NumPy, PyTorch's
documented semantics, or values worked out by hand)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import dlcore
import dlcore.nn.functional as F
from dlcore.device import Device
from dlcore.ops import optim as optim_ops
from dlcore.ops import philox_cpu
from dlcore.ops.philox_cuda import PhiloxStream

EMU = Device("emu")

# ---- elementwise --------------------------------------------------------------------------


def test_div_of_a_scalar_by_an_integer_tensor_is_true_division() -> None:
    """div(6, integer tensor) is true division in the default float dtype, as torch.div is
    (6 / [1, 2, 4] = [6, 3, 1.5], not floor division)."""
    got = dlcore.div(6, dlcore.tensor([1, 2, 4]))
    assert got.dtype == dlcore.float32
    np.testing.assert_array_equal(got.numpy(), np.array([6.0, 3.0, 1.5], np.float32))


def test_where_with_two_scalar_branches_gives_a_float_tensor() -> None:
    """where(cond, 1.0, 0.0), both branches Python floats, is a float32 tensor shaped like
    cond, as torch.where(cond, 1.0, 0.0) is."""
    got = dlcore.where(dlcore.tensor([True, False, True]), 1.0, 0.0)
    assert got.dtype == dlcore.float32
    np.testing.assert_array_equal(got.numpy(), np.array([1.0, 0.0, 1.0], np.float32))


def test_where_accepts_a_list_condition_like_numpy() -> None:
    """A non-tensor condition (a list of bools) selects elementwise, as np.where does."""
    cond = [True, False, True]
    a, b = np.array([1.0, 2.0, 3.0], np.float32), np.array([4.0, 5.0, 6.0], np.float32)
    got = dlcore.where(cond, dlcore.tensor(a), dlcore.tensor(b))
    np.testing.assert_array_equal(got.numpy(), np.where(cond, a, b))


def test_add_backward_forms_no_gradient_for_an_input_that_needs_none() -> None:
    """c + x with c constant and broadcast: backward forms only x's gradient. Summing the
    upstream over c's broadcast dim would overflow float32 to inf and anomaly mode would
    report it, though no such gradient is wanted (PyTorch computes only needed ones)."""
    c = dlcore.tensor([1.0])
    x = dlcore.zeros(2, requires_grad=True)
    upstream = np.array([3e38, 3e38], np.float32)
    with dlcore.autograd.detect_anomaly():
        (c + x).backward(dlcore.tensor(upstream))
    np.testing.assert_array_equal(x.grad.numpy(), upstream)
    assert c.grad is None


# ---- index --------------------------------------------------------------------------------


def test_gather_index_larger_than_input_off_dim_is_a_runtime_error() -> None:
    """gather with an index wider than the input in a dim other than ``dim`` raises a
    RuntimeError (PyTorch's class) naming both shapes."""
    x = dlcore.zeros(2, 3)
    index = dlcore.zeros(2, 5, dtype=dlcore.int64)
    with pytest.raises(RuntimeError,
                       match=r"index shape \(2, 5\) exceeds input shape \(2, 3\) at dim 1"):
        dlcore.gather(x, 0, index)


# ---- loss ---------------------------------------------------------------------------------


def test_loss_broadcast_warning_says_results_will_likely_be_incorrect() -> None:
    """mse_loss with a target shaped unlike the input warns, in PyTorch's words, that this
    "will likely lead to incorrect results due to broadcasting" (what users filter on)."""
    with pytest.warns(UserWarning, match="incorrect results due to broadcasting"):
        F.mse_loss(dlcore.zeros(3, 1), dlcore.zeros(3))


def test_deprecated_size_average_warning_points_at_the_callers_line() -> None:
    """MSELoss(size_average=False) warns that the argument is deprecated, attributed to the
    line that built the loss (so the user sees where to change it), not to dlcore itself."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dlcore.nn.MSELoss(size_average=False)
    [w] = [w for w in caught if "deprecated" in str(w.message)]
    assert w.filename == __file__


# ---- optim --------------------------------------------------------------------------------


def test_sgd_weight_decay_of_one_adds_the_whole_parameter_to_the_gradient() -> None:
    """SGD with weight_decay=1: p <- p - lr * (g + 1 * p), PyTorch's L2 rule."""
    p0, g = np.array([1.0, -2.0, 3.0], np.float32), np.array([0.5, 0.5, -1.0], np.float32)
    p = dlcore.nn.Parameter(dlcore.tensor(p0))
    p.grad = dlcore.tensor(g)
    dlcore.optim.SGD([p], lr=0.1, weight_decay=1.0).step()
    np.testing.assert_allclose(p.detach().numpy(), p0 - np.float32(0.1) * (g + p0), rtol=1e-6)


def test_update_scale_rejects_an_unsupported_dtype_naming_itself() -> None:
    """update_scale on an int8 scale raises a TypeError that names update_scale and the
    dtype, the op the caller invoked (rule 8: errors name the op)."""
    cpu = dlcore.device("cpu")
    with pytest.raises(TypeError, match=r"^update_scale: dtype int8 is not supported"):
        optim_ops.update_scale(cpu, np.ones(1, np.int8), np.zeros(1, np.int32),
                               np.zeros(1, np.int32), 2.0, 0.5, 2)


# ---- philox -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_philox_normal_twin_returns_the_kernels_dtype(dtype: type) -> None:
    """The NumPy twin of philox_normal returns the requested dtype, as the kernel writes it
    (checked against the emulated kernel's draw, dtype and values)."""
    key = (11, 3)
    got = PhiloxStream(EMU, key).draw("normal", (9,), 0.5, 2.0, dtype)
    want = philox_cpu.normal(0, 9, key, 0.5, 2.0, dtype)
    assert want.dtype == got.dtype == np.dtype(dtype)
    np.testing.assert_allclose(got, want, rtol=4 * np.finfo(dtype).eps)


# ---- shape --------------------------------------------------------------------------------


def test_expand_minus_one_for_a_new_leading_dim_says_so() -> None:
    """expand(-1, 3) on a 1-D tensor: -1 cannot stand for a new leading dim; the
    RuntimeError says so (PyTorch raises RuntimeError too)."""
    with pytest.raises(RuntimeError, match="-1 is not allowed for a new leading dim"):
        dlcore.zeros(3).expand(-1, 3)


def test_split_sections_not_summing_to_the_dim_is_a_runtime_error() -> None:
    """split(t, [2, 2]) of a 5-row tensor raises a RuntimeError (PyTorch's class) naming
    the sections, the size and the shape."""
    with pytest.raises(RuntimeError, match=r"sections \[2, 2\] .* size 5 .*\(shape \(5, 2\)\)"):
        dlcore.split(dlcore.zeros(5, 2), [2, 2])


def test_unbind_defaults_to_dim_zero() -> None:
    """unbind(t) splits along dim 0 by default, as torch.unbind does: a (2, 3) tensor gives
    its two rows."""
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    rows = dlcore.unbind(dlcore.tensor(a))
    assert len(rows) == 2
    for row, want in zip(rows, a):
        np.testing.assert_array_equal(row.numpy(), want)

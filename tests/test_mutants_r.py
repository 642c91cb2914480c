"""Behaviour pinned down for survivors of mutation sample 4 (letter r: clamp with a tensor
bound, amax's float16 gradient, reshape to a 0-d shape, gradients through a device move into
a non-leaf, and the strided conv columns' bounds): each test checks something no test of the
suite checked before, against NumPy, PyTorch's documented semantics or values worked out by
hand."""

from __future__ import annotations

import faulthandler
import mmap
import os
import signal
import time

import numpy as np
import pytest
from op_check import direct_conv2d

import dlcore
import dlcore.nn.functional as F
from dlcore.device import Device

EMU = Device("emu")


# ---- clamp with one tensor bound ----------------------------------------------------------


def test_clamp_with_a_tensor_min_only_differentiates_the_bound() -> None:
    """clamp(x, min=t) with t a Tensor and no max is maximum(x, t), as in torch: the gradient
    of the sum reaches t where t > x and x elsewhere (no ties here)."""
    x = dlcore.tensor([1.0, 5.0, 3.0, -2.0], requires_grad=True)
    lo = dlcore.tensor([2.0, 2.0, 4.0, -3.0], requires_grad=True)
    y = dlcore.clamp(x, min=lo)
    np.testing.assert_array_equal(y.numpy(), np.maximum(x.numpy(), lo.numpy()))
    y.sum().backward()
    assert lo.grad is not None and x.grad is not None
    np.testing.assert_array_equal(lo.grad.numpy(), np.array([1, 0, 1, 0], np.float32))
    np.testing.assert_array_equal(x.grad.numpy(), np.array([0, 1, 0, 1], np.float32))


def test_clamp_with_a_tensor_max_and_a_number_min_differentiates_the_bound() -> None:
    """clamp(x, min=0.0, max=t): values min(max(x, 0), t); the gradient reaches t where
    t < max(x, 0) and x where 0 < x < t."""
    x = dlcore.tensor([1.0, 5.0, -3.0, 0.5], requires_grad=True)
    hi = dlcore.tensor([2.0, 4.0, 1.0, 0.25], requires_grad=True)
    y = dlcore.clamp(x, min=0.0, max=hi)
    np.testing.assert_array_equal(y.numpy(), np.array([1.0, 4.0, 0.0, 0.25], np.float32))
    y.sum().backward()
    assert hi.grad is not None and x.grad is not None
    np.testing.assert_array_equal(hi.grad.numpy(), np.array([0, 1, 0, 1], np.float32))
    np.testing.assert_array_equal(x.grad.numpy(), np.array([1, 0, 0, 0], np.float32))


# ---- amax / amin gradient in float16 --------------------------------------------------------


@pytest.mark.parametrize("op", ["amax", "amin"])
def test_float16_amax_amin_gradient_splits_evenly_over_ties_and_is_zero_elsewhere(
        op: str) -> None:
    """torch's amax/amin gradient: g / (number of ties) at every extreme position, 0 at the
    others (finite: the non-extreme entries get exactly 0, in float16 too)."""
    vals = np.array([[1.0, 3.0, 3.0, 2.0], [-1.0, -4.0, 0.5, -4.0]], np.float16)
    x = dlcore.tensor(vals, dtype=dlcore.float16, requires_grad=True)
    getattr(x, op)(dim=1).sum().backward()
    assert x.grad is not None and x.grad.dtype == dlcore.float16
    ext = vals.max(1, keepdims=True) if op == "amax" else vals.min(1, keepdims=True)
    ties = vals == ext
    want = (ties / ties.sum(1, keepdims=True)).astype(np.float16)
    np.testing.assert_array_equal(x.grad.numpy(), want)


# ---- reshape / view to a 0-d shape -----------------------------------------------------


@pytest.mark.parametrize("op", ["reshape", "view"])
def test_one_element_tensor_reshapes_to_a_0d_tensor(op: str) -> None:
    """A one-element tensor reshaped (or viewed) to () is the 0-d tensor of that element,
    as torch.tensor([7.]).reshape(()) is; two elements to () is torch's RuntimeError."""
    y = getattr(dlcore.tensor([[7.0]]), op)(())
    assert y.shape == ()
    assert float(y.item()) == 7.0
    with pytest.raises(RuntimeError, match=r"shape \(\) is invalid"):
        getattr(dlcore.tensor([1.0, 2.0]), op)(())


# ---- gradients through a device move ----------------------------------------------------


def test_grad_through_a_device_move_reaches_a_cpu_non_leaf() -> None:
    """b = a * a on cpu, moved to emu: the gradient comes back to cpu, so b's own backward
    (on cpu, with a cpu input) runs and a.grad = 2 * a, on cpu."""
    a = dlcore.tensor([1.0, -2.0, 3.0], requires_grad=True)
    b = a * a
    (b.to(EMU) * 3).sum().backward()
    assert a.grad is not None and a.grad.device is a.device
    np.testing.assert_array_equal(a.grad.numpy(), np.array([6.0, -12.0, 18.0], np.float32))


def test_create_graph_grad_through_a_device_and_dtype_move_lands_on_the_source() -> None:
    """With create_graph=True the gradient is the graph's own tensor (no copy): moved from
    cpu float32 to emu float64 and back, x.grad is on cpu, float32, 2 * x."""
    x = dlcore.tensor([1.0, 2.0], requires_grad=True)
    y = x.to(EMU, dlcore.float64)
    (y * y).sum().backward(create_graph=True)
    assert x.grad is not None
    assert x.grad.device is x.device and x.grad.dtype == dlcore.float32
    np.testing.assert_array_equal(x.grad.numpy(), np.array([2.0, 4.0], np.float32))


# ---- conv2d reads no memory beyond its input ------------------------------------------------


def _in_child(fn, timeout: float = 60.0) -> int:
    """Run fn() in a forked child; its exit status (or -signal number)."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 3
        try:
            faulthandler.disable()
            code = fn()
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return -signal.SIGKILL
        time.sleep(0.01)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork (a guard page may fault)")
def test_channels_last_conv2d_reads_nothing_past_the_end_of_its_input() -> None:
    """A channels-last input is read in place (no padding: no copy). Placed so that its last
    byte abuts a PROT_NONE page, conv2d (3x3, stride 1, 8 channels, an 8x8 output: the
    kernel-row path) must read only the input's own bytes: it completes, and matches a
    float64 reference. A read past the end would fault; it runs in a child process."""
    rng = np.random.default_rng(0)
    n, c, h, wd = 2, 8, 10, 10
    xa = rng.standard_normal((n, h, wd, c)).astype(np.float32)
    wa = rng.standard_normal((4, c, 3, 3)).astype(np.float32)
    want = direct_conv2d(xa.transpose(0, 3, 1, 2), wa)

    def child() -> int:
        page = mmap.PAGESIZE
        body = -(-xa.nbytes // page) * page
        region = mmap.mmap(-1, body + page)
        raw = np.frombuffer(region, np.uint8)
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        if libc.mprotect(raw.ctypes.data + body, page, 0) != 0:  # PROT_NONE
            return 4
        buf = np.frombuffer(region, np.float32, count=xa.size,
                            offset=body - xa.nbytes).reshape(xa.shape)
        buf[...] = xa
        x = dlcore.from_numpy(buf.transpose(0, 3, 1, 2))
        y = F.conv2d(x, dlcore.tensor(wa)).numpy()
        return 0 if np.allclose(y, want, rtol=1e-4, atol=1e-4) else 2

    assert _in_child(child) == 0

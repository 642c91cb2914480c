"""Behaviour pinned down for survivors of mutation sample 5 (letter t: convolution paths):
depthwise convolutions on cpu spread over several blocks of planes, the float32 scratch of
the cpu data gradients (depthwise and strided kernel rows), 1x1 convolutions on the kernel
devices as plain GEMMs (no TF32 detour), the depthwise kernels' staged rows, and an empty
output grid given to the SIMT launcher. Each test checks something no test of the suite
checked before, against float64 NumPy direct loops or the float64 run itself."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from op_check import direct_conv2d

import dlcore
import dlcore.nn.functional as F
from dlcore.backends import cudnn
from dlcore.device import Device
from dlcore.kernels import recorded_launches
from dlcore.ops import conv_cpu, conv_cuda, conv_gemm_cuda

CPU = Device("cpu")
EMU = Device("emu")


def _host(a: Any) -> np.ndarray:
    return a.get() if hasattr(a, "get") else np.asarray(a)


def _peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak traced bytes while ``fn`` runs (after one warm-up call outside the trace)."""
    fn()
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ---- depthwise convolution on cpu over several blocks of planes ----------------------------


def test_cpu_depthwise_conv_over_several_plane_blocks_matches_direct_loops() -> None:
    """A depthwise 3x3 layer whose (sample, channel) planes do not all fit one cache block
    (2 x 16 planes of 32x32 in float64, about 27 KB each against the 640 KiB block) is
    processed a whole number of planes at a time: forward and both gradients equal float64
    direct loops'."""
    rng = np.random.default_rng(10)
    xd = rng.standard_normal((2, 16, 32, 32))
    wd = rng.standard_normal((16, 1, 3, 3))
    gd = rng.standard_normal((2, 16, 32, 32))
    x = dlcore.tensor(xd, dtype=dlcore.float64, requires_grad=True)
    w = dlcore.tensor(wd, dtype=dlcore.float64, requires_grad=True)
    y = F.conv2d(x, w, padding=1, groups=16)
    (y * dlcore.tensor(gd, dtype=dlcore.float64)).sum().backward()
    # float64 references: the forward by direct loops; the data gradient, the adjoint, is the
    # same-size correlation of gy with each channel's flipped taps; the weight gradient of
    # tap (i, j) sums the padded input shifted by (i, j) times gy
    xp = np.pad(xd, ((0, 0), (0, 0), (1, 1), (1, 1)))
    want_gw = np.array([[[[np.sum(xp[:, o, i:i + 32, j:j + 32] * gd[:, o]) for j in range(3)]
                          for i in range(3)]] for o in range(16)])
    assert x.grad is not None and w.grad is not None
    want_y = direct_conv2d(xd, wd, padding=(1, 1), groups=16)
    want_gx = direct_conv2d(gd, wd[:, :, ::-1, ::-1], padding=(1, 1), groups=16)
    np.testing.assert_allclose(y.numpy(), want_y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), want_gx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(w.grad.numpy(), want_gw, rtol=1e-11, atol=1e-11)


# ---- float32 data gradients on cpu keep float32 scratch ----------------------------------


def test_cpu_depthwise_data_gradient_computes_float32_in_float32_memory() -> None:
    """The depthwise data gradient (3x3, padding 3, beyond the kernel's reach, so no flipped
    forward) of a float32 gy computes in float32, as PyTorch does: its padded buffer, the
    per-tap products and gx take 4 bytes an element, so its peak memory is about half that of
    the same gradient in float64 (a float64 scratch array would push it to two thirds), and
    the result is float32 and right."""
    rng = np.random.default_rng(11)
    n, c, h = 2, 64, 4
    w64 = rng.standard_normal((c, 1, 3, 3))
    gy64 = rng.standard_normal((n, c, h + 4, h + 4))
    args = ((1, 1), (3, 3), (1, 1), c)
    peaks = {}
    for dtype in (np.float32, np.float64):
        gy, w = gy64.astype(dtype), w64.astype(dtype)
        peaks[dtype] = _peak_bytes(
            lambda gy=gy, w=w: conv_cpu.conv2d_backward_data(CPU, gy, w, (n, c, h, h), *args))
        gx = conv_cpu.conv2d_backward_data(CPU, gy, w, (n, c, h, h), *args)
        assert gx.dtype == dtype
        # the adjoint of the padding-3 forward: gx[p] = sum over taps i of w[i] gy[p + 3 - i],
        # an unpadded correlation of gy without its border row/column with the flipped taps
        want = direct_conv2d(gy64[:, :, 1:-1, 1:-1], w64[:, :, ::-1, ::-1], groups=c)
        np.testing.assert_allclose(gx, want, rtol=1e-5, atol=1e-5)
    assert peaks[np.float32] < 0.56 * peaks[np.float64], peaks


def test_cpu_strided_data_gradient_by_kernel_rows_computes_float32_in_float32_memory() -> None:
    """The stride-2 data gradient of a 16-channel layer (the kernel-row col2im) of a float32
    gy adds into a float32 padded buffer, as PyTorch computes in float32: its peak memory is
    about half that of the float64 gradient (a float64 buffer would push it well above), and
    the result is float32 and right (against a float64 scatter of the windows)."""
    rng = np.random.default_rng(12)
    x_shape = (1, 16, 32, 32)
    w64 = rng.standard_normal((16, 16, 3, 3))
    gy64 = rng.standard_normal((1, 16, 16, 16))
    args = ((2, 2), (1, 1), (1, 1), 1)
    # float64 reference: each output gradient scattered to the inputs its window read
    pad = np.zeros((1, 16, 34, 34))
    for i in range(3):
        for j in range(3):
            pad[:, :, i:i + 32:2, j:j + 32:2] += np.einsum("nohw,oc->nchw", gy64, w64[:, :, i, j])
    want = pad[:, :, 1:33, 1:33]
    peaks = {}
    for dtype in (np.float32, np.float64):
        gy, w = gy64.astype(dtype), w64.astype(dtype)
        peaks[dtype] = _peak_bytes(
            lambda gy=gy, w=w: conv_cpu.conv2d_backward_data(CPU, gy, w, x_shape, *args))
        gx = conv_cpu.conv2d_backward_data(CPU, gy, w, x_shape, *args)
        assert gx.dtype == dtype
        np.testing.assert_allclose(gx, want, rtol=1e-4, atol=1e-4)
    assert peaks[np.float32] < 0.56 * peaks[np.float64], peaks


# ---- 1x1 convolutions on a kernel device are plain GEMMs ----------------------------------


def test_emu_float32_1x1_conv_is_a_plain_gemm_without_tf32(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """conv_cuda's rule 1: a 1x1 kernel at stride 1 without padding is xp.matmul, no kernel
    of ours, even while allow_tf32 is True (PyTorch's default): no launch is recorded in any
    direction, and the float32 results keep float32 accuracy (TF32's 10-bit mantissas would
    be off by ~1e-3) against float64 einsums."""
    monkeypatch.setattr(cudnn, "allow_tf32", True)
    rng = np.random.default_rng(13)
    x = rng.standard_normal((2, 8, 3, 4)).astype(np.float32)
    w = rng.standard_normal((5, 8, 1, 1)).astype(np.float32)
    gy = rng.standard_normal((2, 5, 3, 4)).astype(np.float32)
    args = ((1, 1), (0, 0), (1, 1), 1)
    with recorded_launches() as launches:
        y = conv_cuda.conv2d_forward(EMU, x, w, (3, 4), *args)
        gx = conv_cuda.conv2d_backward_data(EMU, gy, w, x.shape, *args)
        gw = conv_cuda.conv2d_backward_weight(EMU, x, gy, w.shape, *args)
    assert launches == []
    x64, w64, gy64 = x.astype(np.float64), w[:, :, 0, 0].astype(np.float64), gy.astype(np.float64)
    np.testing.assert_allclose(_host(y), np.einsum("fc,nchw->nfhw", w64, x64),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_host(gx), np.einsum("fc,nfhw->nchw", w64, gy64),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_host(gw)[:, :, 0, 0], np.einsum("nfhw,nchw->fc", gy64, x64),
                               rtol=1e-5, atol=1e-5)


# ---- depthwise kernels: staged rows hold a whole window row -------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_emu_depthwise_forward_on_a_6_wide_plane_matches_direct_loops(dtype: type) -> None:
    """A 6-wide output plane takes an 8-thread-wide tile whose staged input rows are 10
    elements (padded for the shared-memory banks, never shorter): the depthwise forward
    kernel equals float64 direct loops."""
    rng = np.random.default_rng(14)
    x = rng.standard_normal((1, 2, 6, 6)).astype(dtype)
    w = rng.standard_normal((2, 1, 3, 3)).astype(dtype)
    with recorded_launches() as launches:
        y = conv_cuda.conv2d_forward(EMU, x, w, (6, 6), (1, 1), (1, 1), (1, 1), 2)
    assert [rec.kernel.partition(":")[0] for rec in launches] == ["conv2d_depthwise.cu"]
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(_host(y), direct_conv2d(x, w, padding=(1, 1), groups=2),
                               rtol=tol, atol=tol)


# ---- the SIMT launcher given an empty output grid -----------------------------------------


def test_emu_gemm_forward_of_a_zero_width_output_is_empty_like_the_cpu_twin() -> None:
    """conv_gemm_cuda.conv2d_forward, given an output grid with no columns (a zero-width
    input, 3x1 kernel), returns the empty (N, F, OH, 0) output without launching, as the cpu
    twin does."""
    x = np.zeros((1, 2, 4, 0))
    w = np.ones((3, 2, 3, 1))
    args = ((1, 1), (1, 0), (1, 1), 1)
    want = conv_cpu.conv2d_forward(CPU, x, w, (4, 0), *args)
    with recorded_launches() as launches:
        y = _host(conv_gemm_cuda.conv2d_forward(EMU, x, w, (4, 0), *args))
    assert launches == []
    assert y.shape == want.shape == (1, 3, 4, 0) and y.dtype == np.float64

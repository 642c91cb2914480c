"""Behaviour pinned down for survivors of mutation sample 3 (mutmut over the convolutions'
CPU paths and the CUDA paths' host code on ``emu``, the CPU GEMM splits, pooling): each test
checks something no test of the suite checked before, against an independent reference
(NumPy, a plain loop, PyTorch's semantics, or values worked out by hand)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import dlcore
import dlcore.nn.functional as F
from dlcore.device import Device
from dlcore.kernels import recorded_launches
from dlcore.ops import blas_cpu, conv_cpu, conv_cuda, conv_gemm_cuda, conv_tc_cuda
from dlcore.ops import conv as conv_ops

CPU = Device("cpu")
EMU = Device("emu")


def _conv_grads_ref(x: np.ndarray, w: np.ndarray, gy: np.ndarray, stride: tuple[int, int],
                    padding: tuple[int, int], dilation: tuple[int, int] = (1, 1)
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Direct loops over output pixels and kernel taps (groups 1, float64): the gradients
    gx and gw of <gy, conv2d(x, w)>."""
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    _, _, h, wd = x.shape
    _, _, kh, kw = w.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    gxp, gw = np.zeros_like(xp), np.zeros(w.shape)
    for a in range(gy.shape[2]):
        for b in range(gy.shape[3]):
            for i in range(kh):
                for j in range(kw):
                    r, s = a * sh + i * dh, b * sw + j * dw
                    gxp[:, :, r, s] += gy[:, :, a, b] @ w[:, :, i, j]
                    gw[:, :, i, j] += gy[:, :, a, b].T @ xp[:, :, r, s]
    return gxp[:, :, ph:ph + h, pw:pw + wd], gw


# ---- blas_cpu -----------------------------------------------------------------------------

class _CountingNumPy:
    """NumPy as blas_cpu sees it, recording the (M, K, N) of every np.matmul it issues."""

    def __init__(self) -> None:
        self.gemms: list[tuple[int, int, int]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)

    def matmul(self, a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> Any:
        self.gemms.append((a.shape[0], a.shape[1], b.shape[1]))
        return np.matmul(a, b, out=out)


@pytest.mark.parametrize("m,k,n", [(4096, 144, 16), (2000, 1000, 64)])
def test_narrow_product_runs_as_row_blocks_inside_the_small_path(
        m: int, k: int, n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A product at most 64 columns wide (a convolution's col @ w^T) is computed as row
    blocks that each fit OpenBLAS's small path (M*K*N <= 100^3, the module's reason to
    exist), each over the whole reduction, together covering every row of a @ b."""
    rng = np.random.default_rng(11)
    a = rng.integers(-4, 5, (m, k)).astype(np.float64)
    b = rng.integers(-4, 5, (k, n)).astype(np.float64)
    spy = _CountingNumPy()
    monkeypatch.setattr(blas_cpu, "np", spy)
    out = blas_cpu.matmul_into(a, b, np.full((m, n), np.nan))
    monkeypatch.undo()
    np.testing.assert_array_equal(out, a @ b)
    assert len(spy.gemms) > 1
    assert all(rows * kk * cols <= blas_cpu.SMALL_MNK for rows, kk, cols in spy.gemms), spy.gemms
    assert all((kk, cols) == (k, n) for _, kk, cols in spy.gemms), spy.gemms
    assert sum(rows for rows, _, _ in spy.gemms) == m


# ---- conv: argument checks and the check cases --------------------------------------------

def test_float16_conv_check_case_runs_a_3x3_same_size_convolution() -> None:
    """The `dlcore check` case "conv2d 3x3 pad 1 float16" runs what its name says: a 3x3
    kernel with padding 1 keeps the 9x9 maps, in float16 (every output a float16 value)."""
    got = conv_ops.CONV2D.checks["conv2d 3x3 pad 1 float16"](CPU)
    assert got["forward"].shape == (2, 6, 9, 9)
    assert got["grad weight"].shape == (6, 4, 3, 3)
    assert got["grad input"].shape == (2, 4, 9, 9)
    fwd = got["forward"]
    np.testing.assert_array_equal(fwd, fwd.astype(np.float16).astype(fwd.dtype))


@pytest.mark.parametrize("x_shape,w_shape,dim", [((1, 1, 2, 8), (1, 1, 3, 3), 2),
                                                 ((1, 1, 8, 2), (1, 1, 1, 3), 3)])
def test_conv2d_kernel_larger_than_the_input_in_one_dim_names_that_dim(
        x_shape: tuple[int, ...], w_shape: tuple[int, ...], dim: int) -> None:
    """A kernel taller (or wider) than the unpadded input along one dim only is a ValueError
    naming that dim (PyTorch: kernel size can't be greater than the input size), whichever
    of height and width it is."""
    x, w = dlcore.ones(*x_shape), dlcore.ones(*w_shape)
    with pytest.raises(ValueError, match=rf"^conv2d: kernel size \({w_shape[2]}, {w_shape[3]}\) "
                                         rf"\(dilated extent 3 in dim {dim}\) is larger than "
                                         r"the padded input"):
        F.conv2d(x, w)


# ---- conv_cpu -----------------------------------------------------------------------------

def test_channels_last_strided_backward_data_over_several_batch_chunks(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The channels-last input gradient of a strided, dilated 3x3 convolution, for a batch of
    136 whose column matrices (64 pixels x 16*9 doubles, 72 KiB a sample) take ten 1 MiB
    chunks: every sample's gradient equals the direct-loop reference."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((136, 16, 16, 16))
    w = rng.standard_normal((24, 16, 3, 3))
    gy = rng.standard_normal((136, 24, 8, 8))
    gy_cl = np.ascontiguousarray(gy.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    seen = []
    real = conv_cpu._backward_data_nhwc
    monkeypatch.setattr(conv_cpu, "_backward_data_nhwc",
                        lambda *a: seen.append(1) or real(*a))
    gx = conv_cpu.conv2d_backward_data(CPU, gy_cl, w, x.shape, (2, 2), (2, 2), (2, 2), 1)
    assert seen, "not the channels-last path"
    want, _ = _conv_grads_ref(x, w, gy, (2, 2), (2, 2), (2, 2))
    np.testing.assert_allclose(gx, want, rtol=1e-10, atol=1e-10)


def test_float32_depthwise_weight_gradient_is_computed_in_float32() -> None:
    """float32 depthwise conv: gy 1e30 and -1e30 against x 1e10 make products beyond
    float32's range, so that channel's weight gradient overflows (PyTorch gives inf there)
    instead of coming out as an exact float64 sum; the other channel matches the reference."""
    x = np.full((1, 2, 4, 8), 1e10, np.float32)
    x[0, 1] = np.arange(32, dtype=np.float32).reshape(4, 8) / 8
    w = dlcore.tensor(np.ones((2, 1, 3, 3), np.float32), requires_grad=True)
    gy = np.zeros((1, 2, 4, 8), np.float32)
    gy[0, 0, 1, 3], gy[0, 0, 2, 4] = 1e30, -1e30  # interior pixels: every tap reads x
    gy[0, 1] = np.random.default_rng(2).standard_normal((4, 8))
    y = F.conv2d(dlcore.tensor(x), w, padding=1, groups=2)
    with np.errstate(over="ignore", invalid="ignore"):
        y.backward(dlcore.tensor(gy))
    gw = w.grad.numpy()
    assert gw.dtype == np.float32
    assert not np.isfinite(gw[0]).any(), gw[0]
    _, want = _conv_grads_ref(x[:, 1:], np.ones((1, 1, 3, 3)), gy[:, 1:].astype(np.float64),
                              (1, 1), (1, 1))
    np.testing.assert_allclose(gw[1:], want, rtol=1e-5, atol=1e-5)


# ---- conv kernels' host code (emu) --------------------------------------------------------

def test_3x3_float16_conv_on_emu_runs_on_the_tensor_cores() -> None:
    """float16 conv2d on a kernel device goes to the tensor-core kernels (conv_cuda's rule 3:
    no other kernel takes float16) and gives the float16 rounding of the exact sums."""
    rng = np.random.default_rng(8)
    xd = rng.integers(-3, 4, (2, 3, 6, 5)).astype(np.float16)
    wd = rng.integers(-3, 4, (4, 3, 3, 3)).astype(np.float16)
    x, w = dlcore.tensor(xd, device=EMU), dlcore.tensor(wd, device=EMU)
    with recorded_launches() as launches:
        y = F.conv2d(x, w, padding=1)
    kernels = [rec.kernel for rec in launches]
    assert kernels and all(k.startswith("conv2d_tc.cu:") for k in kernels), kernels
    assert y.dtype == np.float16
    want = F.conv2d(dlcore.tensor(xd.astype(np.float64)), dlcore.tensor(wd.astype(np.float64)),
                    padding=1).numpy()  # small integers: exact in float16 and float64
    np.testing.assert_array_equal(y.numpy(), want.astype(np.float16))


def test_float16_conv2d_without_tensor_cores_names_the_op(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """On a device below sm_70 (no FP16 tensor cores) a float16 conv2d is a TypeError naming
    conv2d, the dtype and the device, and saying what to use instead."""
    monkeypatch.setattr(conv_tc_cuda, "EMU_CAPABILITY", (6, 1))
    monkeypatch.setattr(conv_cuda, "_routes", {})
    x = dlcore.tensor(np.ones((1, 2, 5, 5), np.float16), device=EMU)
    w = dlcore.tensor(np.ones((3, 2, 3, 3), np.float16), device=EMU)
    with pytest.raises(TypeError, match=r"^conv2d: dtype float16 on emu needs the tensor-core "
                                        r"kernels, .*use float32 or float64$"):
        F.conv2d(x, w)


def test_gemm_backward_data_names_the_gy_slice_past_int32_offsets(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An (image, group) slice of gy beyond the kernels' 32-bit offsets (the limit lowered
    to 10): the backward names itself, the slice, its size and the limit."""
    monkeypatch.setattr(conv_gemm_cuda, "INT32_MAX", 10)
    gy = np.ones((1, 2, 4, 4), np.float32)
    w = np.ones((2, 1, 1, 1), np.float32)
    with pytest.raises(ValueError, match=r"^conv2d backward: an \(image, group\) slice of gy "
                                         r"has 32 elements; the conv2d kernels index it with "
                                         r"32-bit offsets \(at most 10\)$"):
        conv_gemm_cuda.conv2d_backward_data(EMU, gy, w, (1, 1, 4, 4), (1, 1), (0, 0),
                                            (1, 1), 1)


def test_gemm_backward_weight_grid_limit_names_the_op(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two groups over a grid limit of one block: the weight gradient names itself, the
    groups and the limit instead of launching."""
    monkeypatch.setattr(conv_gemm_cuda, "MAX_GRID_YZ", 1)
    x = np.ones((1, 2, 3, 3), np.float32)
    gy = np.ones((1, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"^conv2d backward: groups x stride phases \(2\) or "
                                         r"column tiles \(1\) exceed the grid limit \(1 "):
        conv_gemm_cuda.conv2d_backward_weight(EMU, x, gy, (2, 1, 3, 3), (1, 1), (1, 1),
                                              (1, 1), 2)


def test_tile_for_defaults_to_one_gemm(monkeypatch: pytest.MonkeyPatch) -> None:
    """On an 8-SM device one 512 x 128 float32 GEMM takes 128 x 64 tiles (8 blocks, one per
    SM; 128 x 128 would make 4), while two such GEMMs fill the SMs with 128 x 128: called
    without ``batches``, tile_for sizes a single GEMM."""
    monkeypatch.setattr(conv_gemm_cuda, "_multiprocessors", lambda device: 8)
    assert conv_gemm_cuda.tile_for(EMU, np.float32, 512, 128) == (128, 64)
    assert conv_gemm_cuda.tile_for(EMU, np.float32, 512, 128, 2) == (128, 128)


# ---- pooling ------------------------------------------------------------------------------

def test_adaptive_avg_pool2d_to_two_rows_and_one_column() -> None:
    """Output size (2, 1) averages the top and the bottom half of each plane (PyTorch's
    adaptive windows: rows [0, 2) and [2, 4) of 4, every column)."""
    xd = np.arange(24.0).reshape(1, 2, 4, 3)
    y = F.adaptive_avg_pool2d(dlcore.tensor(xd), (2, 1)).numpy()
    want = np.stack([xd[:, :, :2].mean(axis=(2, 3)), xd[:, :, 2:].mean(axis=(2, 3))], axis=2)
    assert y.shape == (1, 2, 2, 1)
    np.testing.assert_allclose(y, want[..., None], rtol=1e-15)


def test_float32_avg_pool2d_sums_in_float32_as_pytorch() -> None:
    """float32 average pooling sums its window in float32 (PyTorch's CPU kernel too): two
    3e38s down a (2, 1) window overflow to inf rather than averaging to 3e38 in float64."""
    x = dlcore.tensor(np.full((1, 1, 4, 3), 3e38, np.float32))
    with np.errstate(over="ignore"):
        y = F.avg_pool2d(x, (2, 1)).numpy()
    assert y.dtype == np.float32 and y.shape == (1, 1, 2, 3)
    assert np.all(y == np.inf), y

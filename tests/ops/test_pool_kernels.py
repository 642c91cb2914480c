"""pool2d kernels (kernels/pool2d.cu through dlcore.ops.pool_cuda) against float64 NumPy
references, on ``emu`` (checked mode, several fiber-order seeds) and ``cuda`` (skipped without a
GPU): odd sizes, stride > kernel, dilation 2 and 3, padding up to half the window, ceil_mode,
count_include_pad both ways, divisor_override, batch 1, and ties in max pooling."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import pytest

from dlcore.device import Device, device_count
from dlcore.ops import pool_cpu, pool_cuda
from dlcore.ops.pool import pool2d_out_size

SEEDS = (1, 2, 3)


class Case(NamedTuple):
    shape: tuple[int, int, int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    ceil_mode: bool

    def out_hw(self, dilation: bool = True) -> tuple[int, int]:
        d = self.dilation if dilation else (1, 1)
        return tuple(pool2d_out_size(self.shape[2 + i], self.kernel[i], self.stride[i],
                                     self.padding[i], d[i], self.ceil_mode)
                     for i in range(2))


CASES = {
    "2x2_s2": Case((2, 3, 6, 7), (2, 2), (2, 2), (0, 0), (1, 1), False),
    "3x3_s2_pad1_ceil": Case((1, 2, 7, 8), (3, 3), (2, 2), (1, 1), (1, 1), True),
    "stride_gt_kernel": Case((2, 2, 9, 10), (2, 3), (3, 4), (1, 1), (1, 1), False),
    "stride_gt_kernel_ceil": Case((1, 3, 10, 9), (2, 2), (3, 3), (1, 0), (1, 1), True),
    "dilation2_pad": Case((1, 2, 9, 8), (3, 2), (1, 2), (1, 1), (2, 2), False),
    "dilation3_ceil": Case((2, 1, 11, 10), (2, 3), (2, 2), (1, 1), (3, 3), True),
    "overlap_s1": Case((1, 2, 5, 6), (3, 3), (1, 1), (1, 1), (1, 1), False),
    "7x7_pad3": Case((1, 1, 9, 8), (7, 7), (2, 3), (3, 3), (1, 1), True),
}
AVG_CASES = [k for k, c in CASES.items() if c.dilation == (1, 1)]


def ref_max_forward(case: Case, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scan each window row-major, keeping the first strict maximum; padding never wins."""
    n, c, h, w = x.shape
    ho, wo = case.out_hw()
    y = np.full((n, c, ho, wo), -np.inf)
    idx = np.full((n, c, ho, wo), -1, dtype=np.int64)
    for oh in range(ho):
        for ow in range(wo):
            for r in range(case.kernel[0]):
                for s in range(case.kernel[1]):
                    ih = oh * case.stride[0] - case.padding[0] + r * case.dilation[0]
                    iw = ow * case.stride[1] - case.padding[1] + s * case.dilation[1]
                    if not (0 <= ih < h and 0 <= iw < w):
                        continue
                    v = x[:, :, ih, iw].astype(np.float64)
                    better = (idx[:, :, oh, ow] < 0) | (v > y[:, :, oh, ow])
                    y[:, :, oh, ow] = np.where(better, v, y[:, :, oh, ow])
                    idx[:, :, oh, ow] = np.where(better, ih * w + iw, idx[:, :, oh, ow])
    return y, idx


def ref_max_backward(gy: np.ndarray, idx: np.ndarray, x_shape: tuple[int, ...]) -> np.ndarray:
    n, c, h, w = x_shape
    gx = np.zeros((n * c, h * w))
    rows = np.repeat(np.arange(n * c), gy[0, 0].size)
    np.add.at(gx, (rows, idx.reshape(-1)), gy.reshape(-1).astype(np.float64))
    return gx.reshape(x_shape)


def _avg_windows(case: Case, include_pad: bool,
                 override: int | None) -> Iterator[tuple[int, int, slice, slice, int]]:
    """Yield (oh, ow, row slice, column slice, divisor) with PyTorch's divisor rules."""
    _, _, h, w = case.shape
    ho, wo = case.out_hw(dilation=False)
    (kh, kw), (sh, sw), (ph, pw) = case.kernel, case.stride, case.padding
    for oh in range(ho):
        for ow in range(wo):
            h0, w0 = oh * sh - ph, ow * sw - pw
            h1, w1 = min(h0 + kh, h + ph), min(w0 + kw, w + pw)
            padded = (h1 - h0) * (w1 - w0)
            h0, w0, h1, w1 = max(h0, 0), max(w0, 0), min(h1, h), min(w1, w)
            divisor = override or (padded if include_pad else (h1 - h0) * (w1 - w0))
            yield oh, ow, slice(h0, h1), slice(w0, w1), divisor


def ref_avg_forward(case: Case, x: np.ndarray, include_pad: bool,
                    override: int | None) -> np.ndarray:
    ho, wo = case.out_hw(dilation=False)
    y = np.zeros(x.shape[:2] + (ho, wo))
    for oh, ow, rows, cols, divisor in _avg_windows(case, include_pad, override):
        y[:, :, oh, ow] = x[:, :, rows, cols].astype(np.float64).sum(axis=(2, 3)) / divisor
    return y


def ref_avg_backward(case: Case, gy: np.ndarray, include_pad: bool,
                     override: int | None) -> np.ndarray:
    gx = np.zeros(case.shape)
    for oh, ow, rows, cols, divisor in _avg_windows(case, include_pad, override):
        gx[:, :, rows, cols] += gy[:, :, oh, ow, None, None].astype(np.float64) / divisor
    return gx


def _device(name: str) -> Device:
    if name == "cuda" and device_count() == 0:
        pytest.skip("no CUDA device")
    return Device(name)


def _host(a: Any) -> np.ndarray:
    return a.get() if hasattr(a, "get") else np.asarray(a)


def _close(actual: Any, expected: np.ndarray, dtype: type) -> None:
    actual = _host(actual)
    assert actual.dtype == dtype and actual.shape == expected.shape
    # max pooling is exact; an average sums at most 49 values then scales once: a few
    # float32 ulps (2^-24 each) of values of order 1, well under 1e-6 (1e-13 for float64)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol)


def _inputs(case: Case, dtype: type, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(sum(case.shape) + 31 * case.kernel[0])
    # Ties: few distinct values, so most windows hold their maximum more than once.
    x = rng.integers(-2, 3, case.shape) if ties else rng.standard_normal(case.shape)
    ho, wo = case.out_hw()
    return x.astype(dtype), rng.standard_normal(case.shape[:2] + (ho, wo)).astype(dtype)


def _run_max(dev: Device, case: Case, dtype: type, ties: bool) -> None:
    x, gy = _inputs(case, dtype, ties)
    y, idx = pool_cuda.max_pool2d_forward(dev, dev.xp.asarray(x), case.out_hw(), case.kernel,
                                          case.stride, case.padding, case.dilation)
    y_ref, idx_ref = ref_max_forward(case, x)
    _close(y, y_ref, dtype)
    np.testing.assert_array_equal(_host(idx), idx_ref)
    assert _host(idx).dtype == np.int64
    gx = pool_cuda.max_pool2d_backward(dev, dev.xp.asarray(gy), idx, x.shape, case.kernel,
                                       case.stride, case.padding, case.dilation)
    _close(gx, ref_max_backward(gy, idx_ref, x.shape), dtype)


def _run_avg(dev: Device, case: Case, dtype: type, include_pad: bool,
             override: int | None) -> None:
    x, _ = _inputs(case, dtype, ties=False)
    ho, wo = case.out_hw(dilation=False)
    gy = np.random.default_rng(5).standard_normal(case.shape[:2] + (ho, wo)).astype(dtype)
    args = (case.kernel, case.stride, case.padding, include_pad, override)
    _close(pool_cuda.avg_pool2d_forward(dev, dev.xp.asarray(x), (ho, wo), *args),
           ref_avg_forward(case, x, include_pad, override), dtype)
    _close(pool_cuda.avg_pool2d_backward(dev, dev.xp.asarray(gy), x.shape, *args),
           ref_avg_backward(case, gy, include_pad, override), dtype)


@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("name", list(CASES))
def test_emu_max_pool(name: str, ties: bool) -> None:
    _run_max(Device("emu"), CASES[name], np.float32, ties)


@pytest.mark.parametrize("override", [None, 5])
@pytest.mark.parametrize("include_pad", [True, False], ids=["with_pad", "without_pad"])
@pytest.mark.parametrize("name", AVG_CASES)
def test_emu_avg_pool(name: str, include_pad: bool, override: int | None) -> None:
    _run_avg(Device("emu"), CASES[name], np.float32, include_pad, override)


def test_emu_float64() -> None:
    dev, case = Device("emu"), CASES["3x3_s2_pad1_ceil"]
    _run_max(dev, case, np.float64, ties=True)
    _run_avg(dev, case, np.float64, include_pad=False, override=None)


@pytest.mark.parametrize("seed", SEEDS)
def test_emu_fiber_orders(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DLCORE_EMU_SEED", str(seed))
    dev, case = Device("emu"), CASES["overlap_s1"]
    _run_max(dev, case, np.float32, ties=True)
    _run_avg(dev, case, np.float32, include_pad=True, override=None)


def test_max_pool_nan_wins() -> None:
    """A NaN in a window is the maximum (PyTorch propagates it), whatever comes after it."""
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    x[0, 0, 0, 1] = np.nan
    y, idx = pool_cuda.max_pool2d_forward(Device("emu"), x, (2, 2), (2, 2), (2, 2), (0, 0), (1, 1))
    assert np.isnan(y[0, 0, 0, 0]) and idx[0, 0, 0, 0] == 1
    np.testing.assert_array_equal(y[0, 0].ravel()[1:], [7, 13, 15])


def test_max_pool_window_entirely_in_padding() -> None:
    """With dilation a window can miss the input (H=2, k=2, d=3, p=1: taps at -1 and 2): it
    yields -inf and index -1, and its gradient reaches no input."""
    dev = Device("emu")
    x = np.ones((1, 1, 2, 2), np.float32)
    y, idx = pool_cuda.max_pool2d_forward(dev, x, (1, 1), (2, 2), (1, 1), (1, 1), (3, 3))
    assert y.shape == (1, 1, 1, 1) and y[0, 0, 0, 0] == -np.inf and idx[0, 0, 0, 0] == -1
    gx = pool_cuda.max_pool2d_backward(dev, np.ones_like(y), idx, x.shape, (2, 2), (1, 1),
                                       (1, 1), (3, 3))
    np.testing.assert_array_equal(gx, np.zeros_like(x))


def test_ceil_mode_drops_window_starting_in_right_padding() -> None:
    # H=5, k=2, s=2, p=1: (5 + 2 - 2 + 1) // 2 + 1 = 4, but window 3 would start at 5 = H + p.
    assert pool2d_out_size(5, 2, 2, 1, 1, True) == 3
    assert pool2d_out_size(6, 2, 2, 1, 1, True) == 4
    assert pool2d_out_size(5, 2, 2, 1, 1, False) == 3


CPU = Device("cpu")


@pytest.mark.parametrize("name", ["3x3_s2_pad1_ceil", "dilation3_ceil", "overlap_s1"])
def test_emu_agrees_with_cpu_path(name: str) -> None:
    """The kernels agree with the NumPy path, forward and backward (the same contract)."""
    cpu = pool_cpu
    dev, case = Device("emu"), CASES[name]
    x, gy = _inputs(case, np.float32, ties=True)
    window = (case.kernel, case.stride, case.padding, case.dilation)
    y, idx = pool_cuda.max_pool2d_forward(dev, x, case.out_hw(), *window)
    y_cpu, idx_cpu = cpu.max_pool2d_forward(CPU, x, case.out_hw(), *window)
    np.testing.assert_array_equal(y, y_cpu)
    np.testing.assert_array_equal(idx, idx_cpu)
    np.testing.assert_allclose(pool_cuda.max_pool2d_backward(dev, gy, idx, x.shape, *window),
                               cpu.max_pool2d_backward(CPU, gy, idx_cpu, x.shape, *window),
                               rtol=1e-6, atol=1e-6)
    if case.dilation != (1, 1):
        return
    for include_pad, override in ((True, None), (False, None), (False, 4)):
        avg = (case.kernel, case.stride, case.padding, include_pad, override)
        out_hw = case.out_hw(dilation=False)
        np.testing.assert_allclose(pool_cuda.avg_pool2d_forward(dev, x, out_hw, *avg),
                                   cpu.avg_pool2d_forward(CPU, x, out_hw, *avg),
                                   rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(pool_cuda.avg_pool2d_backward(dev, gy, x.shape, *avg),
                                   cpu.avg_pool2d_backward(CPU, gy, x.shape, *avg),
                                   rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(CASES))
def test_cuda_matches_reference(name: str, dtype: type) -> None:
    dev = _device("cuda")
    _run_max(dev, CASES[name], dtype, ties=True)
    if name in AVG_CASES:
        _run_avg(dev, CASES[name], dtype, include_pad=False, override=None)

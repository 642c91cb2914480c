"""pool2d kernels (kernels/pool2d.cu through dlcore.ops.pool_cuda) against float64 NumPy
references, on ``emu`` (checked mode, several fiber-order seeds) and ``cuda`` (skipped without a
GPU): odd sizes, partial tiles, planes sharing a block (down to 1x1), threads serving several
planes, stride > kernel, dilation 2 and 3, padding up to half the window, ceil_mode,
count_include_pad both ways, divisor_override, batch 1, ties and NaNs in max pooling, and
float16 and bfloat16 against a stated rounding bound."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import ml_dtypes
import numpy as np
import pytest

from dlcore.device import Device, device_count
from dlcore.kernels import recorded_launches
from dlcore.ops import pool_cpu, pool_cuda
from dlcore.ops.pool import pool2d_out_size

SEEDS = (1, 2, 3)
EMU, CPU = Device("emu"), Device("cpu")
# Round to nearest float16: relative error at most 2^-11 per rounding (unit roundoff).
HALF_ROUNDING = 2.0**-11
# Round to nearest bfloat16 (8 significand bits): at most 2^-8 relative per rounding.
BF16_ROUNDING = 2.0**-8
BF16 = np.dtype(ml_dtypes.bfloat16)


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
    # 17 x 19 = 323 inputs: two tiles of 192 positions, the second partial
    "partial_tiles": Case((1, 2, 17, 19), (3, 2), (1, 1), (1, 0), (1, 1), True),
    # 1x1 output planes: 256 planes side by side in one block
    "1x1_out_planes": Case((3, 5, 3, 3), (3, 3), (2, 2), (1, 1), (1, 1), False),
    "1x1_planes": Case((2, 7, 1, 1), (1, 1), (1, 1), (0, 0), (1, 1), False),
}
AVG_CASES = [k for k, c in CASES.items() if c.dilation == (1, 1)]


def ref_max_forward(case: Case, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scan each window row-major, keeping the first strict maximum, or the last NaN;
    padding never wins."""
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
                    better = (idx[:, :, oh, ow] < 0) | (v > y[:, :, oh, ow]) | np.isnan(v)
                    y[:, :, oh, ow] = np.where(better, v, y[:, :, oh, ow])
                    idx[:, :, oh, ow] = np.where(better, ih * w + iw, idx[:, :, oh, ow])
    return y, idx


def ref_max_backward(gy: np.ndarray, idx: np.ndarray, x_shape: tuple[int, ...]
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(gx, sum of |terms| per input) in float64; windows with index -1 add nothing."""
    n, c, h, w = x_shape
    gx, mass = np.zeros((n * c, h * w)), np.zeros((n * c, h * w))
    rows = np.repeat(np.arange(n * c), gy[0, 0].size)
    keep = idx.reshape(-1) >= 0
    at = (rows[keep], idx.reshape(-1)[keep])
    g = gy.reshape(-1)[keep].astype(np.float64)
    np.add.at(gx, at, g)
    np.add.at(mass, at, np.abs(g))
    return gx.reshape(x_shape), mass.reshape(x_shape)


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
                    override: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(y, sum of |terms| / divisor) in float64."""
    ho, wo = case.out_hw(dilation=False)
    y, mass = np.zeros(x.shape[:2] + (ho, wo)), np.zeros(x.shape[:2] + (ho, wo))
    for oh, ow, rows, cols, divisor in _avg_windows(case, include_pad, override):
        win = x[:, :, rows, cols].astype(np.float64)
        y[:, :, oh, ow] = win.sum(axis=(2, 3)) / divisor
        mass[:, :, oh, ow] = np.abs(win).sum(axis=(2, 3)) / divisor
    return y, mass


def ref_avg_backward(case: Case, gy: np.ndarray, include_pad: bool,
                     override: int | None) -> tuple[np.ndarray, np.ndarray]:
    gx, mass = np.zeros(case.shape), np.zeros(case.shape)
    for oh, ow, rows, cols, divisor in _avg_windows(case, include_pad, override):
        g = gy[:, :, oh, ow, None, None].astype(np.float64) / divisor
        gx[:, :, rows, cols] += g
        mass[:, :, rows, cols] += np.abs(g)
    return gx, mass


def _device(name: str) -> Device:
    if name == "cuda" and device_count() == 0:
        pytest.skip("no CUDA device")
    return Device(name)


def _host(a: Any) -> np.ndarray:
    return Device("cuda").to_host(a) if hasattr(a, "get") else np.asarray(a)


def _close(actual: Any, expected: tuple[np.ndarray, np.ndarray], dtype: type) -> None:
    """``actual`` within the rounding bound of ``dtype`` of the float64 ``expected`` value,
    whose second member is the sum of the magnitudes of its terms."""
    value, mass = expected
    actual = _host(actual)
    assert actual.dtype == dtype and actual.shape == value.shape
    if dtype == np.float16:
        # Sums run in float32 (a few 2^-24 of the terms' magnitude), the result is rounded
        # to float16 once: 2^-11 of its size, or half the subnormal spacing 2^-24 near zero.
        bound = HALF_ROUNDING * np.abs(value) + 2.0**-20 * mass + 2.0**-25
        err = np.abs(actual.astype(np.float64) - value)
        assert np.all(err <= bound), f"worst excess {np.max(err - bound)} over the bound"
        return
    if dtype == BF16:
        # The same, rounded to bfloat16 once: 2^-8 of its size (its subnormals, below
        # 2^-126, do not occur here).
        bound = BF16_ROUNDING * np.abs(value) + 2.0**-20 * mass
        err = np.abs(actual.astype(np.float64) - value)
        assert np.all(err <= bound), f"worst excess {np.max(err - bound)} over the bound"
        # not computed in float32 or wider and left unrounded: wherever the exact value has
        # no bfloat16 representation, some result must differ from it (an average over one
        # element, as in the 1x1 and stride > kernel cases, is exact; seen failing on an H200)
        unrepresentable = value != value.astype(BF16).astype(np.float64)
        assert not unrepresentable.any() or np.any(err[unrepresentable] > 0)
        return
    # max pooling is exact; an average sums at most 49 values then scales once: a few
    # float32 ulps (2^-24 each) of values of order 1, well under 1e-6 (1e-13 for float64)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(actual, value, rtol=tol, atol=tol)


def _inputs(case: Case, dtype: type, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(sum(case.shape) + 31 * case.kernel[0])
    # Ties: few distinct values, so most windows hold their maximum more than once.
    x = rng.integers(-2, 3, case.shape) if ties else rng.standard_normal(case.shape)
    ho, wo = case.out_hw()
    return x.astype(dtype), rng.standard_normal(case.shape[:2] + (ho, wo)).astype(dtype)


def _run_max(dev: Device, case: Case, dtype: type, ties: bool) -> None:
    x, gy = _inputs(case, dtype, ties)
    y, idx = pool_cuda.max_pool2d_forward(dev, dev.asarray(x), case.out_hw(), case.kernel,
                                          case.stride, case.padding, case.dilation)
    y_ref, idx_ref = ref_max_forward(case, x)
    np.testing.assert_array_equal(_host(y).astype(np.float64), y_ref)  # exact, float16 too
    assert _host(y).dtype == dtype
    np.testing.assert_array_equal(_host(idx), idx_ref)
    assert _host(idx).dtype == np.int32
    gx = pool_cuda.max_pool2d_backward(dev, dev.asarray(gy), idx, x.shape, case.kernel,
                                       case.stride, case.padding, case.dilation)
    _close(gx, ref_max_backward(gy, idx_ref, x.shape), dtype)


def _run_avg(dev: Device, case: Case, dtype: type, include_pad: bool,
             override: int | None) -> None:
    x, _ = _inputs(case, dtype, ties=False)
    ho, wo = case.out_hw(dilation=False)
    gy = np.random.default_rng(5).standard_normal(case.shape[:2] + (ho, wo)).astype(dtype)
    args = (case.kernel, case.stride, case.padding, include_pad, override)
    _close(pool_cuda.avg_pool2d_forward(dev, dev.asarray(x), (ho, wo), *args),
           ref_avg_forward(case, x, include_pad, override), dtype)
    _close(pool_cuda.avg_pool2d_backward(dev, dev.asarray(gy), x.shape, *args),
           ref_avg_backward(case, gy, include_pad, override), dtype)


@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("name", list(CASES))
def test_emu_max_pool(name: str, ties: bool) -> None:
    _run_max(EMU, CASES[name], np.float32, ties)


@pytest.mark.parametrize("override", [None, 5])
@pytest.mark.parametrize("include_pad", [True, False], ids=["with_pad", "without_pad"])
@pytest.mark.parametrize("name", AVG_CASES)
def test_emu_avg_pool(name: str, include_pad: bool, override: int | None) -> None:
    _run_avg(EMU, CASES[name], np.float32, include_pad, override)


def test_emu_float64() -> None:
    case = CASES["3x3_s2_pad1_ceil"]
    _run_max(EMU, case, np.float64, ties=True)
    _run_avg(EMU, case, np.float64, include_pad=False, override=None)


@pytest.mark.parametrize("name", list(CASES))
def test_emu_float16_within_one_rounding(name: str) -> None:
    """__half storage, float arithmetic: maxima and indices exact, sums within one float16
    rounding of the float64 value of the same (float16) inputs."""
    _run_max(EMU, CASES[name], np.float16, ties=False)
    _run_max(EMU, CASES[name], np.float16, ties=True)
    if name in AVG_CASES:
        _run_avg(EMU, CASES[name], np.float16, include_pad=True, override=None)
        _run_avg(EMU, CASES[name], np.float16, include_pad=False, override=3)


@pytest.mark.parametrize("name", ["3x3_s2_pad1_ceil", "dilation2_pad", "partial_tiles",
                                  "1x1_out_planes"])
def test_emu_bfloat16_within_one_rounding(name: str) -> None:
    """__nv_bfloat16 storage, float arithmetic: maxima and indices exact, sums within one
    bfloat16 rounding of the float64 value of the same (bfloat16) inputs."""
    _run_max(EMU, CASES[name], BF16, ties=False)
    _run_max(EMU, CASES[name], BF16, ties=True)
    if name in AVG_CASES:
        _run_avg(EMU, CASES[name], BF16, include_pad=True, override=None)
        _run_avg(EMU, CASES[name], BF16, include_pad=False, override=3)


@pytest.mark.parametrize("seed", SEEDS)
def test_emu_fiber_orders(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DLCORE_EMU_SEED", str(seed))
    case = CASES["overlap_s1"]
    _run_max(EMU, case, np.float32, ties=True)
    _run_avg(EMU, case, np.float32, include_pad=True, override=None)


def _all_outputs(dtype: type) -> list[np.ndarray]:
    x, gy = _inputs(CASES["overlap_s1"], dtype, ties=True)
    geo = ((3, 3), (1, 1), (1, 1))
    y, idx = pool_cuda.max_pool2d_forward(EMU, x, (5, 6), *geo, (1, 1))
    return [y, idx, pool_cuda.max_pool2d_backward(EMU, gy, idx, x.shape, *geo, (1, 1)),
            pool_cuda.avg_pool2d_forward(EMU, x, (5, 6), *geo, False, None),
            pool_cuda.avg_pool2d_backward(EMU, gy, x.shape, *geo, True, None)]


def test_emu_float16_is_deterministic(monkeypatch: pytest.MonkeyPatch) -> None:
    """The float16 kernels give the same bits under other block and fiber orders (the float32
    and float64 ones are checked in tests/kernels/test_kernel_determinism.py)."""
    first = None
    for seed in (0, 1, 7, 1234):
        monkeypatch.setenv("DLCORE_EMU_SEED", str(seed))
        bits = [o.tobytes() for o in _all_outputs(np.float16)]
        assert first is None or bits == first, f"DLCORE_EMU_SEED={seed} differs"
        first = bits


@pytest.fixture
def few_threads(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Launch at most 256 threads in all, so each thread serves many planes."""
    monkeypatch.setattr(pool_cuda, "TARGET_THREADS", 256)
    pool_cuda._launch_shape.cache_clear()
    yield
    pool_cuda._launch_shape.cache_clear()


@pytest.mark.usefixtures("few_threads")
@pytest.mark.parametrize("name", ["3x3_s2_pad1_ceil", "partial_tiles", "1x1_out_planes"])
def test_emu_threads_serving_several_planes(name: str) -> None:
    case = CASES[name]._replace(shape=(10, 13) + CASES[name].shape[2:])  # 130 planes
    with recorded_launches() as launches:
        _run_max(EMU, case, np.float32, ties=True)
        _run_avg(EMU, case, np.float32, include_pad=False, override=None)
    for launch in launches:
        assert launch.grid[1] * launch.block[1] < 130, launch  # the plane loop runs


def test_recorded_launches_name_the_kernels_and_their_shape() -> None:
    """Which kernel served each call, for each dtype, and the 2-D launch: a plane of 9x9
    outputs fills 81-wide blocks three planes deep; one of 17x17 inputs takes two tiles."""
    x = np.zeros((2, 4, 17, 17), np.float16)
    gy = np.zeros((2, 4, 9, 9), np.float16)
    geo = ((3, 3), (2, 2), (1, 1))
    with recorded_launches() as launches:
        y, idx = pool_cuda.max_pool2d_forward(EMU, x, (9, 9), *geo, (1, 1))
        pool_cuda.max_pool2d_backward(EMU, gy, idx, x.shape, *geo, (1, 1))
        pool_cuda.avg_pool2d_forward(EMU, x.astype(np.float64), (9, 9), *geo, True, None)
        pool_cuda.avg_pool2d_backward(EMU, gy.astype(np.float32), x.shape, *geo, True, None)
    assert [(launch.kernel, launch.grid, launch.block) for launch in launches] == [
        ("pool2d.cu:maxpool2d_forward<__half>", (1, 3), (81, 3)),
        ("pool2d.cu:maxpool2d_backward<__half>", (2, 8), (160, 1)),
        ("pool2d.cu:avgpool2d_forward<double>", (1, 3), (81, 3)),
        ("pool2d.cu:avgpool2d_backward<float>", (2, 8), (160, 1)),
    ]


class _PoisonedEmpty:
    """The emulator device, except that ``xp.empty`` returns arrays full of a poison value
    (NaN, or -7 for indices), so an output element no kernel writes shows."""

    def __init__(self) -> None:
        self.kernels = EMU.kernels
        self.use = EMU.use
        self.xp = self

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)

    @staticmethod
    def empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        return np.full(shape, np.nan if np.dtype(dtype).kind == "f" else -7, dtype)


@pytest.mark.parametrize("name", ["partial_tiles", "stride_gt_kernel", "dilation3_ceil",
                                  "1x1_out_planes"])
def test_every_output_element_is_written(name: str) -> None:
    """Outputs are allocated without a fill: every element must come from a kernel (inputs
    no window covers, as with stride > kernel, get an explicit zero)."""
    dev, case = _PoisonedEmpty(), CASES[name]
    x, gy = _inputs(case, np.float32, ties=False)
    window = (case.kernel, case.stride, case.padding, case.dilation)
    y, idx = pool_cuda.max_pool2d_forward(dev, x, case.out_hw(), *window)
    gx = pool_cuda.max_pool2d_backward(dev, gy, idx, x.shape, *window)
    assert not np.isnan(y).any() and not (idx == -7).any() and not np.isnan(gx).any()
    if case.dilation == (1, 1):
        avg = (case.kernel, case.stride, case.padding, True, None)
        assert not np.isnan(pool_cuda.avg_pool2d_forward(dev, x, case.out_hw(), *avg)).any()
        assert not np.isnan(pool_cuda.avg_pool2d_backward(dev, gy, x.shape, *avg)).any()


def test_max_pool_nan_wins() -> None:
    """A NaN in a window is the maximum (PyTorch propagates it), whatever comes after it; of
    several NaNs the last one in scan order is the argmax (PyTorch's rule), on both paths."""
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    x[0, 0, 0, 1] = np.nan
    x[0, 0, 2, 2] = x[0, 0, 3, 2] = np.nan  # window (1, 1) holds two
    geo = ((2, 2), (2, 2), (0, 0), (1, 1))
    for dev, impl in ((EMU, pool_cuda), (CPU, pool_cpu)):
        y, idx = impl.max_pool2d_forward(dev, x, (2, 2), *geo)
        assert np.isnan(y[0, 0, 0, 0]) and idx[0, 0, 0, 0] == 1
        assert np.isnan(y[0, 0, 1, 1]) and idx[0, 0, 1, 1] == 14
        np.testing.assert_array_equal(y[0, 0].ravel()[1:3], [7, 13])


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_max_pool_window_entirely_in_padding(dtype: type) -> None:
    """With dilation a window can miss the input (H=2, k=2, d=3, p=1: taps at -1 and 2): it
    yields -inf and index -1, and its gradient reaches no input, on both paths."""
    x = np.ones((1, 1, 2, 2), dtype)
    geo = ((2, 2), (1, 1), (1, 1), (3, 3))
    for dev, impl in ((EMU, pool_cuda), (CPU, pool_cpu)):
        y, idx = impl.max_pool2d_forward(dev, x, (1, 1), *geo)
        assert y.shape == (1, 1, 1, 1) and y[0, 0, 0, 0] == -np.inf and idx[0, 0, 0, 0] == -1
        gx = impl.max_pool2d_backward(dev, np.ones_like(y), idx, x.shape, *geo)
        np.testing.assert_array_equal(gx, np.zeros_like(x))


def test_cpu_backward_of_a_missed_window_touches_no_other_plane() -> None:
    """Regression: the NumPy scatter added a window's gradient at plane offset + (-1), the last
    element of the previous plane."""
    x = np.ones((1, 2, 2, 2), np.float32)
    geo = ((2, 2), (1, 1), (1, 1), (3, 3))
    _, idx = pool_cpu.max_pool2d_forward(CPU, x, (1, 1), *geo)
    gx = pool_cpu.max_pool2d_backward(CPU, np.ones((1, 2, 1, 1), np.float32), idx, x.shape,
                                      *geo)
    np.testing.assert_array_equal(gx, np.zeros_like(x))


def test_ceil_mode_drops_window_starting_in_right_padding() -> None:
    # H=5, k=2, s=2, p=1: (5 + 2 - 2 + 1) // 2 + 1 = 4, but window 3 would start at 5 = H + p.
    assert pool2d_out_size(5, 2, 2, 1, 1, True) == 3
    assert pool2d_out_size(6, 2, 2, 1, 1, True) == 4
    assert pool2d_out_size(5, 2, 2, 1, 1, False) == 3


@pytest.mark.parametrize("dtype", [np.float32, np.float16, pytest.param(BF16, id="bfloat16")])
@pytest.mark.parametrize("name", ["3x3_s2_pad1_ceil", "dilation3_ceil", "overlap_s1",
                                  "partial_tiles"])
def test_emu_agrees_with_cpu_path(name: str, dtype: type) -> None:
    """The kernels agree with the NumPy path, forward and backward (the same contract): max
    pooling bit for bit (both sum a gradient in output order, in float32 for float16), the
    averages within a rounding (they sum in different orders)."""
    case = CASES[name]
    x, gy = _inputs(case, dtype, ties=True)
    window = (case.kernel, case.stride, case.padding, case.dilation)
    y, idx = pool_cuda.max_pool2d_forward(EMU, x, case.out_hw(), *window)
    y_cpu, idx_cpu = pool_cpu.max_pool2d_forward(CPU, x, case.out_hw(), *window)
    np.testing.assert_array_equal(y, y_cpu)
    assert idx.dtype == idx_cpu.dtype == np.int32
    np.testing.assert_array_equal(idx, idx_cpu)
    gx = pool_cuda.max_pool2d_backward(EMU, gy, idx, x.shape, *window)
    gx_cpu = pool_cpu.max_pool2d_backward(CPU, gy, idx_cpu, x.shape, *window)
    assert gx.dtype == gx_cpu.dtype == dtype
    np.testing.assert_array_equal(gx, gx_cpu)
    if case.dilation != (1, 1):
        return
    tol = {np.float32: 1e-6, np.float16: 2 * HALF_ROUNDING}.get(dtype, 2 * BF16_ROUNDING)
    for include_pad, override in ((True, None), (False, None), (False, 4)):
        avg = (case.kernel, case.stride, case.padding, include_pad, override)
        out_hw = case.out_hw(dilation=False)
        for got, want in ((pool_cuda.avg_pool2d_forward(EMU, x, out_hw, *avg),
                           pool_cpu.avg_pool2d_forward(CPU, x, out_hw, *avg)),
                          (pool_cuda.avg_pool2d_backward(EMU, gy, x.shape, *avg),
                           pool_cpu.avg_pool2d_backward(CPU, gy, x.shape, *avg))):
            assert got.dtype == want.dtype == dtype
            np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64),
                                       rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float16, pytest.param(BF16, id="bfloat16"), np.float32,
                                   np.float64])
@pytest.mark.parametrize("name", list(CASES))
def test_cuda_matches_reference(name: str, dtype: type) -> None:
    dev = _device("cuda")
    _run_max(dev, CASES[name], dtype, ties=True)
    if name in AVG_CASES:
        _run_avg(dev, CASES[name], dtype, include_pad=False, override=None)

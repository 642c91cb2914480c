"""conv2d kernels (kernels/conv2d.cu through dlcore.ops.conv_gemm_cuda) against float64 NumPy
references, on ``emu`` (checked mode, several fiber-order seeds) and ``cuda`` (skipped without a
GPU). The emulator runs each thread as a fiber, so the shapes stay tiny but cover the cases that
change the index arithmetic: odd sizes, stride > kernel, dilation 2 and 3, groups 1, 2 and
depthwise, padding larger than the kernel reach, 1x1 and 7x7, batch 1, several tiles, split-K."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pytest

from dlcore.device import Device, device_count
from dlcore.ops import conv_cpu, conv_cuda, conv_gemm_cuda

SEEDS = (1, 2, 3)


class Case(NamedTuple):
    n: int
    c: int
    h: int
    w: int
    f: int
    kh: int
    kw: int
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int

    def arrays(self, dtype: type) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(sum(self[:7]))
        x = rng.standard_normal((self.n, self.c, self.h, self.w)).astype(dtype)
        w = rng.standard_normal((self.f, self.c // self.groups, self.kh, self.kw)).astype(dtype)
        return x, w

    def args(self) -> tuple:
        return self.stride, self.padding, self.dilation, self.groups


CASES = {
    "3x3_odd": Case(2, 3, 7, 6, 5, 3, 3, (1, 1), (1, 1), (1, 1), 1),
    "groups2_dil2_asym": Case(1, 4, 9, 8, 6, 3, 2, (2, 3), (0, 1), (2, 2), 2),
    "depthwise_pad_big": Case(2, 4, 6, 7, 4, 3, 3, (1, 1), (3, 2), (1, 1), 4),
    "depthwise_mult2": Case(2, 3, 5, 5, 6, 3, 3, (2, 2), (1, 1), (1, 1), 3),
    "stride_gt_kernel_dil3": Case(1, 3, 11, 10, 2, 2, 2, (4, 3), (0, 0), (3, 3), 1),
    "1x1": Case(1, 2, 3, 4, 3, 1, 1, (1, 1), (0, 0), (1, 1), 1),
    "7x7": Case(1, 2, 9, 8, 3, 7, 7, (1, 1), (3, 3), (1, 1), 1),
    "multi_tile": Case(1, 3, 9, 9, 70, 1, 1, (1, 1), (0, 0), (1, 1), 1),
    "split_k": Case(3, 2, 10, 10, 3, 3, 3, (1, 1), (1, 1), (1, 1), 1),
    # wide enough for the 128 x 128 tile in every direction (rows >= 512, columns > 64)
    "tile128": Case(2, 72, 16, 16, 80, 3, 3, (1, 1), (1, 1), (1, 1), 1),
    "tile128_stride2": Case(2, 72, 31, 31, 80, 3, 3, (2, 2), (1, 1), (1, 1), 1),
    "tile128x64": Case(2, 64, 16, 16, 48, 3, 3, (1, 1), (1, 1), (1, 1), 1),
}


def out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _tap_slices(case: Case, r: int, s: int, ho: int, wo: int) -> tuple[slice, slice]:
    """Rows and columns of the padded input that tap (r, s) reads for every output."""
    (sh, sw), (dh, dw) = case.stride, case.dilation
    return (slice(r * dh, r * dh + sh * (ho - 1) + 1, sh),
            slice(s * dw, s * dw + sw * (wo - 1) + 1, sw))


def _dims(case: Case) -> tuple[int, int, int, int]:
    ho = out_size(case.h, case.kh, case.stride[0], case.padding[0], case.dilation[0])
    wo = out_size(case.w, case.kw, case.stride[1], case.padding[1], case.dilation[1])
    return ho, wo, case.c // case.groups, case.f // case.groups


def ref_forward(case: Case, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Direct convolution in float64: a loop over groups and taps, einsum over channels."""
    ho, wo, cg, fg = _dims(case)
    ph, pw = case.padding
    xpad = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    y = np.zeros((case.n, case.f, ho, wo))
    for g in range(case.groups):
        cs, fs = slice(g * cg, (g + 1) * cg), slice(g * fg, (g + 1) * fg)
        for r in range(case.kh):
            for s in range(case.kw):
                rows, cols = _tap_slices(case, r, s, ho, wo)
                y[:, fs] += np.einsum("nchw,fc->nfhw", xpad[:, cs, rows, cols], w[fs, :, r, s])
    return y


def ref_backward_data(case: Case, gy: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The adjoint of ref_forward: scatter every tap's contribution into a padded gx."""
    ho, wo, cg, fg = _dims(case)
    ph, pw = case.padding
    gx = np.zeros((case.n, case.c, case.h + 2 * ph, case.w + 2 * pw))
    for g in range(case.groups):
        cs, fs = slice(g * cg, (g + 1) * cg), slice(g * fg, (g + 1) * fg)
        for r in range(case.kh):
            for s in range(case.kw):
                rows, cols = _tap_slices(case, r, s, ho, wo)
                gx[:, cs, rows, cols] += np.einsum("nfhw,fc->nchw", gy[:, fs], w[fs, :, r, s])
    return gx[:, :, ph:ph + case.h, pw:pw + case.w]


def ref_backward_weight(case: Case, x: np.ndarray, gy: np.ndarray) -> np.ndarray:
    ho, wo, cg, fg = _dims(case)
    ph, pw = case.padding
    xpad = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    gw = np.zeros((case.f, cg, case.kh, case.kw))
    for g in range(case.groups):
        cs, fs = slice(g * cg, (g + 1) * cg), slice(g * fg, (g + 1) * fg)
        for r in range(case.kh):
            for s in range(case.kw):
                rows, cols = _tap_slices(case, r, s, ho, wo)
                gw[fs, :, r, s] = np.einsum("nfhw,nchw->fc", gy[:, fs], xpad[:, cs, rows, cols])
    return gw


def _device(name: str) -> Device:
    if name == "cuda" and device_count() == 0:
        pytest.skip("no CUDA device")
    return Device(name)


def _on(dev: Device, a: np.ndarray) -> Any:
    return dev.xp.asarray(a)


def _host(a: Any) -> np.ndarray:
    return a.get() if hasattr(a, "get") else np.asarray(a)


def _check(actual: Any, expected: np.ndarray, dtype: type, k: int = 300) -> None:
    actual = _host(actual)
    assert actual.dtype == dtype and actual.shape == expected.shape
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    # Against a float64 reference: a K-long float32 dot product (summed in 8-wide K steps,
    # FMA-contracted) is within about sqrt(K) * 2^-24 * |terms| of it: under 1e-5 of the
    # largest output for K <= 300, growing with sqrt(K) beyond; float64 likewise at 1e-12.
    tol = (1e-5 if dtype == np.float32 else 1e-12) * max(1.0, (k / 300) ** 0.5)
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale)


def _run_all(dev: Device, case: Case, dtype: type) -> None:
    x, w = case.arrays(dtype)
    ho, wo, _, _ = _dims(case)
    gy = np.random.default_rng(7).standard_normal((case.n, case.f, ho, wo)).astype(dtype)
    _, _, cg, fg = _dims(case)
    taps = case.kh * case.kw
    _check(conv_gemm_cuda.conv2d_forward(dev, _on(dev, x), _on(dev, w), (ho, wo), *case.args()),
           ref_forward(case, x, w), dtype, cg * taps)
    _check(conv_gemm_cuda.conv2d_backward_data(dev, _on(dev, gy), _on(dev, w), x.shape,
                                               *case.args()),
           ref_backward_data(case, gy.astype(np.float64), w.astype(np.float64)), dtype,
           fg * taps)
    _check(conv_gemm_cuda.conv2d_backward_weight(dev, _on(dev, x), _on(dev, gy), w.shape,
                                            *case.args()),
           ref_backward_weight(case, x, gy.astype(np.float64)), dtype, case.n * ho * wo)


@pytest.mark.parametrize("name", list(CASES))
def test_emu_float32_matches_reference(name: str) -> None:
    _run_all(Device("emu"), CASES[name], np.float32)


@pytest.mark.parametrize("name", ["groups2_dil2_asym", "split_k", "tile128_stride2"])
def test_emu_float64_matches_reference(name: str) -> None:
    _run_all(Device("emu"), CASES[name], np.float64)


@pytest.mark.parametrize("seed", SEEDS)
def test_emu_fiber_orders(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing barrier shows as a wrong result under some fiber order; split_k runs every
    kernel (two tiles of rows in forward, two K splits and the reduction in backward-weight)."""
    monkeypatch.setenv("DLCORE_EMU_SEED", str(seed))
    _run_all(Device("emu"), CASES["split_k"], np.float32)
    _run_all(Device("emu"), CASES["tile128_stride2"], np.float32)


def test_split_k_is_used() -> None:
    """The split_k case really takes the two-pass path (else the test above would not cover
    the reduction kernel)."""
    case = CASES["split_k"]
    ho, wo, cg, _ = _dims(case)
    step = conv_gemm_cuda.TABLE_STEP
    k_total = case.n * -(-ho * wo // step) * step  # each image's plane padded to 16
    splits, chunk = conv_gemm_cuda.split_k(k_total, -(-cg * case.kh * case.kw // 64), step)
    assert splits > 1 and chunk % step == 0 and splits * chunk >= k_total


@pytest.mark.parametrize(("name", "kernels"), [
    ("3x3_odd", ["conv2d_gemm<float, 64, 64>", "conv2d_gemm<float, 64, 64>",
                 "conv2d_wgrad<float, 64, 64>"]),
    ("tile128_stride2", ["conv2d_gemm<float, 128, 128>", "conv2d_gemm<float, 128, 128>",
                         "conv2d_wgrad<float, 128, 128>", "conv2d_backward_weight_reduce<float>"]),
    ("tile128x64", ["conv2d_gemm<float, 128, 64>", "conv2d_gemm<float, 128, 64>",
                    "conv2d_wgrad<float, 128, 64>", "conv2d_backward_weight_reduce<float>"]),
    ("1x1", []),  # pointwise: three GEMMs through xp.matmul (cuBLAS on cuda), no kernel of ours
])
def test_each_shape_runs_the_kernel_chosen_for_it(name: str, kernels: list[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the dispatcher (dlcore.ops.conv_cuda) with TF32 off: the SIMT tiles by shape,
    cuBLAS for 1x1; with TF32 on (the default) float32 goes to the tensor cores instead."""
    from dlcore.backends import cudnn
    from dlcore.kernels import recorded_launches

    case, dev = CASES[name], Device("emu")
    x, w = case.arrays(np.float32)
    ho, wo, _, _ = _dims(case)
    gy = np.random.default_rng(7).standard_normal((case.n, case.f, ho, wo)).astype(np.float32)

    def run_all() -> list[str]:
        with recorded_launches() as launches:
            conv_cuda.conv2d_forward(dev, x, w, (ho, wo), *case.args())
            conv_cuda.conv2d_backward_data(dev, gy, w, x.shape, *case.args())
            conv_cuda.conv2d_backward_weight(dev, x, gy, w.shape, *case.args())
        return [rec.kernel.partition(":")[2] for rec in launches]

    monkeypatch.setattr(cudnn, "allow_tf32", False)
    assert run_all() == kernels
    monkeypatch.setattr(cudnn, "allow_tf32", True)
    tc = run_all()
    assert (tc == [] if name == "1x1" else
            all(k.startswith("conv2d_tc_") and k.endswith("<float>") for k in tc) and tc)


def test_backward_data_phases_hold_only_the_taps_that_land() -> None:
    """Stride 2, 3x3, padding 1: split by stride phase, the four phases' K are Fg times
    1x1, 1x2, 2x1 and 2x2 taps: 9 taps in all where one GEMM over every gx row would run
    4 x 9 (75% of its multiply-adds on taps that land between gy rows)."""
    fg = 5
    _, phases = conv_gemm_cuda._backward_data_tables(3, fg, (9, 9), (5, 5), (3, 3), (2, 2), (1, 1),
                                                (1, 1))
    records = phases.reshape(-1, 8)
    assert records[:, 1].tolist() == [fg * 1, fg * 2, fg * 2, fg * 4]
    assert records[:, 2:4].tolist() == [[5, 5], [5, 4], [4, 5], [4, 4]]  # gx rows per phase


def test_empty_batch_gives_zero_gradients() -> None:
    dev = Device("emu")
    x = np.zeros((0, 2, 5, 5), np.float32)
    w = np.ones((3, 2, 3, 3), np.float32)
    y = conv_gemm_cuda.conv2d_forward(dev, x, w, (3, 3), (1, 1), (0, 0), (1, 1), 1)
    assert y.shape == (0, 3, 3, 3)
    gw = conv_gemm_cuda.conv2d_backward_weight(dev, x, y, w.shape, (1, 1), (0, 0), (1, 1), 1)
    np.testing.assert_array_equal(gw, np.zeros_like(w))


CPU = Device("cpu")


def test_emu_agrees_with_cpu_path() -> None:
    """The kernels agree with the NumPy path (the same contract: device first)."""
    cpu = conv_cpu
    dev = Device("emu")
    for name in ("groups2_dil2_asym", "stride_gt_kernel_dil3"):
        case = CASES[name]
        x, w = case.arrays(np.float32)
        ho, wo, _, _ = _dims(case)
        gy = np.random.default_rng(3).standard_normal((case.n, case.f, ho, wo)).astype(np.float32)
        pairs = [
            (conv_gemm_cuda.conv2d_forward(dev, x, w, (ho, wo), *case.args()),
             cpu.conv2d_forward(CPU, x, w, (ho, wo), *case.args())),
            (conv_gemm_cuda.conv2d_backward_data(dev, gy, w, x.shape, *case.args()),
             cpu.conv2d_backward_data(CPU, gy, w, x.shape, *case.args())),
            (conv_gemm_cuda.conv2d_backward_weight(dev, x, gy, w.shape, *case.args()),
             cpu.conv2d_backward_weight(CPU, x, gy, w.shape, *case.args())),
        ]
        # both float32, summed in different orders (BLAS blocks vs 16-wide K tiles with FMA):
        # each is within ~1e-5 of the exact value (see _check), so 1e-4 bounds the pair
        for ours, theirs in pairs:
            np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(CASES))
def test_cuda_matches_reference(name: str, dtype: type) -> None:
    _run_all(_device("cuda"), CASES[name], dtype)


@pytest.mark.parametrize("name", ["3x3_odd", "tile128", "1x1"])
def test_bias_is_added_by_the_forward_kernel(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """conv2d's bias rides in the GEMM's epilogue: one launch, y + b exactly as a separate add
    would give it (the add is the epilogue's last operation on the same float32 sum)."""
    from dlcore.backends import cudnn
    from dlcore.kernels import recorded_launches

    monkeypatch.setattr(cudnn, "allow_tf32", False)
    case, dev = CASES[name], Device("emu")
    x, w = case.arrays(np.float32)
    b = np.random.default_rng(5).standard_normal(case.f).astype(np.float32)
    ho, wo, _, _ = _dims(case)
    plain = _host(conv_cuda.conv2d_forward(dev, x, w, (ho, wo), *case.args()))
    with recorded_launches() as launches:
        y = _host(conv_cuda.conv2d_forward(dev, x, w, (ho, wo), *case.args(), bias=b))
    assert len(launches) == (0 if name == "1x1" else 1)
    np.testing.assert_array_equal(y, plain + b.reshape(1, -1, 1, 1))


def test_tiles_give_identical_bits_so_autotuning_cannot_change_results(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """cudnn.benchmark times both tiles on the first call of a shape and keeps the winner;
    the result is bit-identical whichever wins (same K order per output, tile-independent
    split of backward-weight), and later calls launch only the winner."""
    from dlcore.backends import cudnn
    from dlcore.kernels import recorded_launches

    case, dev = CASES["tile128_stride2"], Device("emu")
    x, w = case.arrays(np.float32)
    ho, wo, _, _ = _dims(case)
    gy = np.random.default_rng(2).standard_normal((case.n, case.f, ho, wo)).astype(np.float32)

    def all_three() -> list[np.ndarray]:
        return [_host(conv_gemm_cuda.conv2d_forward(dev, x, w, (ho, wo), *case.args())),
                _host(conv_gemm_cuda.conv2d_backward_data(dev, gy, w, x.shape, *case.args())),
                _host(conv_gemm_cuda.conv2d_backward_weight(dev, x, gy, w.shape, *case.args()))]

    default = all_three()
    monkeypatch.setattr(conv_gemm_cuda, "tile_for", lambda *args: (64, 64))
    for small, big in zip(all_three(), default):
        np.testing.assert_array_equal(small, big)
    monkeypatch.setattr(cudnn, "benchmark", True)
    monkeypatch.setattr(conv_gemm_cuda, "_tuned_tiles", {})
    with recorded_launches() as first:
        tuned = all_three()
    with recorded_launches() as second:
        all_three()
    for a, b in zip(tuned, default):
        np.testing.assert_array_equal(a, b)
    assert len(conv_gemm_cuda._tuned_tiles) == 3
    tiles = {rec.kernel.partition(", ")[2] for rec in first if ", " in rec.kernel}
    assert tiles == {"128, 128>", "128, 64>", "64, 64>"}  # all three timed
    assert len(second) == 4  # forward, backward-data, backward-weight and its reduce


@pytest.mark.parametrize("tf32", [False, True])
@pytest.mark.parametrize("name", ["depthwise_pad_big", "depthwise_mult2"])
def test_depthwise_shapes_run_the_depthwise_kernels(name: str, tf32: bool,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """groups == C with one channel per filter: kernels/conv2d_depthwise.cu in every direction,
    ahead of the tensor cores (which would fill 1/128 of their tile) whatever allow_tf32 says;
    the results are checked against float64 references."""
    from dlcore.backends import cudnn
    from dlcore.kernels import recorded_launches

    monkeypatch.setattr(cudnn, "allow_tf32", tf32)
    case, dev = CASES[name], Device("emu")
    x, w = case.arrays(np.float32)
    ho, wo, _, _ = _dims(case)
    gy = np.random.default_rng(7).standard_normal((case.n, case.f, ho, wo)).astype(np.float32)
    with recorded_launches() as launches:
        y = conv_cuda.conv2d_forward(dev, x, w, (ho, wo), *case.args())
        gx = conv_cuda.conv2d_backward_data(dev, gy, w, x.shape, *case.args())
        gw = conv_cuda.conv2d_backward_weight(dev, x, gy, w.shape, *case.args())
    assert launches and all(rec.kernel.startswith("conv2d_depthwise.cu:") for rec in launches)
    taps = case.kh * case.kw
    _check(y, ref_forward(case, x, w), np.float32, taps)
    _check(gx, ref_backward_data(case, gy.astype(np.float64), w.astype(np.float64)),
           np.float32, taps * case.f // case.c)
    _check(gw, ref_backward_weight(case, x, gy.astype(np.float64)), np.float32,
           case.n * ho * wo)

"""Behaviour pinned down for survivors of a mutation sample over pooling (dlcore.ops.pool,
dlcore.ops.pool_cpu) and the CPU recurrent cells (dlcore.ops.rnn_cpu): each test checks
something no test of the suite checked before, against an independent reference (NumPy,
the emulated kernels, PyTorch's documented semantics, or values worked out by hand)."""

from __future__ import annotations

import numpy as np
import pytest

import dlcore
from dlcore.device import Device
from dlcore.ops import pool as pool_mod
from dlcore.ops import pool_cpu, pool_cuda
from dlcore.ops.pool import adaptive_avg_pool2d, adaptive_max_pool2d, avg_pool2d, max_pool2d
from dlcore.ops.rnn import rnn_layer

CPU, EMU = Device("cpu"), Device("emu")
EPS = 2.0 ** -24  # half an ulp of 1.0 in float32: 1 + EPS rounds (to even) back to 1


# ---- argument errors ----------------------------------------------------------------------


def test_pool_argument_errors_name_the_public_function() -> None:
    """A bad input's message starts with the function the user called, as the other ops'
    messages do."""
    flat = dlcore.ones(4, 4)
    with pytest.raises(ValueError, match=r"^max_pool2d: expected a 3-D"):
        max_pool2d(flat, 2)  # x_max_pool2d__mutmut_10
    with pytest.raises(ValueError, match=r"^adaptive_max_pool2d: expected a 3-D"):
        adaptive_max_pool2d(flat, 2)  # x_adaptive_max_pool2d__mutmut_8
    with pytest.raises(ValueError, match=r"^max_pool2d: padding \(2, 2\)"):
        max_pool2d(dlcore.ones(1, 1, 6, 6), 2, padding=2)  # x_max_pool2d__mutmut_27


@pytest.mark.parametrize("call,match", [
    (lambda x: max_pool2d(x, 0), r"^max_pool2d: kernel_size must be an int or a pair of ints >= 1"),
    (lambda x: max_pool2d(x, 2, stride=(1, 0)), r"^max_pool2d: stride must be .* >= 1, got"),
    (lambda x: avg_pool2d(x, 2, padding=-1), r"^avg_pool2d: padding must be .* >= 0, got -1"),
    (lambda x: max_pool2d(x, 2, dilation=0), r"^max_pool2d: dilation must be .* >= 1, got 0"),
])
def test_bad_window_arguments_name_the_op_and_the_argument(call, match) -> None:
    """Each window argument's error says which function and which argument, and the bound."""
    with pytest.raises(ValueError, match=match):
        call(dlcore.ones(1, 1, 6, 6))


def test_padding_is_bounded_per_dim_by_half_of_that_dims_kernel() -> None:
    """padding[i] <= kernel[i] // 2 dim by dim: (1, 0) with kernel (3, 1) and (0, 1) with
    kernel (1, 3) are valid; padding 2 in one dim of a 3x3 kernel is not."""
    x = dlcore.ones(1, 1, 4, 4)
    assert tuple(max_pool2d(x, (3, 1), stride=1, padding=(1, 0)).shape) == (1, 1, 4, 4)
    assert tuple(max_pool2d(x, (1, 3), stride=1, padding=(0, 1)).shape) == (1, 1, 4, 4)
    for padding in ((2, 0), (0, 2)):
        with pytest.raises(ValueError, match="half of kernel_size"):
            max_pool2d(x, 3, padding=padding)


def test_plane_limit_checks_the_input_and_the_output_plane(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With the limit lowered to 100 elements a plane: a 9x11 input (99) pools; a 20x4 input
    (80) whose kernel 2, stride 1, padding 1 output is 21x5 (105) is refused; a 10x10
    input (exactly 100) pools."""
    monkeypatch.setattr(pool_mod, "MAX_PLANE", 100)
    assert tuple(max_pool2d(dlcore.ones(1, 1, 9, 11), 2).shape) == (1, 1, 4, 5)
    assert tuple(avg_pool2d(dlcore.ones(1, 1, 10, 10), 2).shape) == (1, 1, 5, 5)
    with pytest.raises(ValueError, match=r"output \(21, 5\)\) holds 2\^31 or more"):
        max_pool2d(dlcore.ones(1, 1, 20, 4), 2, stride=1, padding=1)


@pytest.mark.skipif(np.dtype(np.longdouble) == np.float64, reason="longdouble is float64 here")
def test_pool_of_an_unsupported_float_dtype_is_a_type_error_naming_the_op() -> None:
    """long double passes the floating-point check but no pooling path takes it: a
    TypeError that starts with the op's name, never a silent computation."""
    x = dlcore.Tensor._make(np.zeros((1, 1, 4, 4), np.longdouble), CPU)
    with pytest.raises(TypeError, match=r"^max_pool2d: dtype float\d+ is not supported"):
        max_pool2d(x, 2)  # MaxPool2d.forward__mutmut_5, _8
    with pytest.raises(TypeError, match=r"^avg_pool2d: dtype float\d+ is not supported"):
        avg_pool2d(x, 2)  # AvgPool2d.forward__mutmut_5, _11


# ---- public functions ---------------------------------------------------------------------


def test_unbatched_pools_squeeze_only_the_batch_dim() -> None:
    """A (C, H, W) input gives (C, OH, OW): with C = 1 and a 1x1 output, every unit dim
    but the batch one is kept (as torch's unbatched pooling)."""
    x = dlcore.ones(1, 2, 2)
    assert tuple(avg_pool2d(x, 2).shape) == (1, 1, 1)  # x_avg_pool2d__mutmut_43
    assert tuple(adaptive_avg_pool2d(x, 1).shape) == (1, 1, 1)  # x_adaptive_avg_pool2d__62
    assert tuple(max_pool2d(x, 2).shape) == (1, 1, 1)
    y, idx = adaptive_max_pool2d(x, 1, return_indices=True)
    assert tuple(y.shape) == tuple(idx.shape) == (1, 1, 1)


def test_avg_pool2d_divisor_override_one_gives_window_sums() -> None:
    """divisor_override=1 is a valid (positive) divisor: each output is its window's sum."""
    x = np.arange(16.0, dtype=np.float32).reshape(1, 1, 4, 4)
    y = avg_pool2d(dlcore.tensor(x), 2, divisor_override=1)  # x_avg_pool2d__mutmut_32
    ref = x.reshape(1, 1, 2, 2, 2, 2).sum(axis=(3, 5))
    np.testing.assert_array_equal(y.numpy(), ref)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_global_average_pool_of_16_bit_floats_rounds_the_mean_once(dtype: str) -> None:
    """adaptive_avg_pool2d(x, 1) of float16/bfloat16 is the mean computed in float32 and
    rounded once (the 16-bit weights 1/49 of a 16-bit matrix product would be off by an
    ulp)."""
    rng = np.random.default_rng(0)
    x64 = rng.standard_normal((1, 2, 7, 7))
    x = dlcore.tensor(x64.astype(np.float32)).to(getattr(dlcore, dtype))
    wide = x.float().numpy().astype(np.float64)
    got = adaptive_avg_pool2d(x, 1)  # x_adaptive_avg_pool2d__mutmut_25
    assert got.dtype == getattr(dlcore, dtype)
    ref = dlcore.tensor(wide.mean(axis=(2, 3), keepdims=True).astype(np.float32)).to(
        getattr(dlcore, dtype))
    np.testing.assert_array_equal(got.float().numpy(), ref.float().numpy())


def test_adaptive_max_pool2d_gradient_adds_in_float32_in_output_order() -> None:
    """3x3 -> 2x2 adaptive windows ([0, 2) and [1, 3) per dim) all hold the centre, the
    maximum: its float32 gradient is gy summed in float32 in output order, as PyTorch's CPU
    kernel adds: ((1 + EPS) + EPS) + EPS = 1 in float32 (each addition rounds to even),
    where a float64 sum would round 1 + 3 EPS to 1 + 2^-22."""
    x = np.zeros((1, 1, 3, 3), np.float32)
    x[0, 0, 1, 1] = 1.0
    tx = dlcore.tensor(x, requires_grad=True)
    y = adaptive_max_pool2d(tx, 2)
    gy = np.array([[[[1.0, EPS], [EPS, EPS]]]], np.float32)
    y.backward(dlcore.tensor(gy))  # AdaptiveMaxPool2d.backward__mutmut_23
    ref = np.zeros_like(x)
    ref[0, 0, 1, 1] = 1.0
    assert tx.grad.dtype == dlcore.float32
    np.testing.assert_array_equal(tx.grad.numpy(), ref)


def test_empty_stride_means_the_kernel_size() -> None:
    """stride=() or [] is PyTorch's default, the kernel size (as stride=None)."""
    x = dlcore.tensor(np.arange(36.0, dtype=np.float32).reshape(1, 1, 6, 6))
    ref = np.arange(36.0).reshape(2, 3, 2, 3)[:, 2, :, 2].reshape(1, 1, 2, 2)  # 3x3 maxima
    for stride in ((), []):
        np.testing.assert_array_equal(max_pool2d(x, 3, stride=stride).numpy(), ref)
        means = np.arange(36.0).reshape(2, 3, 2, 3).mean(axis=(1, 3)).reshape(1, 1, 2, 2)
        np.testing.assert_allclose(avg_pool2d(x, 3, stride=stride).numpy(), means, rtol=1e-6)


def test_adaptive_output_size_none_keeps_that_dim_and_bad_sizes_are_refused() -> None:
    """output_size (None, 2) keeps H; a size that is not a pair of positive ints raises."""
    x = np.arange(24.0, dtype=np.float32).reshape(1, 1, 3, 8)
    got = adaptive_avg_pool2d(dlcore.tensor(x), (None, 2))
    np.testing.assert_allclose(got.numpy(), x.reshape(1, 1, 3, 2, 4).mean(axis=4), rtol=1e-6)
    for bad in ((2, 2, 2), (0, 2)):
        with pytest.raises(ValueError, match=r"^adaptive_max_pool2d: output_size must be"):
            adaptive_max_pool2d(dlcore.tensor(x), bad)


def _ref_adaptive_max(x: np.ndarray, oh: int, ow: int) -> tuple:
    """PyTorch's adaptive max pooling per window [floor(o*size/out), ceil((o+1)*size/out)),
    scanned in row-major order: a value replaces the best if greater or NaN."""
    h, w = x.shape
    y, idx = np.empty((oh, ow)), np.empty((oh, ow), np.int64)
    for a in range(oh):
        for b in range(ow):
            best, arg = -np.inf, -1
            for r in range(a * h // oh, -(-(a + 1) * h // oh)):
                for q in range(b * w // ow, -(-(b + 1) * w // ow)):
                    if x[r, q] > best or np.isnan(x[r, q]) or arg < 0:
                        best, arg = x[r, q], r * w + q
            y[a, b], idx[a, b] = best, arg
    return y, idx


def test_adaptive_max_pool2d_ties_go_first_and_the_last_nan_wins() -> None:
    """Overlapping adaptive windows (5x7 -> 3x4) over integer ties and two NaNs: values and
    indices as PyTorch's row-major scan (first maximum; NaN replaces, so the last NaN)."""
    rng = np.random.default_rng(5)
    x = rng.integers(-2, 3, (5, 7)).astype(np.float64)
    x[1, 1] = x[1, 3] = x[3, 2] = np.nan
    y, idx = adaptive_max_pool2d(dlcore.tensor(x[None, None]), (3, 4), return_indices=True)
    ry, ridx = _ref_adaptive_max(x, 3, 4)
    np.testing.assert_array_equal(y.numpy()[0, 0], ry)
    np.testing.assert_array_equal(idx.numpy()[0, 0], ridx)


# ---- the cpu path (dlcore.ops.pool_cpu) ---------------------------------------------------


def test_compute_dtype_widens_only_the_16_bit_floats() -> None:
    """float16, bfloat16 (and cuda's bfloat16 words, uint16) compute in float32; float32
    and float64 in themselves."""
    for half in (np.float16, dlcore.bfloat16, np.uint16):
        assert pool_cpu.compute_dtype(np.dtype(half)) == np.float32  # compute_dtype__mutmut_3
    for full in (np.float32, np.float64):
        assert pool_cpu.compute_dtype(np.dtype(full)) == full


def test_max_pool_codes_give_flat_indices_only_when_asked_and_as_int32() -> None:
    """max_pool2d_forward_codes returns no flat indices unless flat=True; the saved codes'
    flat() are the contract's int32 indices h*W + w (here the maximum of each 2x2 window
    of an increasing ramp is its bottom-right element)."""
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    geo = ((2, 2), (2, 2), (0, 0), (1, 1))
    y, saved, flat = pool_cpu.max_pool2d_forward_codes(x, (2, 2), *geo)
    assert flat is None  # max_pool2d_forward_codes__mutmut_1
    np.testing.assert_array_equal(y, [[[[5.0, 7.0], [13.0, 15.0]]]])
    indices = saved.flat()
    assert indices.dtype == np.int32  # WindowLayout.flat__mutmut_7
    np.testing.assert_array_equal(indices, [[[[5, 7], [13, 15]]]])


def test_window_dilated_along_rows_only_without_an_input_tap_has_index_minus_one() -> None:
    """H = 1, kernel 2 rows, dilation 2, padding 1: each window's rows are -1 and 1, both
    outside the input, so every window is all padding: y = -inf and index -1 (the contract
    of dlcore.ops.pool), even though the columns are not dilated; no gradient reaches x."""
    tx = dlcore.ones(1, 1, 1, 3, requires_grad=True)
    y, idx = max_pool2d(tx, (2, 1), padding=(1, 0), dilation=(2, 1), return_indices=True)
    np.testing.assert_array_equal(y.numpy(), np.full((1, 1, 1, 3), -np.inf, np.float32))
    np.testing.assert_array_equal(idx.numpy(), np.full((1, 1, 1, 3), -1))  # flat__mutmut_40
    y.backward(dlcore.ones(1, 1, 1, 3))
    np.testing.assert_array_equal(tx.grad.numpy(), np.zeros((1, 1, 1, 3), np.float32))


def test_max_pool2d_float32_gradient_adds_in_float32_in_output_order() -> None:
    """3x3 input, kernel 2, stride 1: all four windows hold the centre, the maximum; its
    float32 gradient is ((1 + EPS) + EPS) + EPS = 1, gy summed in float32 in output order
    as PyTorch's CPU kernel adds (a float64 sum would round 1 + 3 EPS to 1 + 2^-22)."""
    x = np.zeros((1, 1, 3, 3), np.float32)
    x[0, 0, 1, 1] = 1.0
    tx = dlcore.tensor(x, requires_grad=True)
    y = max_pool2d(tx, 2, stride=1)
    y.backward(dlcore.tensor(np.array([[[[1.0, EPS], [EPS, EPS]]]], np.float32)))
    ref = np.zeros_like(x)
    ref[0, 0, 1, 1] = 1.0
    np.testing.assert_array_equal(tx.grad.numpy(), ref)  # max_pool2d_backward_codes__mutmut_5


def test_pools_run_many_small_blocks_of_planes(monkeypatch: pytest.MonkeyPatch) -> None:
    """With 1600-byte blocks an 8x8 float32 plane (256 bytes) makes blocks of 6 planes: 120
    planes run 20 blocks, with the same 2x2 maxima and means as NumPy's reshape."""
    monkeypatch.setattr(pool_cpu, "BLOCK_BYTES", 1600)
    x = np.random.default_rng(2).standard_normal((4, 30, 8, 8)).astype(np.float32)
    windows = x.reshape(4, 30, 4, 2, 4, 2)
    got = max_pool2d(dlcore.tensor(x), 2)  # WindowLayout.block__mutmut_17
    np.testing.assert_array_equal(got.numpy(), windows.max(axis=(3, 5)))
    np.testing.assert_allclose(avg_pool2d(dlcore.tensor(x), 2).numpy(),
                               windows.mean(axis=(3, 5)), rtol=1e-6, atol=1e-6)


def _emu_avg(x: np.ndarray, out_hw: tuple, kernel: tuple, divisor: int | None) -> np.ndarray:
    y = pool_cuda.avg_pool2d_forward(EMU, x, out_hw, kernel, kernel, (0, 0), True, divisor)
    return np.asarray(y)


def test_avg_pool2d_float32_multiplies_by_the_float32_reciprocal() -> None:
    """float32 average pooling multiplies each window sum by float32(1/divisor), the
    table the kernels use (the emulated kernel agrees): for divisor 3 and x = 1..40 this
    differs from a float64 x/3 rounded once (at x = 5, 7, 10, ...)."""
    x = np.arange(1.0, 41.0, dtype=np.float32).reshape(1, 1, 1, 40)
    ref = x * np.float32(1 / 3)
    assert (ref != (x.astype(np.float64) / 3).astype(np.float32)).any()  # the test can fail
    got = pool_cpu.avg_pool2d_forward(CPU, x, (1, 40), (1, 1), (1, 1), (0, 0), True, 3)
    np.testing.assert_array_equal(got, ref)  # avg_scale__mutmut_3
    np.testing.assert_array_equal(_emu_avg(x, (1, 40), (1, 1), 3), ref)


def test_avg_pool2d_float32_sums_its_window_in_float32_in_scan_order() -> None:
    """A float32 window [1, EPS, EPS] sums as (1 + EPS) + EPS = 1 in float32 (each addition
    rounds to even), as the emulated kernel does; a float64 sum would give 1 + 2^-23."""
    x = np.array([[[[1.0, EPS, EPS]]]], np.float32)
    got = pool_cpu.avg_pool2d_forward(CPU, x, (1, 1), (1, 3), (1, 3), (0, 0), True, 1)
    np.testing.assert_array_equal(got, [[[[1.0]]]])  # avg_pool2d_forward__mutmut_68
    np.testing.assert_array_equal(_emu_avg(x, (1, 1), (1, 3), 1), [[[[1.0]]]])


# ---- the cpu LSTM layer (dlcore.ops.rnn_cpu) ----------------------------------------------


def _lstm_inputs(T: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    N, I, H = 3, 4, 6
    shapes = [(T, N, I), (N, H), (N, H), (4 * H, I), (4 * H, H), (4 * H,), (4 * H,)]
    return [dlcore.tensor(rng.uniform(-0.6, 0.6, s).astype(np.float32), requires_grad=True)
            for s in shapes]


@pytest.mark.parametrize("T", [1, 2, 5])
def test_fused_float32_lstm_equals_the_per_step_cells(T: int) -> None:
    """The whole-layer path (no lengths) folds 1/2 into the sigmoid gates' pre-activations,
    a power of two that scales every rounding exactly: in float32 its outputs equal those of
    the per-step cells (lengths all T) bit for bit, forward and reverse, and its gradients
    (every input and weight, W_hh's from the saved states entering each step) agree to
    float32 rounding."""
    for reverse in (False, True):
        runs = []
        for lengths in (None, [T] * 3):
            inputs = _lstm_inputs(T, 3)
            out = rnn_layer(*inputs, mode="lstm", reverse=reverse, lengths=lengths)
            assert out[0].grad_fn.fused == (lengths is None)
            loss = sum((o * (k + 1.0)).sum() for k, o in enumerate(out))
            runs.append(([o.numpy() for o in out],
                         [g.numpy() for g in dlcore.autograd.grad(loss, inputs)]))
        (fused, fused_grads), (cells, cells_grads) = runs
        for a, b in zip(fused, cells):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(fused_grads, cells_grads):  # lstm_layer_forward__mutmut_122 (T=2)
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

"""max_pool2d / avg_pool2d / adaptive pools against direct-loop float64 references
(outputs, indices and gradients) on each device, float64 gradcheck (and gradgradcheck for max
pooling, whose double backward gathers at the saved indices), float16 against float32 within
one rounding, the user's int64 indices, and argument errors."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
from op_check import check, grad_ok, gradgrad_ok, on, rand

import dlcore
from dlcore.ops import pool_cpu
from dlcore.ops.pool import adaptive_avg_pool2d, adaptive_max_pool2d, avg_pool2d, max_pool2d


def _out(size, k, s, p, d, ceil):
    num = size + 2 * p - d * (k - 1) - 1
    out = (math.ceil(num / s) if ceil else num // s) + 1
    return out - 1 if ceil and (out - 1) * s >= size + p else out


def ref_max_pool(x, gy, k, s, p, d, ceil):
    """Per output: scan the window in row-major order, strict > (first maximum wins)."""
    n, c, h, w = x.shape
    oh, ow = _out(h, k[0], s[0], p[0], d[0], ceil), _out(w, k[1], s[1], p[1], d[1], ceil)
    y = np.full((n, c, oh, ow), -np.inf)
    idx = np.zeros((n, c, oh, ow), dtype=np.int64)
    gx = np.zeros_like(x)
    for b in range(n):
        for ch in range(c):
            for a in range(oh):
                for e in range(ow):
                    for i in range(k[0]):
                        for j in range(k[1]):
                            r, q = a * s[0] - p[0] + i * d[0], e * s[1] - p[1] + j * d[1]
                            if 0 <= r < h and 0 <= q < w and x[b, ch, r, q] > y[b, ch, a, e]:
                                y[b, ch, a, e], idx[b, ch, a, e] = x[b, ch, r, q], r * w + q
                    gx[b, ch].flat[idx[b, ch, a, e]] += gy[b, ch, a, e]
    return y, idx, gx


def ref_avg_pool(x, gy, k, s, p, ceil, include_pad, divisor):
    """PyTorch's divisor: the window clipped to the padded input (count_include_pad) or to
    the input; divisor_override replaces it."""
    n, c, h, w = x.shape
    oh, ow = _out(h, k[0], s[0], p[0], 1, ceil), _out(w, k[1], s[1], p[1], 1, ceil)
    y = np.zeros((n, c, oh, ow))
    gx = np.zeros_like(x)
    for a in range(oh):
        for e in range(ow):
            r0, q0 = a * s[0] - p[0], e * s[1] - p[1]
            r1, q1 = min(r0 + k[0], h + p[0]), min(q0 + k[1], w + p[1])
            size = (r1 - r0) * (q1 - q0)
            r0, q0, r1, q1 = max(r0, 0), max(q0, 0), min(r1, h), min(q1, w)
            div = divisor or (size if include_pad else (r1 - r0) * (q1 - q0))
            y[:, :, a, e] = x[:, :, r0:r1, q0:q1].sum(axis=(2, 3)) / div
            gx[:, :, r0:r1, q0:q1] += gy[:, :, a, e, None, None] / div
    return y, gx


# kernel, stride, padding, dilation, ceil_mode, input (N, C, H, W)
MAX_CASES = [
    ((2, 2), (2, 2), (0, 0), (1, 1), False, (2, 3, 8, 6)),
    ((3, 3), (2, 2), (1, 1), (1, 1), True, (1, 2, 9, 8)),    # ceil windows, max padding
    ((3, 2), (3, 1), (1, 1), (2, 1), False, (2, 2, 9, 7)),   # dilation 2, stride > kernel
    ((2, 3), (4, 2), (1, 1), (3, 2), True, (1, 2, 11, 10)),  # dilation 3, ceil
    ((1, 1), (2, 2), (0, 0), (1, 1), True, (1, 1, 5, 5)),
    ((3, 3), (1, 1), (1, 1), (1, 1), False, (2, 2, 5, 7)),   # overlapping windows
]
IDS = [f"case{i}" for i in range(len(MAX_CASES))]


@pytest.mark.parametrize("case", MAX_CASES, ids=IDS)
def test_max_pool2d_matches_reference(device, case):
    k, s, p, d, ceil, shape = case
    x = rand(*shape, seed=1)
    tx = on(device, x, requires_grad=True)
    y, idx = max_pool2d(tx, k, s, p, d, ceil, return_indices=True)
    gy = rand(*y.shape, seed=2)
    ry, ridx, rgx = ref_max_pool(x, gy, k, s, p, d, ceil)
    check(y, ry)
    check(idx, ridx)
    y.backward(on(device, gy))
    check(tx.grad, rgx)
    assert grad_ok(lambda a: max_pool2d(a, k, s, p, d, ceil), [x[:1, :1]], device)


def test_max_pool2d_double_backward(device):
    x = rand(1, 2, 7, 6, seed=9)  # distinct values: max is twice differentiable
    assert gradgrad_ok(lambda a: max_pool2d(a, 3, 2, 1, ceil_mode=True), [x], device)


def test_max_pool2d_double_backward_of_windows_without_input_taps(device):
    """Regression: H=2, k=2, d=3, p=1 gives windows whose taps all fall in the padding (index
    -1, y = -inf); the double backward's gather refused the negative index. Nothing flows."""
    x = on(device, rand(1, 2, 2, 3, seed=4), requires_grad=True)
    y = max_pool2d(x, 2, 1, 1, dilation=3)
    gy = on(device, np.ones(y.shape), requires_grad=True)
    (gx,) = dlcore.autograd.grad(y, [x], grad_outputs=gy, create_graph=True)
    (ggy,) = dlcore.autograd.grad(gx.sum(), [gy])
    check(gx, np.zeros(x.shape))
    check(ggy, np.zeros(y.shape))


def test_max_pool2d_user_indices_are_int64_and_a_copy(device):
    """PyTorch's dtype for return_indices; editing them leaves the gradient alone (backward
    uses the int32 indices it saved)."""
    x = rand(2, 2, 6, 5, seed=3)
    tx = on(device, x, requires_grad=True)
    y, idx = max_pool2d(tx, 2, return_indices=True)
    ry, ridx, rgx = ref_max_pool(x, np.ones(y.shape), (2, 2), (2, 2), (0, 0), (1, 1), False)
    check(idx, ridx)  # int64
    idx.zero_()
    y.sum().backward()
    check(tx.grad, rgx)
    assert isinstance(max_pool2d(tx, 2), dlcore.Tensor)  # one output without return_indices


def test_max_pool2d_several_nans_the_last_wins(device):
    """As PyTorch: a NaN beats any number, and a later NaN replaces an earlier one."""
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    x[0, 0, 0, 0] = x[0, 0, 1, 0] = np.nan
    y, idx = max_pool2d(on(device, x), 2, return_indices=True)
    assert np.isnan(y.numpy()[0, 0, 0, 0])
    np.testing.assert_array_equal(idx.numpy()[0, 0], [[4, 7], [13, 15]])


@pytest.mark.parametrize("op", ["max", "avg"])
def test_float16_within_one_rounding_of_float32(device, op):
    """float16 computes in float32 and rounds once: within 2^-11 (relative, round to nearest)
    of the float32 result on the same float16 values, gradients too; a maximum exactly."""
    x = rand(2, 3, 9, 8, seed=6).astype(np.float16)
    if op == "max":
        def pool(t):
            return max_pool2d(t, 3, 2, 1, ceil_mode=True)
    else:
        def pool(t):
            return avg_pool2d(t, 3, 2, 1, ceil_mode=True, count_include_pad=False)
    results = []
    for dtype in (np.float16, np.float32):
        tx = on(device, x.astype(dtype), requires_grad=True)
        y = pool(tx)
        gy = rand(*y.shape, seed=7).astype(np.float16).astype(dtype)
        y.backward(on(device, gy))
        assert y.dtype == tx.grad.dtype == dtype
        results.append((y.numpy().astype(np.float64), tx.grad.numpy().astype(np.float64)))
    if op == "max":
        np.testing.assert_array_equal(results[0][0], results[1][0])
    for half, single in zip(*results):  # one float16 rounding, and float32's own few 2^-24
        assert np.all(np.abs(half - single) <= 2.0**-11 * np.abs(single) + 2.0**-20)


def test_max_pool2d_ties_go_to_first(device):
    x = np.zeros((1, 1, 4, 4))  # every window is a tie
    x[0, 0, 3, 3] = -1.0
    tx = on(device, x, requires_grad=True)
    y, idx = max_pool2d(tx, 3, 1, return_indices=True)
    ry, ridx, rgx = ref_max_pool(x, np.ones((1, 1, 2, 2)), (3, 3), (1, 1), (0, 0), (1, 1),
                                 False)
    check(idx, ridx)
    y.sum().backward()
    check(tx.grad, rgx)
    assert tx.grad.numpy()[0, 0, 0, 0] == 1.0  # windows (0,0) picks the first of its zeros


def test_max_pool2d_float32_and_unbatched(device):
    x = rand(3, 7, 6, seed=4).astype(np.float32)
    y = max_pool2d(on(device, x), 2, ceil_mode=True)
    ry = ref_max_pool(x[None].astype(np.float64), np.zeros((1, 3, 4, 3)), (2, 2), (2, 2),
                      (0, 0), (1, 1), True)[0][0]
    check(y, ry, dtype=np.float32)


AVG_CASES = [
    ((2, 2), (2, 2), (0, 0), False, (2, 3, 8, 6)),
    ((3, 3), (2, 2), (1, 1), True, (1, 2, 8, 9)),
    ((3, 2), (1, 3), (1, 1), True, (2, 2, 7, 8)),
    ((5, 5), (3, 3), (2, 2), False, (1, 2, 9, 10)),
]


@pytest.mark.parametrize("divisor", [None, 3])
@pytest.mark.parametrize("include_pad", [True, False])
@pytest.mark.parametrize("case", AVG_CASES, ids=[f"case{i}" for i in range(len(AVG_CASES))])
def test_avg_pool2d_matches_reference(device, case, include_pad, divisor):
    k, s, p, ceil, shape = case
    x = rand(*shape, seed=1)
    tx = on(device, x, requires_grad=True)
    y = avg_pool2d(tx, k, s, p, ceil, include_pad, divisor)
    gy = rand(*y.shape, seed=2)
    ry, rgx = ref_avg_pool(x, gy, k, s, p, ceil, include_pad, divisor)
    check(y, ry)
    y.backward(on(device, gy))
    check(tx.grad, rgx)
    assert grad_ok(lambda a: avg_pool2d(a, k, s, p, ceil, include_pad, divisor),
                   [x[:1, :1]], device)


def _adaptive_windows(size, out):
    return [((o * size) // out, -(-(o + 1) * size // out)) for o in range(out)]


@pytest.mark.parametrize("out", [(1, 1), (3, 4), (5, 7), (2, None), (7, 3)], ids=str)
def test_adaptive_pools(device, out):
    x = np.round(rand(2, 2, 7, 6, seed=3) * 2)  # rounded: ties exercise first-max
    tx = on(device, x, requires_grad=True)
    oh, ow = out[0], out[1] or x.shape[3]
    ref_avg, ref_max = np.zeros((2, 2, oh, ow)), np.zeros((2, 2, oh, ow))
    ref_idx = np.zeros((2, 2, oh, ow), dtype=np.int64)
    for a, (r0, r1) in enumerate(_adaptive_windows(7, oh)):
        for e, (q0, q1) in enumerate(_adaptive_windows(6, ow)):
            win = x[:, :, r0:r1, q0:q1]
            ref_avg[:, :, a, e] = win.mean(axis=(2, 3))
            flat = win.reshape(2, 2, -1)
            ref_max[:, :, a, e] = flat.max(-1)
            first = flat.argmax(-1)
            ref_idx[:, :, a, e] = (r0 + first // (q1 - q0)) * 6 + q0 + first % (q1 - q0)
    check(adaptive_avg_pool2d(tx, out), ref_avg)
    y, idx = adaptive_max_pool2d(tx, out, return_indices=True)
    check(y, ref_max)
    check(idx, ref_idx)
    y.sum().backward()
    gx = np.zeros(x.shape)
    for b in range(2):
        for c in range(2):
            np.add.at(gx[b, c].reshape(-1), ref_idx[b, c].ravel(), 1.0)
    check(tx.grad, gx)
    assert grad_ok(lambda t: adaptive_avg_pool2d(t, out), [x[:1, :1]], device)
    xs = rand(1, 1, 7, 6, seed=8)  # distinct values: max is differentiable
    assert grad_ok(lambda t: adaptive_max_pool2d(t, out), [xs], device)


def test_plane_of_2_31_elements_is_refused():
    """Positions inside a plane and the saved indices are int32: a larger plane is refused
    before anything is computed (a broadcast view: no memory behind it)."""
    big = np.broadcast_to(np.zeros(1, np.float32), (1, 1, 2**16, 2**15))
    x = dlcore.Tensor._make(big, dlcore.device("cpu"))
    for call in (lambda: max_pool2d(x, 2), lambda: avg_pool2d(x, 2)):
        with pytest.raises(ValueError, match=r"\(65536, 32768\) .* 2\^31 or more elements"):
            call()


@pytest.mark.parametrize("call,match", [
    (lambda x: max_pool2d(x, 2, padding=2), "half of kernel_size"),
    (lambda x: max_pool2d(x, 0), "kernel_size"),
    (lambda x: max_pool2d(x, 2, stride=0), "stride"),
    (lambda x: max_pool2d(x, 7), "too small"),
    (lambda x: avg_pool2d(x, 3, padding=2), "half of kernel_size"),
    (lambda x: avg_pool2d(x, 2, divisor_override=0), "divisor_override"),
    (lambda x: max_pool2d(x[0, 0], 2), "input"),
    (lambda x: adaptive_avg_pool2d(x, 0), "output_size"),
])
def test_pool_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call(dlcore.ones(2, 3, 6, 6))


# ---- the cpu path's blocked loops and saved codes (dlcore.ops.pool_cpu) ---------------------

# kernel, stride, padding, dilation, ceil_mode, input: overlapping, disjoint (stride >= kernel),
# dilated, ceil and padded windows, unit column stride (the uncopied layout) and a kernel of
# more than 256 offsets (int32 codes)
CPU_MAX_CASES = MAX_CASES + [
    ((3, 3), (2, 2), (1, 1), (1, 1), False, (3, 5, 9, 10)),
    ((2, 2), (3, 3), (0, 0), (1, 1), True, (2, 3, 10, 8)),
    ((2, 3), (1, 1), (0, 0), (2, 1), False, (2, 3, 8, 9)),
    ((17, 17), (1, 1), (8, 8), (1, 1), False, (1, 2, 18, 17)),
    # tiling windows on small planes: the planes-last path (cropped rows/columns included)
    ((2, 2), (2, 2), (0, 0), (1, 1), False, (3, 4, 8, 8)),
    ((3, 3), (3, 3), (0, 0), (1, 1), False, (2, 3, 7, 8)),
    ((2, 1), (2, 1), (0, 0), (1, 1), False, (2, 2, 5, 4)),
]
PLANES_LAST_CASES = CPU_MAX_CASES[-3:]


def test_cpu_max_pool_planes_last_cases_take_that_path():
    """The last three cases run the planes-last path (so the reference test covers it); a
    ceil-mode window that reads past the input, a larger plane and padding do not."""
    def layout(k, s, p, d, ceil, shape):
        out = tuple(_out(shape[2 + i], k[i], s[i], p[i], d[i], ceil) for i in range(2))
        return pool_cpu.WindowLayout(shape, out, k, s, p, d)
    assert all(pool_cpu._planes_last(layout(*case)) for case in PLANES_LAST_CASES)
    for case in [((2, 2), (2, 2), (0, 0), (1, 1), True, (1, 1, 5, 5)),
                 ((2, 2), (2, 2), (0, 0), (1, 1), False, (1, 1, 10, 10)),
                 ((2, 2), (2, 2), (1, 1), (1, 1), False, (1, 1, 6, 6)),
                 ((3, 3), (2, 2), (0, 0), (1, 1), False, (1, 1, 7, 7))]:
        assert not pool_cpu._planes_last(layout(*case))


def test_cpu_max_pool_planes_last_window_of_minus_inf_picks_its_first_tap():
    """A window of -inf (no padding) wins at its first tap, and its gradient goes there."""
    x = np.zeros((1, 2, 4, 4))
    x[0, 1, 2:, :2] = -np.inf
    y, saved, flat = pool_cpu.max_pool2d_forward_codes(x, (2, 2), (2, 2), (2, 2), (0, 0),
                                                       (1, 1), flat=True)
    assert saved.padding_wins and np.isneginf(y[0, 1, 1, 0]) and flat[0, 1, 1, 0] == 8
    gx = pool_cpu.max_pool2d_backward_codes(np.ones((1, 2, 2, 2)), saved)
    assert gx[0, 1, 2, 0] == 1.0 and gx[0, 1].sum() == 4.0


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of a few planes, so the loops run several blocks and a partial last one."""
    monkeypatch.setattr(pool_cpu, "BLOCK_BYTES", 1600)


@pytest.mark.parametrize("values", ["distinct", "ties", "nans"])
@pytest.mark.parametrize("case", CPU_MAX_CASES, ids=[f"case{i}" for i in range(len(CPU_MAX_CASES))])
def test_cpu_max_pool_codes_match_the_loop_reference(case, values, small_blocks):
    """Forward (y, flat indices from the codes) and the codes' backward against the obvious
    loops; the backward also to the bit against the public flat-index scatter (same order),
    with an inf and a NaN in gy (they must not leak into other windows' positions)."""
    k, s, p, d, ceil, shape = case
    rng = np.random.default_rng(sum(shape))
    x = rng.integers(-2, 3, shape).astype(np.float64) if values == "ties" else rand(*shape)
    if values == "nans":
        x[rng.random(shape) < 0.15] = np.nan
    oh, ow = _out(shape[2], k[0], s[0], p[0], d[0], ceil), _out(shape[3], k[1], s[1], p[1],
                                                                  d[1], ceil)
    gy = rand(shape[0], shape[1], oh, ow, seed=2)
    y, saved, flat = pool_cpu.max_pool2d_forward_codes(x, (oh, ow), k, s, p, d, flat=True)
    gx = pool_cpu.max_pool2d_backward_codes(gy, saved)
    if values == "nans":  # the reference's strict > ignores NaNs: check the NaN rule apart
        ry, ridx = _ref_nan_max(x, k, s, p, d, (oh, ow))
        np.testing.assert_array_equal(y, ry)
        np.testing.assert_array_equal(flat, ridx)
    else:
        ry, ridx, rgx = ref_max_pool(x, gy, k, s, p, d, ceil)
        np.testing.assert_array_equal(y, ry)
        np.testing.assert_array_equal(flat, np.where(np.isneginf(ry), -1, ridx))
        np.testing.assert_allclose(gx, rgx, rtol=1e-15, atol=1e-15)
    np.testing.assert_array_equal(saved.flat(), flat)
    np.testing.assert_array_equal(gx, pool_cpu.max_pool2d_backward(None, gy, flat, shape, k, s,
                                                                   p, d))
    gy[0, 0, 0, 0], gy[-1, -1, -1, -1] = np.inf, np.nan
    np.testing.assert_array_equal(pool_cpu.max_pool2d_backward_codes(gy, saved),
                                  pool_cpu.max_pool2d_backward(None, gy, flat, shape, k, s, p, d))


def _ref_nan_max(x, k, s, p, d, out_hw):
    """Per output: PyTorch's rule, a value wins if greater or NaN (so the last NaN wins)."""
    n, c, h, w = x.shape
    y = np.full((n, c, *out_hw), -np.inf)
    idx = np.full((n, c, *out_hw), -1, dtype=np.int64)
    for b, ch, a, e in np.ndindex(n, c, *out_hw):
        for i, j in np.ndindex(*k):
            r, q = a * s[0] - p[0] + i * d[0], e * s[1] - p[1] + j * d[1]
            if 0 <= r < h and 0 <= q < w and (x[b, ch, r, q] > y[b, ch, a, e]
                                               or np.isnan(x[b, ch, r, q])):
                y[b, ch, a, e], idx[b, ch, a, e] = x[b, ch, r, q], r * w + q
    return y, idx


@pytest.mark.parametrize("dtype", [np.float16, "bfloat16"])
def test_cpu_max_pool_codes_half_precision_to_the_bit(dtype, small_blocks):
    """16-bit gradients are summed in float32 in output order and rounded once, as the
    public scatter (and the kernels) do."""
    dtype = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    x = np.round(rand(3, 4, 11, 12, seed=5) * 2).astype(dtype)  # ties
    gy = rand(3, 4, 6, 6, seed=6).astype(dtype)
    geo = ((3, 3), (2, 2), (1, 1), (1, 1))
    y, saved, flat = pool_cpu.max_pool2d_forward_codes(x, (6, 6), *geo, flat=True)
    ry, ridx = pool_cpu.max_pool2d_forward(None, x, (6, 6), *geo)
    assert y.dtype == dtype and saved.codes.dtype == np.uint8
    np.testing.assert_array_equal(flat, ridx)
    gx = pool_cpu.max_pool2d_backward_codes(gy, saved)
    assert gx.dtype == dtype
    np.testing.assert_array_equal(gx.astype(np.float32), pool_cpu.max_pool2d_backward(
        None, gy, flat, x.shape, *geo).astype(np.float32))


def test_cpu_max_pool_windows_of_minus_inf_keep_their_gradient_in_the_window():
    """Regression: a window of -inf picks its first tap, which may be padding; the flat index
    of a padding tap at column -1 named the previous row's last input (r*W - 1), and the
    gradient went there. The codes' backward drops a padding winner's gradient."""
    x = np.full((1, 1, 4, 4), -np.inf)
    y, saved, flat = pool_cpu.max_pool2d_forward_codes(x, (2, 2), (3, 3), (2, 2), (1, 1),
                                                       (1, 1), flat=True)
    assert saved.padding_wins and np.isneginf(y).all()
    gx = pool_cpu.max_pool2d_backward_codes(np.ones((1, 1, 2, 2)), saved)
    expected = np.zeros((1, 1, 4, 4))
    expected[0, 0, 1, 1] = 1.0  # window (1, 1) starts inside the input
    np.testing.assert_array_equal(gx, expected)


@pytest.mark.parametrize("case", AVG_CASES + [((3, 3), (1, 1), (0, 0), False, (2, 5, 9, 8))],
                         ids=[f"case{i}" for i in range(len(AVG_CASES) + 1)])
def test_cpu_avg_pool_blocks_match_the_reference(case, small_blocks):
    k, s, p, ceil, shape = case
    x = rand(*shape, seed=3)
    oh, ow = _out(shape[2], k[0], s[0], p[0], 1, ceil), _out(shape[3], k[1], s[1], p[1], 1,
                                                             ceil)
    gy = rand(shape[0], shape[1], oh, ow, seed=4)
    for include_pad, divisor in ((True, None), (False, None), (False, 3)):
        ry, rgx = ref_avg_pool(x, gy, k, s, p, ceil, include_pad, divisor)
        args = (k, s, p, include_pad, divisor)
        np.testing.assert_allclose(pool_cpu.avg_pool2d_forward(None, x, (oh, ow), *args), ry,
                                   rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(pool_cpu.avg_pool2d_backward(None, gy, shape, *args), rgx,
                                   rtol=1e-13, atol=1e-13)


def test_global_average_pool_float32_matches_the_mean(device):
    """The cpu's matrix-vector global average against NumPy's mean, values and gradient."""
    x = rand(4, 6, 7, 5, seed=5).astype(np.float32)
    tx = on(device, x, requires_grad=True)
    y = adaptive_avg_pool2d(tx, 1)
    check(y, x.mean(axis=(2, 3), keepdims=True), dtype=np.float32)
    y.backward(on(device, np.ones(y.shape, np.float32)))
    check(tx.grad, np.full(x.shape, 1 / 35), dtype=np.float32)

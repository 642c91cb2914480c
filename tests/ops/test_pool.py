"""max_pool2d / avg_pool2d / adaptive pools against direct-loop float64 references
(outputs, indices and gradients) on each device, float64 gradcheck, and argument errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from op_check import check, grad_ok, on, rand

import dlcore
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

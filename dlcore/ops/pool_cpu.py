"""Pooling on the CPU: the NumPy implementation of the array-level contract in
:mod:`dlcore.ops.pool` (and the oracle the CUDA kernels are validated against).

Every function takes the tensors' ``device`` first (unused here) so that both paths share
one signature. Shapes: x (N, C, H, W), y (N, C, OH, OW). Arguments arrive validated, as int
pairs, with output sizes from :func:`dlcore.ops.pool.pool2d_out_size` (PyTorch's arithmetic,
ceil_mode included).

Formulation: a reduction over the kernel offsets of strided slices of the (padded) input,
one whole-tensor ufunc per offset and never a loop over pixels. Max pooling takes the
first maximum in row-major scan order (a NaN wins, the last one where there are several, as
PyTorch); padding is -inf, so it never wins. Average pooling is separable (window sums over
columns, then rows) and scaled by :func:`avg_scale`, the table the kernels multiply by too.
Indices follow ``return_indices``: the flat position h*W + w inside each (n, c) plane, as
int32 (a plane holds fewer than 2^31 elements; dlcore.ops.pool widens them for the user).

float16 is computed in float32 and each result rounded to float16 once, as the kernels do
(NumPy's float16 ufuncs would round after every addition).
"""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np

Pair = tuple[int, int]

INDEX_DTYPE = np.dtype(np.int32)
_HALVES = (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16), np.dtype(np.uint16))


def compute_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype an op on ``dtype`` arrays computes in: float32 for float16 and bfloat16
    (ml_dtypes', or its uint16 words on cuda), else itself."""
    return np.dtype(np.float32) if dtype in _HALVES else np.dtype(dtype)


def _widened(a: np.ndarray) -> np.ndarray:
    return a.astype(compute_dtype(a.dtype), copy=False)


def _span(out: int, k: int, s: int, d: int) -> int:
    """Padded-input extent that ``out`` windows read."""
    return (out - 1) * s + d * (k - 1) + 1


def _padded(x: np.ndarray, padding: Pair, extent: Pair, fill: float) -> np.ndarray:
    """x placed at (ph, pw) in a buffer of ``extent`` filled with ``fill`` (x itself when
    no padding is needed; rows/cols past the extent are cropped)."""
    n, c, h, w = x.shape
    ph, pw = padding
    eh, ew = extent
    if ph == 0 and pw == 0 and eh <= h and ew <= w:
        return x
    buf = np.full((n, c, eh, ew), fill, dtype=x.dtype)
    hh, ww = min(h, eh - ph), min(w, ew - pw)
    buf[:, :, ph:ph + hh, pw:pw + ww] = x[:, :, :hh, :ww]
    return buf


def _window_views(buf: np.ndarray, out_hw: Pair, kernel: Pair, stride: Pair,
                  dilation: Pair) -> list[np.ndarray]:
    """The kh*kw strided views of ``buf`` (N, C, eh, ew), one per kernel offset, in
    row-major scan order; view k holds offset (k // kw, k % kw) of every window."""
    (oh, ow), (kh, kw), (sh, sw), (dh, dw) = out_hw, kernel, stride, dilation
    return [buf[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw]
            for i in range(kh) for j in range(kw)]


def max_pool2d_forward(device: Any, x: np.ndarray, out_hw: Pair, kernel: Pair, stride: Pair,
                       padding: Pair, dilation: Pair) -> tuple[np.ndarray, np.ndarray]:
    """(y, indices int32). y is a chain of ``np.maximum`` over the offset views (NaN
    propagates, as in PyTorch); the argmax is found afterwards by matching y against the views
    in reverse scan order, so the first maximum in scan order is written last and wins ties.
    This is 2*kh*kw passes over the output with no index arithmetic inside the loop (measured
    3x faster than tracking the argmax while reducing). float16 needs no widening: a maximum
    is one of its inputs, exactly."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    oh, ow = out_hw
    buf = _padded(x, padding, (_span(oh, kh, sh, dh), _span(ow, kw, sw, dw)), -np.inf)
    views = _window_views(buf, (oh, ow), kernel, stride, dilation)
    y = views[0].copy()
    for v in views[1:]:
        np.maximum(y, v, out=y)
    arg = np.empty(y.shape, dtype=np.int8 if kh * kw < 2**7 else np.int32)
    hit = np.empty(y.shape, dtype=bool)
    for k in range(len(views) - 1, -1, -1):
        np.equal(views[k], y, out=hit)
        np.putmask(arg, hit, k)  # measured 20% faster than copyto(where=)
    nan = np.isnan(y)
    if nan.any():  # rare: the last NaN of the window is the winner, as in PyTorch
        for k in range(len(views)):
            np.copyto(arg, k, where=nan & np.isnan(views[k]))
    # flat index inside the (n, c) plane: window origin + offset of the winning tap
    offset = np.array([(k // kw) * dh * w + (k % kw) * dw for k in range(kh * kw)], INDEX_DTYPE)
    origin = ((np.arange(oh, dtype=INDEX_DTYPE) * sh - ph)[:, None] * w
              + (np.arange(ow, dtype=INDEX_DTYPE) * sw - pw)[None, :])
    indices = offset[arg] + origin
    if dh > 1 or dw > 1:  # a dilated window may have no tap inside the input: index -1
        inside = np.outer(_has_tap(h, oh, kh, sh, ph, dh), _has_tap(w, ow, kw, sw, pw, dw))
        indices[..., ~inside] = -1
    return y, indices


def _has_tap(size: int, out: int, k: int, s: int, p: int, d: int) -> np.ndarray:
    """Per output along one dim: whether any of its window's taps lands in [0, size)."""
    taps = np.arange(out)[:, None] * s - p + np.arange(k)[None, :] * d
    return np.asarray(((taps >= 0) & (taps < size)).any(axis=1))


def max_pool2d_backward(device: Any, gy: np.ndarray, indices: np.ndarray,
                        x_shape: tuple[int, ...], kernel: Pair, stride: Pair, padding: Pair,
                        dilation: Pair) -> np.ndarray:
    """gx: each output gradient added at its argmax (windows may overlap, so an unbuffered
    ``np.add.at`` scatter, in output order; it measured 2.3x faster than ``bincount`` here).
    The window geometry is not needed on the CPU; a window without an input tap (index -1,
    only with dilation) adds nothing."""
    n, c, h, w = x_shape
    plane = (np.arange(n * c, dtype=np.int64) * (h * w)).reshape(n, c, 1, 1)
    at = (indices + plane).ravel()
    g = _widened(gy).ravel()
    if indices.size and indices.min() < 0:
        keep = indices.ravel() >= 0
        at, g = at[keep], g[keep]
    gx = np.zeros(n * c * h * w, dtype=compute_dtype(gy.dtype))  # the scatter's identity
    np.add.at(gx, at, g)
    return gx.reshape(x_shape).astype(gy.dtype, copy=False)


def avg_divisor(size: int, out: int, k: int, s: int, p: int,
                count_include_pad: bool) -> np.ndarray:
    """Per-output window sizes along one dim, PyTorch's rule: the window is clipped to the
    padded input, and (count_include_pad=False) further to the input itself."""
    start = np.arange(out) * s - p
    end = np.minimum(start + k, size + p)
    if count_include_pad:
        return end - start
    return np.minimum(end, size) - np.maximum(start, 0)


def avg_scale(x_hw: Pair, out_hw: Pair, kernel: Pair, stride: Pair, padding: Pair,
              count_include_pad: bool, divisor_override: int | None,
              dtype: np.dtype) -> np.ndarray:
    """The (OH, OW) factors 1/divisor each window sum is multiplied by, in ``dtype`` (the
    kernels multiply by the same table, see :mod:`dlcore.ops.pool_cuda`)."""
    if divisor_override:
        return np.full(out_hw, 1.0 / divisor_override, dtype=dtype)
    dh = avg_divisor(x_hw[0], out_hw[0], kernel[0], stride[0], padding[0], count_include_pad)
    dw = avg_divisor(x_hw[1], out_hw[1], kernel[1], stride[1], padding[1], count_include_pad)
    return (1.0 / np.outer(dh, dw)).astype(dtype)


def avg_pool2d_forward(device: Any, x: np.ndarray, out_hw: Pair, kernel: Pair, stride: Pair,
                       padding: Pair, count_include_pad: bool,
                       divisor_override: int | None) -> np.ndarray:
    """y: separable window sums (columns, then rows) times 1/divisor."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw) = kernel, stride
    oh, ow = out_hw
    eh, ew = _span(oh, kh, sh, 1), _span(ow, kw, sw, 1)
    buf = _padded(_widened(x), padding, (eh, ew), 0.0)
    row_sum = buf[:, :, :eh, 0:sw * (ow - 1) + 1:sw].copy()
    for j in range(1, kw):
        row_sum += buf[:, :, :eh, j:j + sw * (ow - 1) + 1:sw]
    y = row_sum[:, :, 0:sh * (oh - 1) + 1:sh].copy()
    for i in range(1, kh):
        y += row_sum[:, :, i:i + sh * (oh - 1) + 1:sh]
    y *= avg_scale((h, w), (oh, ow), kernel, stride, padding, count_include_pad,
                   divisor_override, y.dtype)
    return y.astype(x.dtype, copy=False)


def avg_pool2d_backward(device: Any, gy: np.ndarray, x_shape: tuple[int, ...], kernel: Pair,
                        stride: Pair, padding: Pair, count_include_pad: bool,
                        divisor_override: int | None) -> np.ndarray:
    """gx: gy/divisor spread over each window, separably (rows, then columns), into a
    padded buffer that is cropped at the end."""
    n, c, h, w = x_shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    oh, ow = gy.shape[2:]
    eh, ew = _span(oh, kh, sh, 1), _span(ow, kw, sw, 1)
    dtype = compute_dtype(gy.dtype)
    g = gy * avg_scale((h, w), (oh, ow), kernel, stride, padding, count_include_pad,
                       divisor_override, dtype)
    # zeros: the identity of the sums below (strided rows and columns are added, not set)
    rows = np.zeros((n, c, eh, ow), dtype=dtype)
    for i in range(kh):
        rows[:, :, i:i + sh * (oh - 1) + 1:sh] += g
    buf = np.zeros((n, c, max(eh, h + ph), max(ew, w + pw)), dtype=dtype)
    for j in range(kw):
        buf[:, :, :eh, j:j + sw * (ow - 1) + 1:sw] += rows
    return np.ascontiguousarray(buf[:, :, ph:ph + h, pw:pw + w], dtype=gy.dtype)

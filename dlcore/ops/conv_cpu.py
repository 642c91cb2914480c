"""Convolution on the CPU: the NumPy implementation of the array-level contract in
:mod:`dlcore.ops.conv` (and the oracle the CUDA kernels are validated against).

Every function takes the tensors' ``device`` first (unused here) so that both paths share
one signature. Shapes: x (N, C, H, W), w (O, C/G, kH, kW), y (N, O, OH, OW); G groups,
P = OH*OW pixels, K = kH*kW*C/G the reduction length. Arguments arrive validated and normalised
to int pairs.

Formulation (chosen by measurement on a 2-core VM, see dlcore/bench/conv.py):

* im2col in NHWC. The input is copied once into a zero-padded NHWC buffer; a strided view
  (N, OH, OW, kH, kW, C) of it is then copied to a contiguous column matrix in one
  ``ascontiguousarray``, whose innermost runs are C contiguous values. That copy measured
  27 ms for N=32, C=64, 56x56, 3x3 against 53 ms for the NCHW (Caffe) column layout, 76 ms
  for a loop of slice assignments over the kernel offsets, and the GEMM on it is 2-D
  row-major, so BLAS sees one large product.
* forward: y[n] = w (O, K) @ col[n].T (P, K)^T, written straight into the NCHW output
  (BLAS takes the transposed operand as a flag, no copy).
* backward weight: gw = gy (O, N*P) @ col (N*P, K); the column matrix is rebuilt rather than
  saved (saving it would keep kH*kW times the input alive per layer).
* backward data: stride 1 is a forward convolution of gy with the flipped weight; other
  strides build gcol = w^T @ gy and scatter it back (col2im) with one strided add per
  kernel offset.
* 1x1, stride 1, no padding: the NCHW input already is the column matrix (one GEMM).
* depthwise (C/G == 1): no GEMM has a useful shape, so y is a sum over the kernel offsets of
  shifted input slices times one weight per channel, all in NCHW.
* channels-last (``memory_format=dlcore.channels_last``, groups 1): an input whose strides
  are NHWC (:func:`dlcore.tensor.is_channels_last`) is its own padded buffer's source
  without a transposing copy (and is the buffer itself without padding), the GEMM's
  (N*P, O) product is the output's channels-last memory, and a channels-last gy is read
  in place by both backward GEMMs; outputs and input gradients come back channels-last,
  so a chain of convolutions, ReLUs and batch norms never transposes between layers.
  Grouped and depthwise convolutions read any layout and return NCHW.

Batches are processed in chunks so a column matrix never exceeds :data:`COL_BYTES`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import ml_dtypes
import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..tensor import is_channels_last

Pair = tuple[int, int]

F = TypeVar("F", bound=Callable[..., np.ndarray])


_HALVES = (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16))


def _float16_in_float32(fn: F) -> F:
    """float16 and bfloat16 arrays computed in float32 and the result rounded once: NumPy has
    no float16 BLAS (a float16 GEMM is a plain loop rounding every partial sum, ~25x slower
    and less accurate; ml_dtypes' bfloat16 has none either), and a GPU's 16-bit convolution
    accumulates in float32 too."""
    @functools.wraps(fn)
    def wrapper(device: Any, *arrays_and_args: Any, **kwargs: Any) -> np.ndarray:
        low = next((a.dtype for a in arrays_and_args[:2]
                    if getattr(a, "dtype", None) in _HALVES), None)
        if low is None:
            return fn(device, *arrays_and_args, **kwargs)
        wide = [a.astype(np.float32) if getattr(a, "dtype", None) == low else a
                for a in arrays_and_args]
        if kwargs.get("bias") is not None:
            kwargs["bias"] = kwargs["bias"].astype(np.float32)
        return fn(device, *wide, **kwargs).astype(low)
    return wrapper  # type: ignore[return-value]


COL_BYTES = 256 * 2**20  # largest column matrix built at once (bytes)
FLAT_GEMM_PIXELS = 1024  # below this many output pixels per image, one flat GEMM


def _chunks(n: int, per_sample: int) -> list[tuple[int, int]]:
    """Batch ranges whose column matrices stay within COL_BYTES."""
    step = max(1, min(n, COL_BYTES // max(per_sample, 1)))
    return [(i, min(i + step, n)) for i in range(0, n, step)]


def _is_pointwise(w_shape: tuple[int, ...], stride: Pair, padding: Pair) -> bool:
    """1x1 kernel, stride 1, no padding: a plain GEMM on the NCHW input, no columns."""
    return w_shape[2:] == (1, 1) and stride == (1, 1) and padding == (0, 0)


def _padded_nhwc(x: np.ndarray, padding: Pair) -> np.ndarray:
    """x (n, C, H, W) -> zero-padded (n, H + 2ph, W + 2pw, C), C contiguous."""
    n, c, h, w = x.shape
    ph, pw = padding
    if not (ph or pw) and is_channels_last(x):
        return x.transpose(0, 2, 3, 1)  # already the buffer: no copy
    buf = np.empty((n, h + 2 * ph, w + 2 * pw, c), dtype=x.dtype)
    if ph or pw:
        buf[:, :ph] = 0
        buf[:, h + ph:] = 0
        buf[:, :, :pw] = 0
        buf[:, :, w + pw:] = 0
    buf[:, ph:ph + h, pw:pw + w] = x.transpose(0, 2, 3, 1)
    return buf


def _window_view(buf: np.ndarray, out_hw: Pair, kernel: Pair, stride: Pair,
                 dilation: Pair) -> np.ndarray:
    """Strided view (n, OH, OW, kH, kW, C) of a padded NHWC buffer: no copy."""
    sn, sh, sw, sc = buf.strides
    shape = (buf.shape[0], *out_hw, *kernel, buf.shape[3])
    strides = (sn, sh * stride[0], sw * stride[1], sh * dilation[0], sw * dilation[1], sc)
    return as_strided(buf, shape, strides, writeable=False)


def _im2col(x: np.ndarray, out_hw: Pair, kernel: Pair, stride: Pair, padding: Pair,
            dilation: Pair, groups: int) -> np.ndarray:
    """Column matrices (G, n, P, kH*kW*C/G) of the input chunk x (n, C, H, W)."""
    n, c = x.shape[:2]
    win = _window_view(_padded_nhwc(x, padding), out_hw, kernel, stride, dilation)
    p = out_hw[0] * out_hw[1]
    if groups == 1:
        return np.ascontiguousarray(win).reshape(1, n, p, -1)
    win = win.reshape(*win.shape[:5], groups, c // groups).transpose(5, 0, 1, 2, 3, 4, 6)
    return np.ascontiguousarray(win).reshape(groups, n, p, -1)


def _weight_matrix(w: np.ndarray, groups: int) -> np.ndarray:
    """w (O, C/G, kH, kW) -> (G, O/G, kH*kW*C/G) in the column order (kH, kW, C)."""
    o = w.shape[0]
    return np.ascontiguousarray(w.transpose(0, 2, 3, 1)).reshape(groups, o // groups, -1)


@_float16_in_float32
def conv2d_forward(device: Any, x: np.ndarray, w: np.ndarray, out_hw: Pair, stride: Pair,
                   padding: Pair, dilation: Pair, groups: int,
                   bias: np.ndarray | None = None) -> np.ndarray:
    """y (N, O, *out_hw) = conv2d(x, w) + bias: im2col + GEMM (depthwise: shifted
    multiply-adds); the bias is added in place to the fresh output."""
    y = _forward(x, w, out_hw, stride, padding, dilation, groups)
    if bias is not None:
        y += bias.astype(y.dtype, copy=False).reshape(1, -1, 1, 1)
    return y


def _forward(x: np.ndarray, w: np.ndarray, out_hw: Pair, stride: Pair, padding: Pair,
             dilation: Pair, groups: int) -> np.ndarray:
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    oh, ow = out_hw
    if cg == 1 and groups > 1:
        return _depthwise_forward(x, w, (oh, ow), stride, padding, dilation, groups)
    if groups == 1 and is_channels_last(x):
        return _forward_nhwc(x, w, out_hw, stride, padding, dilation)
    if _is_pointwise(w.shape, stride, padding) and groups == 1:
        return np.matmul(w.reshape(o, c), x.reshape(n, c, h * wd)).reshape(n, o, oh, ow)
    y = np.empty((n, o, oh, ow), dtype=x.dtype)
    wmat = _weight_matrix(w, groups)
    y_groups = y.reshape(n, groups, o // groups, oh * ow)
    for n0, n1 in _chunks(n, oh * ow * kh * kw * c * x.itemsize):
        col = _im2col(x[n0:n1], (oh, ow), (kh, kw), stride, padding, dilation, groups)
        # NOTE: one matmul per group: a 4-D broadcast matmul measured 1.6x slower. Small
        # images (P < FLAT_GEMM_PIXELS) use one flat GEMM over all pixels of the chunk and
        # a transposed copy to NCHW: N products with only P columns each starve BLAS.
        for g in range(groups):
            if oh * ow < FLAT_GEMM_PIXELS:
                flat = col[g].reshape(-1, col.shape[3]) @ wmat[g].T  # (n*P, O/G)
                y_groups[n0:n1, g] = flat.reshape(n1 - n0, oh * ow, -1).transpose(0, 2, 1)
            else:
                np.matmul(wmat[g], col[g].transpose(0, 2, 1), out=y_groups[n0:n1, g])
    return y


def _forward_nhwc(x: np.ndarray, w: np.ndarray, out_hw: Pair, stride: Pair, padding: Pair,
                  dilation: Pair) -> np.ndarray:
    """Channels-last x, groups 1: y (N*P, O) = col (N*P, K) @ wmat^T (K, O), which already
    is the channels-last output; a 1x1 stride-1 kernel needs no columns at all."""
    n, c = x.shape[:2]
    o, _, kh, kw = w.shape
    oh, ow = out_hw
    y = np.empty((n, oh, ow, o), dtype=x.dtype)
    wmat = _weight_matrix(w, 1)[0]
    if _is_pointwise(w.shape, stride, padding):
        np.matmul(x.transpose(0, 2, 3, 1).reshape(-1, c), wmat.T, out=y.reshape(-1, o))
        return y.transpose(0, 3, 1, 2)
    for n0, n1 in _chunks(n, oh * ow * kh * kw * c * x.itemsize):
        col = _im2col(x[n0:n1], out_hw, (kh, kw), stride, padding, dilation, 1)
        np.matmul(col.reshape(-1, col.shape[3]), wmat.T, out=y[n0:n1].reshape(-1, o))
    return y.transpose(0, 3, 1, 2)


@_float16_in_float32
def conv2d_backward_weight(device: Any, x: np.ndarray, gy: np.ndarray, w_shape: tuple[int, ...],
                           stride: Pair, padding: Pair, dilation: Pair,
                           groups: int) -> np.ndarray:
    """gw = gy (O, N*P) @ col (N*P, K) per group, the column matrix rebuilt per chunk."""
    n, c = x.shape[:2]
    o, cg, kh, kw = w_shape
    oh, ow = gy.shape[2:]
    if cg == 1 and groups > 1:
        return _depthwise_backward_weight(x, gy, w_shape, stride, padding, dilation, groups)
    if groups == 1 and is_channels_last(gy):
        return _backward_weight_nhwc(x, gy, w_shape, stride, padding, dilation)
    if _is_pointwise(w_shape, stride, padding) and groups == 1:
        g = np.ascontiguousarray(gy.reshape(n, o, oh * ow).transpose(1, 0, 2))
        xt = np.ascontiguousarray(x.reshape(n, c, oh * ow).transpose(1, 0, 2))
        return (g.reshape(o, -1) @ xt.reshape(c, -1).T).reshape(w_shape)
    og = o // groups
    gw = np.zeros((groups, og, kh * kw * cg), dtype=x.dtype)
    gy_groups = gy.reshape(n, groups, og, oh * ow)
    for n0, n1 in _chunks(n, oh * ow * kh * kw * c * x.itemsize):
        col = _im2col(x[n0:n1], (oh, ow), (kh, kw), stride, padding, dilation, groups)
        g = np.ascontiguousarray(gy_groups[n0:n1].transpose(1, 2, 0, 3))
        gw += np.matmul(g.reshape(groups, og, -1), col.reshape(groups, -1, col.shape[-1]))
    return np.ascontiguousarray(
        gw.reshape(o, kh, kw, cg).transpose(0, 3, 1, 2))


def _backward_weight_nhwc(x: np.ndarray, gy: np.ndarray, w_shape: tuple[int, ...],
                          stride: Pair, padding: Pair, dilation: Pair) -> np.ndarray:
    """Channels-last gy, groups 1: gw (O, K) = gy (N*P, O)^T @ col (N*P, K), gy read in place
    (BLAS takes the transpose as a flag)."""
    n, c = x.shape[:2]
    o, _, kh, kw = w_shape
    oh, ow = gy.shape[2:]
    g = gy.transpose(0, 2, 3, 1)  # (n, OH, OW, O), contiguous
    if _is_pointwise(w_shape, stride, padding):
        xs = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).reshape(-1, c)
        return (g.reshape(-1, o).T @ xs).reshape(w_shape)
    gw = np.zeros((o, kh * kw * c), dtype=x.dtype)
    for n0, n1 in _chunks(n, oh * ow * kh * kw * c * x.itemsize):
        col = _im2col(x[n0:n1], (oh, ow), (kh, kw), stride, padding, dilation, 1)
        gw += g[n0:n1].reshape(-1, o).T @ col.reshape(-1, col.shape[3])
    return np.ascontiguousarray(gw.reshape(o, kh, kw, c).transpose(0, 3, 1, 2))


@_float16_in_float32
def conv2d_backward_data(device: Any, gy: np.ndarray, w: np.ndarray, x_shape: tuple[int, ...],
                         stride: Pair, padding: Pair, dilation: Pair,
                         groups: int) -> np.ndarray:
    """gx, the adjoint of the forward in x.

    Stride 1: a forward convolution of gy with the flipped, in/out-swapped weight and
    padding d*(k-1) - p (reuses the fast forward; measured 1.6x faster than col2im).
    Otherwise: gcol (n, K, P) = w^T @ gy in NCHW order, then col2im, one strided add per
    kernel offset into a padded NCHW buffer (NCHW keeps the adds long when C is small,
    as in a 3-channel stem).
    """
    n, c, h, wd = x_shape
    o, cg, kh, kw = w.shape
    oh, ow = gy.shape[2:]
    ph, pw = padding
    dh, dw = dilation
    flip_pad = (dh * (kh - 1) - ph, dw * (kw - 1) - pw)
    fits = oh + dh * (kh - 1) - 2 * ph == h and ow + dw * (kw - 1) - 2 * pw == wd
    if stride == (1, 1) and min(flip_pad) >= 0 and fits:
        og = o // groups
        wf = w[:, :, ::-1, ::-1].reshape(groups, og, cg, kh, kw).transpose(0, 2, 1, 3, 4)
        wf = np.ascontiguousarray(wf).reshape(groups * cg, og, kh, kw)
        return conv2d_forward(device, gy, wf, (h, wd), (1, 1), flip_pad, dilation, groups)
    if cg == 1 and groups > 1:
        return _depthwise_backward_data(gy, w, x_shape, stride, padding, dilation, groups)
    if groups == 1 and is_channels_last(gy):
        return _backward_data_nhwc(gy, w, x_shape, stride, padding, dilation)
    og = o // groups
    wmat = w.reshape(groups, og, cg * kh * kw)
    gy_groups = gy.reshape(n, groups, og, oh * ow)
    gx = np.empty(x_shape, dtype=gy.dtype)
    for n0, n1 in _chunks(n, oh * ow * kh * kw * c * gy.itemsize):
        m = n1 - n0
        gcol = np.empty((m, groups, cg * kh * kw, oh * ow), dtype=gy.dtype)
        for g in range(groups):
            np.matmul(wmat[g].T, gy_groups[n0:n1, g], out=gcol[:, g])
        gcol = gcol.reshape(m, c, kh, kw, oh, ow)
        buf = np.zeros((m, c, h + 2 * ph, wd + 2 * pw), dtype=gy.dtype)
        for i in range(kh):
            for j in range(kw):
                rows, cols = _offset_slices(i, j, (oh, ow), stride, dilation)
                buf[:, :, rows, cols] += gcol[:, :, i, j]
        gx[n0:n1] = buf[:, :, ph:ph + h, pw:pw + wd]
    return gx


def _backward_data_nhwc(gy: np.ndarray, w: np.ndarray, x_shape: tuple[int, ...], stride: Pair,
                        padding: Pair, dilation: Pair) -> np.ndarray:
    """Channels-last gy, groups 1, any stride: gcol (N*P, K) = gy (N*P, O) @ wmat (O, K),
    then col2im into a padded NHWC buffer, one strided add of C-long runs per kernel
    offset; gx comes back channels-last."""
    n, c, h, wd = x_shape
    o, _, kh, kw = w.shape
    oh, ow = gy.shape[2:]
    ph, pw = padding
    wmat = _weight_matrix(w, 1)[0]  # (O, kH*kW*C)
    g = gy.transpose(0, 2, 3, 1)
    gx = np.empty((n, h, wd, c), dtype=gy.dtype)
    for n0, n1 in _chunks(n, oh * ow * kh * kw * c * gy.itemsize):
        m = n1 - n0
        gcol = (g[n0:n1].reshape(-1, o) @ wmat).reshape(m, oh, ow, kh, kw, c)
        buf = np.zeros((m, h + 2 * ph, wd + 2 * pw, c), dtype=gy.dtype)
        for i in range(kh):
            for j in range(kw):
                rows, cols = _offset_slices(i, j, (oh, ow), stride, dilation)
                buf[:, rows, cols] += gcol[:, :, :, i, j]
        gx[n0:n1] = buf[:, ph:ph + h, pw:pw + wd]
    return gx.transpose(0, 3, 1, 2)


# ---- depthwise: C/G == 1, O = G * multiplier ----------------------------------------------

def _padded_nchw(x: np.ndarray, padding: Pair) -> np.ndarray:
    ph, pw = padding
    if not (ph or pw):
        return x
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))


def _offset_slices(i: int, j: int, out_hw: Pair, stride: Pair,
                   dilation: Pair) -> tuple[slice, slice]:
    """Rows and columns of the padded input that kernel offset (i, j) reads."""
    rows = slice(i * dilation[0], i * dilation[0] + stride[0] * (out_hw[0] - 1) + 1, stride[0])
    cols = slice(j * dilation[1], j * dilation[1] + stride[1] * (out_hw[1] - 1) + 1, stride[1])
    return rows, cols


def _depthwise_forward(x: np.ndarray, w: np.ndarray, out_hw: Pair, stride: Pair,
                       padding: Pair, dilation: Pair, groups: int) -> np.ndarray:
    n = x.shape[0]
    o, _, kh, kw = w.shape
    mult = o // groups
    xp = _padded_nchw(x, padding)
    y = np.zeros((n, groups, mult, *out_hw), dtype=x.dtype)
    tmp = np.empty_like(y)
    wk = w.reshape(groups, mult, kh, kw)
    for i in range(kh):
        for j in range(kw):
            rows, cols = _offset_slices(i, j, out_hw, stride, dilation)
            np.multiply(xp[:, :, None, rows, cols], wk[:, :, i, j, None, None], out=tmp)
            y += tmp
    return y.reshape(n, o, *out_hw)


def _depthwise_backward_data(gy: np.ndarray, w: np.ndarray, x_shape: tuple[int, ...],
                             stride: Pair, padding: Pair, dilation: Pair,
                             groups: int) -> np.ndarray:
    n, c, h, wd = x_shape
    o, _, kh, kw = w.shape
    mult = o // groups
    ph, pw = padding
    out_hw = gy.shape[2:]
    g = gy.reshape(n, groups, mult, *out_hw)
    wk = w.reshape(groups, mult, kh, kw)
    buf = np.zeros((n, c, h + 2 * ph, wd + 2 * pw), dtype=gy.dtype)
    for i in range(kh):
        for j in range(kw):
            rows, cols = _offset_slices(i, j, out_hw, stride, dilation)
            if mult == 1:
                buf[:, :, rows, cols] += g[:, :, 0] * wk[:, 0, i, j, None, None]
            else:
                buf[:, :, rows, cols] += np.einsum("ngmhw,gm->nghw", g, wk[:, :, i, j])
    return np.ascontiguousarray(buf[:, :, ph:ph + h, pw:pw + wd])


def _depthwise_backward_weight(x: np.ndarray, gy: np.ndarray, w_shape: tuple[int, ...],
                               stride: Pair, padding: Pair, dilation: Pair,
                               groups: int) -> np.ndarray:
    n = x.shape[0]
    o, _, kh, kw = w_shape
    mult = o // groups
    out_hw = gy.shape[2:]
    xp = _padded_nchw(x, padding)
    g = gy.reshape(n, groups, mult, *out_hw)
    gw = np.empty((groups, mult, kh, kw), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            rows, cols = _offset_slices(i, j, out_hw, stride, dilation)
            gw[:, :, i, j] = np.einsum("ngmhw,nghw->gm", g, xp[:, :, rows, cols])
    return gw.reshape(o, 1, kh, kw)

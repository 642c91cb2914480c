"""Convolution of small images as one dense GEMM per direction: the unrolled weight matrix.

On an image of IP = H*W input and OP = OH*OW output pixels a convolution is a linear map
from the C*IP input values to the O*OP output values, the same for every image: y (N, O*OP)
= x (N, IP*C) @ T^T, with T (O*OP, IP*C), T[(o, op), (ip, c)] = w[o, c, t] where kernel tap
t = (i, j) reads input pixel ip for output pixel op, and 0 where no tap does. The data
gradient is gx (N, IP*C) = gy (N, O*OP) @ T and the weight gradient folds gT = gy^T @ x
(O*OP, IP*C) back onto the taps. Each direction is one GEMM with the batch as its M and no
column matrix, no col2im and no per-tap products; the price is the zeros of T: IP / (kH*kW)
times the direct convolution's multiply-adds (4x4 images, 3x3 kernel: 1.8x; 3x3 images:
1x; 2x2: 0.44x), so it pays only on the smallest images (conv_cpu says where:
``UNROLLED_*``).

T is gathered from w in one ``take`` along the tap axis of w laid out (O, kH*kW + 1, C)
(the extra tap all zeros), so its rows are copied C values at a time; that puts the input
pixels' channels innermost, so x enters as its channels-last copy (the NCHW one would need
T's innermost index to be a pixel, an element-by-element gather). y and gy are NCHW as they
are: (N, O*OP) rows.
"""

from __future__ import annotations

import functools

import numpy as np

Pair = tuple[int, int]


@functools.lru_cache(maxsize=64)
def pixel_index(in_hw: Pair, out_hw: Pair, kernel: Pair, stride: Pair, padding: Pair,
                dilation: Pair) -> np.ndarray:
    """(OH*OW*kH*kW,) intp, row-major over (oh, ow, i, j): the input pixel h*W + w that tap
    (i, j) of output pixel (oh, ow) reads, or H*W where it reads padding. The one statement
    of a window's geometry on the cpu: :func:`tap_map` inverts it, and conv_cpu's im2col
    gathers its columns with it (H*W being a zero pixel there)."""
    (h, w), (oh, ow), (kh, kw) = in_hw, out_hw, kernel
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    rows = (np.arange(oh)[:, None] * sh - ph + np.arange(kh)[None, :] * dh)[:, None, :, None]
    cols = (np.arange(ow)[:, None] * sw - pw + np.arange(kw)[None, :] * dw)[None, :, None, :]
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    index = np.where(inside, rows * w + cols, h * w)
    index = np.ascontiguousarray(index, dtype=np.intp).reshape(-1)
    index.setflags(write=False)
    return index


@functools.lru_cache(maxsize=64)
def tap_map(in_hw: Pair, out_hw: Pair, kernel: Pair, stride: Pair, padding: Pair,
            dilation: Pair) -> np.ndarray:
    """(OP*IP,) intp, row-major over (oh, ow, h, w): the tap i*kW + j through which output
    pixel (oh, ow) reads input pixel (h, w), kH*kW where it reads none (padding, or a pixel
    outside the window). At most one tap reads a pixel for an output (dilation >= 1)."""
    count = kernel[0] * kernel[1]
    pixels = in_hw[0] * in_hw[1]
    outs = out_hw[0] * out_hw[1]
    reads = pixel_index(in_hw, out_hw, kernel, stride, padding, dilation).reshape(outs, count)
    # one extra column takes every padding tap's write (input pixel H*W), then is dropped
    table = np.full((outs, pixels + 1), count, dtype=np.intp)
    table[np.arange(outs)[:, None], reads] = np.arange(count)[None, :]
    taps = np.ascontiguousarray(table[:, :pixels]).reshape(-1)
    taps.setflags(write=False)
    return taps


@functools.lru_cache(maxsize=64)
def _tap_sums(in_hw: Pair, out_hw: Pair, kernel: Pair, stride: Pair, padding: Pair,
              dilation: Pair, dtype: str) -> np.ndarray:
    """(kH*kW, OP*IP) 0/1 matrix: row t selects the (output, input) pixel pairs of tap t."""
    taps = tap_map(in_hw, out_hw, kernel, stride, padding, dilation)
    count = kernel[0] * kernel[1]
    sums = np.zeros((count + 1, taps.size), dtype=dtype)
    sums[taps, np.arange(taps.size)] = 1
    sums = sums[:count]
    sums.setflags(write=False)
    return sums


def unrolled_weight(w: np.ndarray, in_hw: Pair, out_hw: Pair, stride: Pair, padding: Pair,
                    dilation: Pair) -> np.ndarray:
    """T (O*OP, IP*C) of w (O, C, kH, kW), groups 1."""
    o, c, kh, kw = w.shape
    count = kh * kw
    taps = tap_map(in_hw, out_hw, (kh, kw), stride, padding, dilation)
    wz = np.empty((o, count + 1, c), dtype=w.dtype)
    wz[:, :count] = w.reshape(o, c, count).transpose(0, 2, 1)
    wz[:, count] = 0
    return wz.take(taps, axis=1).reshape(o * out_hw[0] * out_hw[1], -1)


def _rows_channels_last(x: np.ndarray) -> np.ndarray:
    """x (N, C, H, W) as (N, H*W*C) rows, channels innermost (a copy unless x has them)."""
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)).reshape(x.shape[0], -1)


def forward(x: np.ndarray, w: np.ndarray, out_hw: Pair, stride: Pair, padding: Pair,
            dilation: Pair) -> np.ndarray:
    """y (N, O, OH, OW), NCHW, of x (N, C, H, W)."""
    t = unrolled_weight(w, x.shape[2:], out_hw, stride, padding, dilation)
    y = _rows_channels_last(x) @ t.T  # BLAS takes the transpose as a flag
    return y.reshape(x.shape[0], w.shape[0], *out_hw)


def backward_data(gy: np.ndarray, w: np.ndarray, x_shape: tuple[int, ...], stride: Pair,
                  padding: Pair, dilation: Pair) -> np.ndarray:
    """gx (N, C, H, W), NCHW, of an NCHW gy."""
    n, c, h, wd = x_shape
    t = unrolled_weight(w, (h, wd), gy.shape[2:], stride, padding, dilation)
    gx = gy.reshape(n, -1) @ t  # (N, IP*C)
    return np.ascontiguousarray(gx.reshape(n, h, wd, c).transpose(0, 3, 1, 2))


def backward_weight(x: np.ndarray, gy: np.ndarray, w_shape: tuple[int, ...], stride: Pair,
                    padding: Pair, dilation: Pair) -> np.ndarray:
    """gw (O, C, kH, kW): gT = gy^T @ x (O, OP*IP, C), each tap's pixel pairs summed."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w_shape
    out_hw = gy.shape[2:]
    gt = (gy.reshape(n, -1).T @ _rows_channels_last(x)).reshape(o, -1, c)  # (O, OP*IP, C)
    pairs = gt.shape[1]
    if pairs <= FOLD_PAIRWISE_MAX_PAIRS:
        # NOTE: a 1x1 image has one pixel pair: a batch of O products (kH*kW, 1) @ (1, C)
        # measured 2.4 us each (256 ch: 607 us), so each pair's (O, C) slab is added into
        # its tap's place instead
        gw = np.zeros((o, c, kh * kw), dtype=x.dtype)
        for k, tap in enumerate(tap_map((h, wd), out_hw, (kh, kw), stride, padding,
                                        dilation)):
            if tap < kh * kw:
                gw[:, :, tap] += gt[:, k]
        return gw.reshape(w_shape)
    sums = _tap_sums((h, wd), out_hw, (kh, kw), stride, padding, dilation, x.dtype.str)
    gw = np.matmul(sums, gt)  # (O, kH*kW, C)
    return np.ascontiguousarray(gw.transpose(0, 2, 1)).reshape(w_shape)


# At most this many (output, input) pixel pairs: pair by pair (see backward_weight)
FOLD_PAIRWISE_MAX_PAIRS = 4

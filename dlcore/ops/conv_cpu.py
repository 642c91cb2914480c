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
  row-major, so BLAS sees one large product. From 8 channels (groups 1) the same columns
  are gathered by one ``take`` from the channels-last pixels plus a zero pixel instead
  (no padded buffer: see TAKE_MIN_CHANNELS; the index is conv_unrolled_cpu.pixel_index).
* the smallest images (1x1, 2x2; 3x3-5x5 with few channels, see UNROLLED_*): the whole
  convolution as one GEMM per direction with the unrolled (O*OP, IP*C) weight matrix
  (conv_unrolled_cpu.py): no columns, no col2im, more multiply-adds (its zeros).
* forward: y[n] = w (O, K) @ col[n].T (P, K)^T, written straight into the NCHW output
  (BLAS takes the transposed operand as a flag, no copy).
* backward weight: gw = gy (O, N*P) @ col (N*P, K); the column matrix is rebuilt rather than
  saved (saving it would keep kH*kW times the input alive per layer), except where the
  forward's is one chunk of at most SAVED_COLUMNS_MAX_BYTES (small layers: kept on the node).
* backward data: stride 1 is a forward convolution of gy with the flipped weight; other
  strides build gcol = w^T @ gy and scatter it back (col2im) with one strided add per
  kernel offset.
* 1x1, stride 1, no padding: the NCHW input already is the column matrix (one GEMM).
* 3x3, stride 1, dilation 1, groups 1, >= 64 channels in and out, >= 14x14 output:
  Winograd F(2x2, 3x3) forward (4/9 of the GEMM flops, a 4x input expansion instead of 9x;
  see conv_winograd_cpu.py), either layout; backward data at stride
  1 uses it through the flipped forward, and the weight gradient by Winograd too.
* stride 1 (or 2, up to 64 channels), dilation 1, groups 1, 5-128 input channels (the
  early layers of a CIFAR ResNet, and 3x3 layers on images too small for Winograd):
  kernel-row columns, each input value held kW times instead of kH*kW (stride 1), one GEMM
  per kernel row (see ROW_TAPS_*).
* at most 4 input channels (an RGB stem): columns (N, K, P) per image in NCHW order, whose
  GEMM output is NCHW already (see FEW_CHANNELS).
* 1x1, strided, no padding (a ResNet shortcut): the pixels read, subsampled, then the
  pointwise GEMM.
* depthwise (C/G == 1): no GEMM has a useful shape, so y is a sum over the kernel offsets of
  shifted input planes times one weight per plane, a block of planes at a time so each
  block stays in L2 (see the depthwise section); stride 1 on narrow images (padded width
  at most TOEPLITZ_MAX_WIDTH_PER_TAP kernel columns) as one GEMM per kernel row and channel
  with a banded (Toeplitz) matrix of the row's weights instead (see DEPTHWISE_TOEPLITZ).
* one input channel on small images (the digits' first layer): (kH*kW, N*P) columns (the
  NHWC ones would be copied one value at a time); backward data with 8*C <= O on small
  images: gcol = w^T @ gy then col2im (adds C*kH*kW values per pixel, not O*kH*kW).
* channels-last (``memory_format=dlcore.channels_last``, groups 1): an input whose strides
  are NHWC (:func:`dlcore.tensor.is_channels_last`) is its own padded buffer's source
  without a transposing copy (and is the buffer itself without padding), the GEMM's
  (N*P, O) product is the output's channels-last memory, and a channels-last gy is read
  in place by both backward GEMMs; outputs and input gradients come back channels-last,
  so a chain of convolutions, ReLUs and batch norms never transposes between layers.
  Grouped and depthwise convolutions read any layout and return NCHW.

Batches are processed in chunks so a column matrix never exceeds :data:`COL_BYTES`, about
one core's L2: the columns are written and then read by the GEMM while still in cache
(but at least :data:`MIN_CHUNK_ROWS` rows, so the weight panel's packing is amortised).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import ml_dtypes
import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..tensor import is_channels_last
from . import blas_cpu
from . import conv_unrolled_cpu as unrolled
from .conv_winograd_cpu import winograd_backward_weight as _winograd_backward_weight
from .conv_winograd_cpu import winograd_forward as _winograd_forward

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


# The forward's column matrix, where it is one chunk of at most this many bytes, is kept for
# the weight gradient instead of being built again (at most one chunk per layer alive until
# backward, as the L2-sized chunks already bound; the design's rule "rebuild, don't save"
# stands for larger layers). Measured (2026-12-04, Zen 5 VM, SkylakeX kernels, one thread):
# the digits 16->32 4x4 layer's weight gradient (N=64, 590 KB of columns) saves its ~20 µs
# im2col.
SAVED_COLUMNS_MAX_BYTES = 1 * 2**20

# Largest column matrix built at once (bytes; an image whose columns are larger is one
# chunk). It was 256 MiB, a memory cap only; at one core's L2 the im2col copy and the GEMM
# that reads it both run from cache (one BLAS thread, 2026-12-02, 2-core AMD EPYC with
# AVX-512, 1 MiB L2 per core, N=32 forward, ms): 16->16 32x32 7.06 -> 4.31, 32->32 16x16
# 3.69 -> 3.18, 3->16 32x32 2.05 -> 1.53, 64->64 8x8 2.14 -> 2.14; a whole ResNet-8 conv
# stack's forward+backward 75 -> 55 ms.
COL_BYTES = 1 * 2**20
# ... but never fewer than this many column rows (output pixels) per chunk: every GEMM call
# packs the whole weight panel (K x O) again, and on deep layers with small images one image
# is already ~1 MiB of columns with only P rows to spread that packing over (2026-12-02, the
# same machine, forward+backward ms, one image per chunk -> at least 512 rows): 512->512 7x7
# 537 -> 308, 128->256 28x28/2 215 -> 167, 256->256 14x14 254 -> 176; 16-64 channel layers
# on 8x8-32x32 images unchanged (their chunks already hold >= 512 rows or fit in L2 whole).
MIN_CHUNK_ROWS = 512
FLAT_GEMM_PIXELS = 1024  # below this many output pixels per image, one flat GEMM
# The forward's flat GEMM pays off up to larger images (one BLAS thread, 2026-12-02, min
# of 7: 32x16 32x32 10.1-11.6 -> 7.6-8.0 ms, 32x16 64x64 37.8 -> 29.8-31.0 ms, 8x64 56x56
# 36.7-37.7 -> 33.7-34.1 ms; 8x64 112x112 142-143 -> 160 ms, so not beyond 8192 pixels)
FORWARD_FLAT_PIXELS = 8192


def _chunks(n: int, pixels: int, row_bytes: int) -> list[tuple[int, int]]:
    """Batch ranges whose column matrices (``pixels`` rows of ``row_bytes`` per sample) stay
    within COL_BYTES, or hold at least MIN_CHUNK_ROWS rows where one sample is that large."""
    fit = COL_BYTES // max(pixels * row_bytes, 1)
    step = max(1, min(n, max(fit, -(-MIN_CHUNK_ROWS // max(pixels, 1)))))
    return [(i, min(i + step, n)) for i in range(0, n, step)]


def _is_pointwise(w_shape: tuple[int, ...], stride: Pair, padding: Pair) -> bool:
    """1x1 kernel, stride 1, no padding: a plain GEMM on the NCHW input, no columns."""
    return w_shape[2:] == (1, 1) and stride == (1, 1) and padding == (0, 0)


def _subsampled(x: np.ndarray, stride: Pair) -> np.ndarray:
    """The pixels a strided 1x1 unpadded kernel reads, copied in x's own layout (NCHW or
    channels-last): the convolution is then a pointwise one, a plain GEMM on them (the
    im2col route transposed and copied the whole input first: ResNet-8's 16->32 shortcut
    at N=32, forward 1.35 -> 0.35 ms)."""
    sh, sw = stride
    if is_channels_last(x):
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1)[:, ::sh, ::sw]).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x[:, :, ::sh, ::sw])


def _is_strided_pointwise(w_shape: tuple[int, ...], stride: Pair, padding: Pair,
                          groups: int) -> bool:
    return (groups == 1 and w_shape[2:] == (1, 1) and padding == (0, 0)
            and stride != (1, 1))


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


# Groups 1 and at least this many channels: the columns are gathered C values at a time by
# one ``take`` from the channels-last pixels (plus one zero pixel that every padding tap
# reads) instead of a padded NHWC copy and a copy of its window view: the zeroed border and
# the second pass go (2026-12-04, Zen 5 VM, N*C*HxW 3x3 pad 1, best of 5, µs, window ->
# take): 64*16*4x4 30 -> 20, 64*32*4x4 38 -> 26, 32*16*16x16 185 -> 159, 32*32*16x16 246
# -> 193, 32*64*7x7 91 -> 68, 8*64*56x56 6307 -> 5922, 4*128*28x28 409 -> 386; but at 3
# channels (12-byte blocks) 127 -> 161.
TAKE_MIN_CHANNELS = 8


def _im2col(x: np.ndarray, out_hw: Pair, kernel: Pair, stride: Pair, padding: Pair,
            dilation: Pair, groups: int) -> np.ndarray:
    """Column matrices (G, n, P, kH*kW*C/G) of the input chunk x (n, C, H, W)."""
    n, c, h, wd = x.shape
    p = out_hw[0] * out_hw[1]
    if groups == 1 and c >= TAKE_MIN_CHANNELS:
        pixels = np.empty((n, h * wd + 1, c), dtype=x.dtype)  # channels-last, + zero pixel
        pixels[:, :h * wd] = x.reshape(n, c, h * wd).transpose(0, 2, 1)
        pixels[:, h * wd] = 0
        index = unrolled.pixel_index((h, wd), out_hw, kernel, stride, padding, dilation)
        return pixels.take(index, axis=1).reshape(1, n, p, -1)
    win = _window_view(_padded_nhwc(x, padding), out_hw, kernel, stride, dilation)
    if groups == 1:
        return np.ascontiguousarray(win).reshape(1, n, p, -1)
    win = win.reshape(*win.shape[:5], groups, c // groups).transpose(5, 0, 1, 2, 3, 4, 6)
    return np.ascontiguousarray(win).reshape(groups, n, p, -1)


def _one_channel_small(c: int, groups: int, out_hw: Pair) -> bool:
    """A one-channel input (the digits' first layer) on small images: the NHWC columns
    would be copied one value at a time, so build the (kH*kW, N*P) columns instead, whose
    copies run along output rows and whose GEMMs take w and give gw in their own layout."""
    return c == 1 and groups == 1 and out_hw[0] * out_hw[1] < FLAT_GEMM_PIXELS


def _nchw_windows(x: np.ndarray, out_hw: Pair, kernel: Pair, stride: Pair, padding: Pair,
                  dilation: Pair) -> np.ndarray:
    """Strided view (n, C, kH, kW, OH, OW) of the zero-padded NCHW x (x itself without
    padding): what each output pixel reads, in w's (C, kH, kW) order. No copy."""
    n, c, h, wd = x.shape
    ph, pw = padding
    xp = x
    if ph or pw:
        xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw), dtype=x.dtype)
        xp[:, :, ph:ph + h, pw:pw + wd] = x
    s0, s1, s2, s3 = xp.strides
    return as_strided(xp, (n, c, *kernel, *out_hw),
                      (s0, s1, s2 * dilation[0], s3 * dilation[1], s2 * stride[0],
                       s3 * stride[1]), writeable=False)


def _im2col_kn(x: np.ndarray, out_hw: Pair, kernel: Pair, stride: Pair, padding: Pair,
               dilation: Pair) -> np.ndarray:
    """Columns (C*kH*kW, N*P) of an NCHW x, rows in w's (C, kH, kW) order: one copy."""
    view = _nchw_windows(x, out_hw, kernel, stride, padding, dilation)
    k = x.shape[1] * kernel[0] * kernel[1]
    return np.ascontiguousarray(view.transpose(1, 2, 3, 0, 4, 5)).reshape(k, -1)


# Inputs of at most this many channels (an RGB stem) take columns per image in NCHW order
# (N, C*kH*kW, P): the NHWC columns' copies would move C values (12 bytes for RGB) at a
# time, these move output rows, and y[n] (O, P) = w (O, K) @ col[n] is NCHW already, with no
# transposing copy after the GEMM (2026-12-02, one BLAS thread, N=32, forward / weight
# gradient ms): 3->16 32x32 1.44 / 1.31 -> 0.52 / 0.60, 4->16 32x32 1.66 / 1.33 -> 0.69 /
# 0.75, 3->64 56x56 12.9 / 13.6 -> 6.0 / 10.0, 3->32 64x64/2 2.7 / 2.5 -> 1.4 / 1.3; at
# 8 channels it was 2.6 / 3.3 -> 2.9 / 3.0, so not beyond 4.
FEW_CHANNELS = 4


def _few_channels(x: np.ndarray, groups: int, out_hw: Pair) -> bool:
    return (groups == 1 and x.shape[1] <= FEW_CHANNELS and not is_channels_last(x)
            and not _one_channel_small(x.shape[1], groups, out_hw))


def _im2col_nkp(x: np.ndarray, out_hw: Pair, kernel: Pair, stride: Pair, padding: Pair,
                dilation: Pair) -> np.ndarray:
    """Columns (n, C*kH*kW, P) of an NCHW chunk x, rows in w's (C, kH, kW) order: one copy."""
    view = _nchw_windows(x, out_hw, kernel, stride, padding, dilation)
    return np.ascontiguousarray(view).reshape(x.shape[0], x.shape[1] * kernel[0] * kernel[1], -1)


def _few_channels_forward(x: np.ndarray, w: np.ndarray, out_hw: Pair, stride: Pair,
                          padding: Pair, dilation: Pair) -> np.ndarray:
    n, c = x.shape[:2]
    o, _, kh, kw = w.shape
    p = out_hw[0] * out_hw[1]
    y = np.empty((n, o, p), dtype=x.dtype)
    wmat = w.reshape(o, -1)
    for n0, n1 in _chunks(n, p, c * kh * kw * x.itemsize):
        col = _im2col_nkp(x[n0:n1], out_hw, (kh, kw), stride, padding, dilation)
        np.matmul(wmat, col, out=y[n0:n1])
    return y.reshape(n, o, *out_hw)


def _few_channels_backward_weight(x: np.ndarray, gy: np.ndarray, w_shape: tuple[int, ...],
                                  stride: Pair, padding: Pair,
                                  dilation: Pair) -> np.ndarray:
    """gw (O, K) = sum over images of gy[n] (O, P) @ col[n]^T (P, K)."""
    n, c = x.shape[:2]
    o, _, kh, kw = w_shape
    oh, ow = gy.shape[2:]
    g = gy.reshape(n, o, oh * ow)
    gw = np.zeros((o, c * kh * kw), dtype=x.dtype)
    for n0, n1 in _chunks(n, oh * ow, c * kh * kw * x.itemsize):
        col = _im2col_nkp(x[n0:n1], (oh, ow), (kh, kw), stride, padding, dilation)
        gw += np.matmul(g[n0:n1], col.transpose(0, 2, 1)).sum(axis=0)
    return gw.reshape(w_shape)


# Kernel-row columns: stride 1 (strided below), dilation 1, groups 1, 5-128 input channels
# (a CIFAR ResNet's layers; the stride-1 data gradient, a forward of gy, counts O). The NHWC columns
# hold each input value kH*kW times and their copies move C values (64 bytes at 16
# channels) at a time; but in a padded NHWC buffer the kW taps of one kernel row are kW*C
# consecutive values, so columns (n, Hp, OW, kW*C) hold each value only kW times, copied
# kW*C at a time, and kernel row i is the contiguous block of rows [i*OW, i*OW + OH*OW) of
# each image's columns: y is a sum of kH GEMMs (P, kW*C) @ (kW*C, O), and the weight
# gradient one GEMM per kernel row (2026-12-02, one BLAS thread, N=32, 3x3, forward / data
# gradient / weight gradient ms, full columns -> kernel rows): 16->16 32x32 5.07 / 4.99 /
# 5.11 -> 3.88 / 3.85 / 4.04, 32->32 16x16 3.10 / 3.16 / 3.39 -> 2.28 / 3.00 / 2.37,
# 64->64 8x8 2.50 / 2.55 / 2.41 -> 2.01 / 2.10 / 2.29, 128->128 8x8 18.3 / 14.8 / 14.0 ->
# 15.0 / 14.8 / 10.8; but 256->256 7x7 27.7 / 34.0 / 31.3 -> 28.8 / 29.5 / 35.4 and 512 7x7
# slower in all three: not beyond 128 (Winograd takes 64+ channels from 14x14 up).
ROW_TAPS_MAX_CHANNELS = 128
# Strided, the columns are one matrix per row phase (see _row_tap_columns), and the copy
# saves less (stride 2: about 2/3 of the full columns): 3x3/2, N=32, forward / weight
# gradient ms, full columns -> kernel rows, best of 3x9: 16->32 32x32 2.06 / 2.42 -> 1.70 /
# 1.89, 32->64 16x16 1.26 / 1.38 -> 1.26 / 1.19, 64->128 56x56 64.9 / 57.9 -> 61.9 / 53.1,
# but 128->256 28x28 58.4 / 56.2 -> 59.8 / 60.1.
ROW_TAPS_MAX_STRIDE = 2
ROW_TAPS_STRIDED_MAX_CHANNELS = 64
# ... and images of at least 8x8 outputs: at 4x4 (the digits' 16->32 layer, N=64) the kH
# GEMMs per image cost more than the copies saved (weight gradient 216-223 -> 240-312 µs).
ROW_TAPS_MIN_PIXELS = 64


def _use_row_taps(c: int, kernel: Pair, stride: Pair, dilation: Pair, groups: int,
                  out_hw: Pair) -> bool:
    most = ROW_TAPS_MAX_CHANNELS if stride == (1, 1) else ROW_TAPS_STRIDED_MAX_CHANNELS
    return (groups == 1 and max(stride) <= ROW_TAPS_MAX_STRIDE and dilation == (1, 1)
            and kernel[0] > 1 and FEW_CHANNELS < c <= most
            and out_hw[0] * out_hw[1] >= ROW_TAPS_MIN_PIXELS)


def _row_tap_columns(x: np.ndarray, padding: Pair, out_hw: Pair, kernel: Pair,
                     stride: Pair) -> list[np.ndarray]:
    """Kernel-row columns of the chunk x (n, C, H, W), any layout, one matrix (n, R*OW,
    kW*C) per row phase a < sH: row r*OW + q holds padded input row a + r*sH, columns
    q*sW .. q*sW + kW - 1, all channels. Kernel row i reads phase i % sH from row
    (i // sH)*OW on (stride 1: one matrix, kernel row i from row i*OW)."""
    buf = _padded_nhwc(x, padding)  # (n, Hp, Wp, C), (W, C) contiguous
    n, _, _, c = buf.shape
    s0, s1, s2, s3 = buf.strides
    (oh, ow), (kh, kw), (sh, sw) = out_hw, kernel, stride
    cols = []
    for a in range(min(sh, kh)):
        rows = oh + (kh - 1 - a) // sh  # the last one read: a + sH*(rows-1) <= Hp - 1
        view = as_strided(buf[:, a:], (n, rows, ow, kw * c), (s0, sh * s1, sw * s2, s3),
                          writeable=False)
        cols.append(np.ascontiguousarray(view).reshape(n, rows * ow, kw * c))
    return cols


def _row_taps_chunks(n: int, out_hw: Pair, kernel: Pair, stride: Pair,
                     row_bytes: int) -> list[tuple[int, int]]:
    return _chunks(n, (stride[0] * out_hw[0] + kernel[0]) * out_hw[1], row_bytes)


def _row_taps_forward(x: np.ndarray, w: np.ndarray, out_hw: Pair, stride: Pair,
                      padding: Pair) -> np.ndarray:
    n, c = x.shape[:2]
    o, _, kh, kw = w.shape
    oh, ow = out_hw
    sh = stride[0]
    p = oh * ow
    # kernel row i as a (kW*C, O) matrix, rows in the columns' (kW, C) order
    wr = np.ascontiguousarray(w.transpose(2, 3, 1, 0)).reshape(kh, kw * c, o)
    y = np.empty((n, p, o), dtype=x.dtype)
    for n0, n1 in _row_taps_chunks(n, out_hw, (kh, kw), stride, kw * c * x.itemsize):
        cols = _row_tap_columns(x[n0:n1], padding, out_hw, (kh, kw), stride)
        yc = y[n0:n1]
        np.matmul(cols[0][:, :p], wr[0], out=yc)
        tmp = np.empty_like(yc) if kh > 1 else yc
        for i in range(1, kh):
            r0 = (i // sh) * ow
            np.matmul(cols[i % sh][:, r0:r0 + p], wr[i], out=tmp)
            yc += tmp
    out = y.reshape(n, oh, ow, o).transpose(0, 3, 1, 2)
    return out if is_channels_last(x) else np.ascontiguousarray(out)


def _row_taps_backward_weight(x: np.ndarray, gy: np.ndarray, w_shape: tuple[int, ...],
                              stride: Pair, padding: Pair) -> np.ndarray:
    """gw[:, :, i, :] from sum over images of gy[n] (O, P) @ kernel row i's columns (P,
    kW*C): an NCHW gy is read in place."""
    n, c = x.shape[:2]
    o, _, kh, kw = w_shape
    oh, ow = gy.shape[2:]
    sh = stride[0]
    p = oh * ow
    g = gy.reshape(n, o, p) if not is_channels_last(gy) else \
        gy.transpose(0, 2, 3, 1).reshape(n, p, o).transpose(0, 2, 1)
    gw = np.zeros((kh, o, kw * c), dtype=x.dtype)
    for n0, n1 in _row_taps_chunks(n, (oh, ow), (kh, kw), stride, kw * c * x.itemsize):
        cols = _row_tap_columns(x[n0:n1], padding, (oh, ow), (kh, kw), stride)
        for i in range(kh):
            r0 = (i // sh) * ow
            gw[i] += np.matmul(g[n0:n1], cols[i % sh][:, r0:r0 + p]).sum(axis=0)
    return np.ascontiguousarray(gw.reshape(kh, o, kw, c).transpose(1, 3, 0, 2))


# NCHW kernel-row columns: an NCHW input of 5-32 channels into at most 32 (a CIFAR ResNet's
# first stage), stride 1 (and 2, below). The NHWC kernel-row columns above start with a
# transposing copy of x into NHWC and end with one of y back to NCHW, and NumPy's
# transposing copies run
# about 6x slower than a plain copy (a (32, 16, 32, 32) float32 array: 0.30 ms against
# 0.05); at 16 channels those two took as long as the GEMMs. Here the columns keep x's
# layout: (n, C, kW, Hp, OW), the padded input planes shifted by each kernel column, copied
# a plane row (OW values) at a time, and kernel row i is rows i*OW .. i*OW + P of each
# plane: a (C*kW, P) matrix with row stride Hp*OW, so y[n] (O, P) = sum over i of
# w_i (O, C*kW) @ that matrix comes out NCHW, and the weight gradient reads gy in place.
# Measured against the NHWC kernel rows (2026-12-04, 2-core Zen 5 VM, one BLAS thread, N=32,
# 3x3 pad 1, best of 5x20, ms, SkylakeX / Haswell kernels): forward 16->16 32x32 2.53 /
# 4.00 -> 1.36 / 2.53, 16->32 32x32 4.61 / 6.92 -> 3.65 / 4.62, 32->32 16x16 1.30 / 2.37
# -> 1.12 / 2.11, 8->8 32x32 1.00 / 1.40 -> 0.54 / 1.01; but 64->64 8x8 1.00 / 1.96 ->
# 1.23 / 2.13, so not beyond 32 channels either way.
NCHW_ROW_TAPS_MAX_CHANNELS = 32
# The weight gradient (gw_i^T (C*kW, O) = sum over images of cols_i @ gy[n]^T) only up to 16
# input channels (the same day, ms): 16->16 32x32 1.74 / 3.26 -> 1.48 / 2.75, 8->8 32x32
# 1.03 / 1.28 -> 0.56 / 1.05, 16->32 32x32 3.91 / 5.13 -> 3.96 / 4.48; but 32->32 16x16
# 1.23 / 2.37 -> 1.83 / 2.24 and 32->16 0.85 / 1.46 -> 0.95 / 1.17 (SkylakeX slower).
NCHW_ROW_TAPS_GRAD_MAX_CHANNELS = 16
# Stride 2 (one column buffer per row phase, as the NHWC kernel rows), up to 16 input
# channels (ms, forward / weight gradient, SkylakeX; Haswell): 16->32/2 32x32 1.45 / 1.43 ->
# 1.02 / 1.51; 1.97 / 1.93 -> 1.54 / 1.56, 8->16/2 0.60 / 0.62 -> 0.42 / 0.43; 0.76 / 0.69 ->
# 0.57 / 0.61, but 32->64/2 16x16 0.71 / 0.77 -> 0.85 / 1.19 (64 outputs: beyond the limit
# anyway).
NCHW_ROW_TAPS_MAX_STRIDE = 2
NCHW_ROW_TAPS_STRIDED_MAX_CHANNELS = 16


def _use_nchw_row_taps(x: np.ndarray, o: int, kernel: Pair, stride: Pair, dilation: Pair,
                       groups: int, out_hw: Pair) -> bool:
    return (groups == 1 and max(stride) <= NCHW_ROW_TAPS_MAX_STRIDE and dilation == (1, 1)
            and kernel[0] > 1 and not is_channels_last(x)
            and FEW_CHANNELS < x.shape[1] <= (NCHW_ROW_TAPS_MAX_CHANNELS if stride == (1, 1)
                                              else NCHW_ROW_TAPS_STRIDED_MAX_CHANNELS)
            and o <= NCHW_ROW_TAPS_MAX_CHANNELS
            and out_hw[0] * out_hw[1] >= ROW_TAPS_MIN_PIXELS)


def _nchw_row_tap_columns(x: np.ndarray, padding: Pair, out_hw: Pair, kernel: Pair,
                          stride: Pair, bufs: list[np.ndarray]) -> list[np.ndarray]:
    """Fill one buffer (n, C, kW, R, OW) per row phase a < sH from the NCHW chunk x (n, C,
    H, W): bufs[a][.., j, r, q] = padded x[.., a + r*sH, q*sW + j]. Kernel row i reads phase
    i % sH from row (i // sH)*OW on. Returns the (n, C*kW, R*OW) views the GEMMs take."""
    n, c, h, wd = x.shape
    (ph, pw), (sh, sw) = padding, stride
    ow = out_hw[1]
    flats = []
    for a, buf in enumerate(bufs):
        rows = buf.shape[3]
        # the rows r whose padded row a + r*sH is an input row, and the input rows they read
        r0 = max(0, -((a - ph) // sh))
        r1 = max(r0, min(rows, (h - 1 + ph - a) // sh + 1))
        buf[:, :, :, :r0] = 0
        buf[:, :, :, r1:] = 0
        flats.append(buf.reshape(n, c * kernel[1], rows * ow))
        if r1 == r0:  # every row of this phase is padding
            continue
        src_rows = x[:, :, a + r0 * sh - ph:a + (r1 - 1) * sh - ph + 1:sh]
        for j in range(kernel[1]):
            # output columns q whose padded column q*sW + j is an input column
            lo = max(0, -((j - pw) // sw))
            hi = max(lo, min(ow, (wd - 1 + pw - j) // sw + 1))
            dst = buf[:, :, j, r0:r1]
            if hi > lo:
                s0 = lo * sw + j - pw
                dst[..., lo:hi] = src_rows[..., s0:s0 + (hi - lo - 1) * sw + 1:sw]
            dst[..., :lo] = 0
            dst[..., hi:] = 0
    return flats


def _nchw_row_tap_buffers(n: int, c: int, out_hw: Pair, kernel: Pair, stride: Pair,
                          dtype: np.dtype) -> list[np.ndarray]:
    """One (n, C, kW, R_a, OW) buffer per row phase a: R_a = OH + (kH - 1 - a) // sH rows."""
    (oh, ow), (kh, kw), sh = out_hw, kernel, stride[0]
    return [np.empty((n, c, kw, oh + (kh - 1 - a) // sh, ow), dtype=dtype)
            for a in range(min(sh, kh))]


def _nchw_row_taps_chunks(n: int, c: int, out_hw: Pair, kernel: Pair, stride: Pair,
                          itemsize: int) -> list[tuple[int, int]]:
    rows = stride[0] * out_hw[0] + kernel[0]  # over all phases, at most
    return _chunks(n, rows * out_hw[1], c * kernel[1] * itemsize)


def _nchw_row_taps_forward(x: np.ndarray, w: np.ndarray, out_hw: Pair, stride: Pair,
                           padding: Pair) -> np.ndarray:
    n, c = x.shape[:2]
    o, _, kh, kw = w.shape
    oh, ow = out_hw
    sh, p = stride[0], oh * ow
    wr = np.ascontiguousarray(w.transpose(2, 0, 1, 3)).reshape(kh, o, c * kw)
    y = np.empty((n, o, p), dtype=x.dtype)
    chunks = _nchw_row_taps_chunks(n, c, out_hw, (kh, kw), stride, x.itemsize)
    step = chunks[0][1] - chunks[0][0]
    bufs = _nchw_row_tap_buffers(step, c, out_hw, (kh, kw), stride, x.dtype)
    tmp = np.empty((step, o, p), dtype=x.dtype)
    for n0, n1 in chunks:
        m = n1 - n0
        flats = _nchw_row_tap_columns(x[n0:n1], padding, out_hw, (kh, kw), stride,
                                      [b[:m] for b in bufs])
        yc = y[n0:n1]
        for i in range(kh):
            r0 = (i // sh) * ow
            np.matmul(wr[i], flats[i % sh][:, :, r0:r0 + p], out=yc if i == 0 else tmp[:m])
            if i:
                yc += tmp[:m]
    return y.reshape(n, o, oh, ow)


def _nchw_row_taps_backward_weight(x: np.ndarray, gy: np.ndarray, w_shape: tuple[int, ...],
                                   stride: Pair, padding: Pair) -> np.ndarray:
    """gw[:, :, i, :]^T from sum over images of kernel row i's columns (C*kW, P) @ gy[n]^T
    (P, O): gy read in place, through its transposed view (the (O, P) @ (P, C*kW) order
    measured slower: 2.5 against 1.8 ms at 32->32 16x16, N=32)."""
    n, c = x.shape[:2]
    o, _, kh, kw = w_shape
    oh, ow = gy.shape[2:]
    sh, p = stride[0], oh * ow
    g = gy.reshape(n, o, p)
    gwt = np.zeros((kh, c * kw, o), dtype=x.dtype)
    chunks = _nchw_row_taps_chunks(n, c, (oh, ow), (kh, kw), stride, x.itemsize)
    step = chunks[0][1] - chunks[0][0]
    bufs = _nchw_row_tap_buffers(step, c, (oh, ow), (kh, kw), stride, x.dtype)
    part = np.empty((step, c * kw, o), dtype=x.dtype)
    for n0, n1 in chunks:
        m = n1 - n0
        flats = _nchw_row_tap_columns(x[n0:n1], padding, (oh, ow), (kh, kw), stride,
                                      [b[:m] for b in bufs])
        gt = g[n0:n1].transpose(0, 2, 1)
        for i in range(kh):
            r0 = (i // sh) * ow
            np.matmul(flats[i % sh][:, :, r0:r0 + p], gt, out=part[:m])
            gwt[i] += part[:m].sum(axis=0)
    return np.ascontiguousarray(gwt.reshape(kh, c, kw, o).transpose(3, 1, 0, 2))


# ---- the smallest images: one dense GEMM with the unrolled weight (conv_unrolled_cpu) --------
#
# Where it is used, by measurement (2026-12-04, 2-core Zen 5 VM, one BLAS thread, 3x3 pad 1,
# best of 5, µs, the other paths -> unrolled, SkylakeX kernels; Haswell where it decides).
# "Waste" is IP / (kH*kW), the unrolled GEMM's multiply-adds over the direct ones; "per
# image" is T's bytes over the batch (gathering T costs about its size in copies, once per
# call). Forward / data gradient / weight gradient:
#   waste <= 0.5 wins at every size tried: 64 ch 2x2 N=64 158 / 180 / 165 -> 82 / 75 / 68,
#     128 ch 2x2 508 / 565 / 500 -> 285 / 257 / 256, 512 ch 2x2 (T 16 MiB) 10.8 / 7.8 /
#     8.1 ms -> 6.7 / 5.7 / 5.4, 256 ch 1x1 1056 / 690 / 637 -> 217 / 202 / 90; but the
#     weight gradient's GEMM reduces over the batch: 256 ch 2x2 at N=16 686 -> 838.
#   3x3 images (waste 1) and 4x4 (1.8) only with a small T per image: 32 ch 3x3 N=64 (5
#     KiB/image) 99 / 110 / 109 -> 91 / 72 / 69, 16 ch 4x4 (4 KiB) 79 / 86 / 84 -> 74 / 59 /
#     60, 8->16 4x4 (2 KiB) 54 / 70 / 55 -> 40 / 32 / 34, 8 ch 5x5 (2.4 KiB, waste 2.8) 61 /
#     69 / 58 -> 49 / 38 / 41; but 16->32 4x4 (8 KiB) forward 99 -> 143, 64 ch 3x3 (20 KiB)
#     300 -> 335, 16 ch 4x4 at N=8 (32 KiB) 22 -> 43.
#   The data gradient gains more (the other paths' col2im or tap GEMMs cost most there):
#     from any T at waste 1 (64 ch 3x3 N=64 321 -> 246, N=16 162 -> 112, 128 ch 3x3 1030 ->
#     971) and, where O >= C, up to a 512 KiB T at waste <= 2 (16->32 4x4 N=64 139 -> 112,
#     32->64 4x4/2 132 -> 122, N=16 58 -> 53); with O < C the flipped forward is quicker
#     (32->16 4x4 106 -> 118), as at a 1 MiB T (32 ch 4x4: Haswell 316 -> 344, 16->32 5x5
#     202 -> 253).
UNROLLED = True  # False forces the other paths (benchmarks, tests)
UNROLLED_MAX_BYTES = 32 * 2**20  # T at most this (memory, not speed: 512 ch 2x2 is 16 MiB)
UNROLLED_ANY_WASTE = 0.5  # at most this waste, any T
UNROLLED_MAX_WASTE = 3.0  # ... otherwise at most this, with a T of at most ...
UNROLLED_PER_IMAGE_BYTES = 6 * 2**10  # ... this many bytes per image
UNROLLED_GRAD_MIN_BATCH = 32  # the weight gradient's GEMM reduces over the batch
UNROLLED_DATA_ANY_WASTE = 1.0  # the data gradient: at most this waste, any T, and ...
UNROLLED_DATA_MAX_WASTE = 2.0  # ... with O >= C, at most this waste and a T of at most ...
UNROLLED_DATA_MAX_BYTES = 512 * 2**10  # ... this


def _use_unrolled(direction: str, x_shape: tuple[int, ...], w_shape: tuple[int, ...],
                  out_hw: Pair, groups: int, nchw: np.ndarray) -> bool:
    """Whether ``direction`` ("forward", "data" or "weight") runs as one GEMM with the
    unrolled weight (see UNROLLED_*); ``nchw`` is the array that must not be channels-last
    (x for forward and weight gradient, gy for the data gradient: the GEMMs take it as
    (N, C*H*W) rows)."""
    n, c, h, wd = x_shape
    o, cg, kh, kw = w_shape
    if (not UNROLLED or groups != 1 or is_channels_last(nchw)
            or 0 in (n, c, h, wd, o, out_hw[0], out_hw[1])):
        return False
    size = o * out_hw[0] * out_hw[1] * h * wd * c * nchw.itemsize
    if size > UNROLLED_MAX_BYTES:
        return False
    waste = h * wd / (kh * kw)
    small = waste <= UNROLLED_MAX_WASTE and size <= UNROLLED_PER_IMAGE_BYTES * n
    if direction == "data":
        return (small or waste <= UNROLLED_DATA_ANY_WASTE
                or (o >= c and waste <= UNROLLED_DATA_MAX_WASTE
                    and size <= UNROLLED_DATA_MAX_BYTES))
    if direction == "weight" and n < UNROLLED_GRAD_MIN_BATCH:
        return False
    return small or waste <= UNROLLED_ANY_WASTE


def _weight_matrix(w: np.ndarray, groups: int) -> np.ndarray:
    """w (O, C/G, kH, kW) -> (G, O/G, kH*kW*C/G) in the column order (kH, kW, C)."""
    o = w.shape[0]
    return np.ascontiguousarray(w.transpose(0, 2, 3, 1)).reshape(groups, o // groups, -1)


@_float16_in_float32
def conv2d_forward(device: Any, x: np.ndarray, w: np.ndarray, out_hw: Pair, stride: Pair,
                   padding: Pair, dilation: Pair, groups: int,
                   bias: np.ndarray | None = None,
                   keep_columns: list | None = None) -> np.ndarray:
    """y (N, O, *out_hw) = conv2d(x, w) + bias: im2col + GEMM (depthwise: shifted
    multiply-adds); the bias is added in place to the fresh output. ``keep_columns``, a
    list, receives the column matrix where the forward built one the weight gradient can
    take as it is (see SAVED_COLUMNS_MAX_BYTES)."""
    if x.shape[1] == 0:  # no input channels: every output is its bias (PyTorch: an error)
        y = np.zeros((x.shape[0], w.shape[0], *out_hw), dtype=x.dtype)
    else:
        y = _forward(x, w, out_hw, stride, padding, dilation, groups, keep_columns)
    if bias is not None:
        y += bias.astype(y.dtype, copy=False).reshape(1, -1, 1, 1)
    return y


def _forward(x: np.ndarray, w: np.ndarray, out_hw: Pair, stride: Pair, padding: Pair,
             dilation: Pair, groups: int, keep_columns: list | None = None) -> np.ndarray:
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    oh, ow = out_hw
    if _is_small_grouped(cg, o // groups, groups):
        return _depthwise_forward(x, w, (oh, ow), stride, padding, dilation, groups)
    if _use_unrolled("forward", x.shape, w.shape, out_hw, groups, x):
        return unrolled.forward(x, w, out_hw, stride, padding, dilation)
    if _use_winograd(x, w.shape, stride, dilation, groups, out_hw):
        return _winograd_forward(x, w, out_hw, padding)
    if _is_strided_pointwise(w.shape, stride, padding, groups):
        return _forward(_subsampled(x, stride), w, out_hw, (1, 1), padding, (1, 1), 1)
    if _use_nchw_row_taps(x, o, (kh, kw), stride, dilation, groups, out_hw):
        return _nchw_row_taps_forward(x, w, out_hw, stride, padding)
    if _use_row_taps(c, (kh, kw), stride, dilation, groups, (oh, ow)):
        return _row_taps_forward(x, w, out_hw, stride, padding)
    if groups == 1 and is_channels_last(x):
        return _forward_nhwc(x, w, out_hw, stride, padding, dilation)
    if _is_pointwise(w.shape, stride, padding) and groups == 1:
        return np.matmul(w.reshape(o, c), x.reshape(n, c, h * wd)).reshape(n, o, oh, ow)
    if _few_channels(x, groups, out_hw):
        return _few_channels_forward(x, w, out_hw, stride, padding, dilation)
    if _one_channel_small(c, groups, out_hw):
        col = _im2col_kn(x, out_hw, (kh, kw), stride, padding, dilation)
        yt = (w.reshape(o, -1) @ col).reshape(o, n, oh * ow)
        return np.ascontiguousarray(yt.transpose(1, 0, 2)).reshape(n, o, oh, ow)
    y = np.empty((n, o, oh, ow), dtype=x.dtype)
    wmat = _weight_matrix(w, groups)
    y_groups = y.reshape(n, groups, o // groups, oh * ow)
    flat_gemm = oh * ow < FORWARD_FLAT_PIXELS
    # (K, O/G) row-major: the layout blas_cpu's small-path row blocks take
    wt = [np.ascontiguousarray(wmat[g].T) for g in range(groups)] if flat_gemm else []
    chunks = _chunks(n, oh * ow, kh * kw * c * x.itemsize)
    for n0, n1 in chunks:
        col = _im2col(x[n0:n1], (oh, ow), (kh, kw), stride, padding, dilation, groups)
        if (keep_columns is not None and groups == 1 and len(chunks) == 1
                and col.nbytes <= SAVED_COLUMNS_MAX_BYTES):
            keep_columns.append(col)
        # NOTE: one matmul per group: a 4-D broadcast matmul measured 1.6x slower. Images
        # up to FORWARD_FLAT_PIXELS use one flat GEMM over all pixels of the chunk and a
        # transposed copy to NCHW: N products with only P columns each starve BLAS.
        for g in range(groups):
            if flat_gemm:
                flat = blas_cpu.matmul(col[g].reshape(-1, col.shape[3]), wt[g])  # (n*P, O/G)
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
    wt = np.ascontiguousarray(_weight_matrix(w, 1)[0].T)  # (K, O)
    if _is_pointwise(w.shape, stride, padding):
        blas_cpu.matmul_into(x.transpose(0, 2, 3, 1).reshape(-1, c), wt, y.reshape(-1, o))
        return y.transpose(0, 3, 1, 2)
    for n0, n1 in _chunks(n, oh * ow, kh * kw * c * x.itemsize):
        col = _im2col(x[n0:n1], out_hw, (kh, kw), stride, padding, dilation, 1)
        blas_cpu.matmul_into(col.reshape(-1, col.shape[3]), wt, y[n0:n1].reshape(-1, o))
    return y.transpose(0, 3, 1, 2)


@_float16_in_float32
def conv2d_backward_weight(device: Any, x: np.ndarray, gy: np.ndarray, w_shape: tuple[int, ...],
                           stride: Pair, padding: Pair, dilation: Pair,
                           groups: int, columns: np.ndarray | None = None) -> np.ndarray:
    """gw = gy (O, N*P) @ col (N*P, K) per group, the column matrix rebuilt per chunk (or
    ``columns``, the forward's, kept by conv2d_forward's ``keep_columns``)."""
    if x.shape[1] == 0 or gy.size == 0:  # nothing to sum: a zero gradient
        return np.zeros(w_shape, dtype=x.dtype)
    n, c = x.shape[:2]
    o, cg, kh, kw = w_shape
    oh, ow = gy.shape[2:]
    if cg == 1 and groups > 1:
        return _depthwise_backward_weight(x, gy, w_shape, stride, padding, dilation, groups)
    if _use_unrolled("weight", x.shape, w_shape, (oh, ow), groups, x):
        return unrolled.backward_weight(x, gy, w_shape, stride, padding, dilation)
    if _use_winograd(x, w_shape, stride, dilation, groups, (oh, ow)):
        return _winograd_backward_weight(x, gy, padding)
    if _is_strided_pointwise(w_shape, stride, padding, groups):
        return conv2d_backward_weight(device, _subsampled(x, stride), gy, w_shape, (1, 1),
                                      padding, (1, 1), 1)
    if (_use_nchw_row_taps(x, o, (kh, kw), stride, dilation, groups, (oh, ow))
            and c <= NCHW_ROW_TAPS_GRAD_MAX_CHANNELS and not is_channels_last(gy)):
        return _nchw_row_taps_backward_weight(x, gy, w_shape, stride, padding)
    if _use_row_taps(c, (kh, kw), stride, dilation, groups, (oh, ow)):
        return _row_taps_backward_weight(x, gy, w_shape, stride, padding)
    if groups == 1 and is_channels_last(gy):
        return _backward_weight_nhwc(x, gy, w_shape, stride, padding, dilation)
    if _is_pointwise(w_shape, stride, padding) and groups == 1:
        g = np.ascontiguousarray(gy.reshape(n, o, oh * ow).transpose(1, 0, 2))
        xt = np.ascontiguousarray(x.reshape(n, c, oh * ow).transpose(1, 0, 2))
        return (g.reshape(o, -1) @ xt.reshape(c, -1).T).reshape(w_shape)
    if _few_channels(x, groups, (oh, ow)):
        return _few_channels_backward_weight(x, gy, w_shape, stride, padding, dilation)
    if _one_channel_small(c, groups, (oh, ow)):
        col = _im2col_kn(x, (oh, ow), (kh, kw), stride, padding, dilation)
        gyt = np.ascontiguousarray(gy.reshape(n, o, oh * ow).transpose(1, 0, 2))
        return (gyt.reshape(o, -1) @ col.T).reshape(w_shape)
    og = o // groups
    gw = np.zeros((groups, og, kh * kw * cg), dtype=x.dtype)
    gy_groups = gy.reshape(n, groups, og, oh * ow)
    chunks = _chunks(n, oh * ow, kh * kw * c * x.itemsize)
    for n0, n1 in chunks:
        if (columns is not None and len(chunks) == 1 and groups == 1
                and columns.shape == (1, n, oh * ow, kh * kw * c)):
            col = columns
        else:
            col = _im2col(x[n0:n1], (oh, ow), (kh, kw), stride, padding, dilation, groups)
        images = _weight_gradient_images(n1 - n0, og, oh * ow, col.shape[-1], x.dtype)
        if groups == 1 and images:
            # one small-path product per block of images, gy copied straight into the blocks
            m, p, k = n1 - n0, oh * ow, col.shape[-1]
            g = gy_groups[n0:n1, 0].reshape(m // images, images, og, p).transpose(0, 2, 1, 3)
            g = np.ascontiguousarray(g).reshape(m // images, og, images * p)
            gw[0] += np.matmul(g, col.reshape(m // images, images * p, k)).sum(axis=0)
            continue
        g = np.ascontiguousarray(gy_groups[n0:n1].transpose(1, 2, 0, 3))
        if groups == 1:  # 2-D: blas_cpu may split the long reduction into small-path blocks
            gw[0] += blas_cpu.matmul(g.reshape(og, -1), col.reshape(-1, col.shape[-1]))
        else:
            gw += np.matmul(g.reshape(groups, og, -1), col.reshape(groups, -1, col.shape[-1]))
    return np.ascontiguousarray(
        gw.reshape(o, kh, kw, cg).transpose(0, 3, 1, 2))


# The weight gradient's gy (O, N*P) @ col (N*P, K) with at most 32 output channels on
# OpenBLAS's small-path kernels: one batched product per block of whole images, each block
# within the small path, instead of blas_cpu's reduction blocks on a transposed copy of gy
# (the block's gy rows are then contiguous, copied from gy once either way). Measured
# (2026-12-04, Zen 5 VM, SkylakeX kernels, one thread, best of 7x500, µs, GEMM and gy copy):
# 16->32 4x4 N=64 73 -> 59, 32->16 4x4 68 -> 56, 8->16 8x8 66 -> 58; with Haswell's
# kernels (no small path) 112 -> 111 but 119 -> 137, so only with the small path.
GRAD_IMAGE_BLOCKS_MAX_OUT = 32


def _weight_gradient_images(m: int, o: int, p: int, k: int, dtype: np.dtype) -> int:
    """Images per block for the weight gradient's small-path products, 0 for none: the
    largest divisor of ``m`` whose block (o, b*p) @ (b*p, k) stays in the small path, at
    least two blocks of at least two images."""
    if (o > GRAD_IMAGE_BLOCKS_MAX_OUT or m < 2 or np.dtype(dtype) not in blas_cpu.FLOATS
            or not blas_cpu.small_path()):
        return 0
    most = min(m // 2, blas_cpu.SMALL_MNK // max(o * p * k, 1))
    for b in range(most, 1, -1):
        if m % b == 0:
            return b
    return 0


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
    for n0, n1 in _chunks(n, oh * ow, kh * kw * c * x.itemsize):
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
    if x_shape[1] == 0 or gy.size == 0:
        return np.zeros(x_shape, dtype=gy.dtype)
    n, c, h, wd = x_shape
    o, cg, kh, kw = w.shape
    oh, ow = gy.shape[2:]
    ph, pw = padding
    dh, dw = dilation
    flip_pad = (dh * (kh - 1) - ph, dw * (kw - 1) - pw)
    fits = oh + dh * (kh - 1) - 2 * ph == h and ow + dw * (kw - 1) - 2 * pw == wd
    small = oh * ow < FLAT_GEMM_PIXELS
    flipped = stride == (1, 1) and min(flip_pad) >= 0 and fits
    if _use_unrolled("data", x_shape, w.shape, (oh, ow), groups, gy):
        return unrolled.backward_data(gy, w, x_shape, stride, padding, dilation)
    # where the flipped forward runs by Winograd it goes first (TAP_GEMMS_WIDE_MAX_PIXELS)
    if not (flipped and _use_winograd(gy, (c, o, kh, kw), (1, 1), dilation, groups, (h, wd))):
        if groups == 1 and 8 * c <= o and small and not is_channels_last(gy):
            return _backward_data_gemm_first(gy, w, x_shape, stride, padding, dilation)
        if (_expanding_tiny(c, o, groups, stride, (oh, ow))
                or _use_tap_gemms(c, o, groups, stride, (oh, ow))):
            gx = _backward_data_nhwc(_as_channels_last(gy), w, x_shape, stride, padding,
                                     dilation)
            return gx if is_channels_last(gy) else np.ascontiguousarray(gx)
    if flipped:
        og = o // groups
        wf = w[:, :, ::-1, ::-1].reshape(groups, og, cg, kh, kw).transpose(0, 2, 1, 3, 4)
        wf = np.ascontiguousarray(wf).reshape(groups * cg, og, kh, kw)
        return conv2d_forward(device, gy, wf, (h, wd), (1, 1), flip_pad, dilation, groups)
    if cg == 1 and groups > 1:
        return _depthwise_backward_data(gy, w, x_shape, stride, padding, dilation, groups)
    if _use_row_taps_col2im(c, (kh, kw), stride, dilation, groups):
        return _row_taps_backward_data(gy, w, x_shape, stride, padding)
    if groups == 1 and is_channels_last(gy):
        return _backward_data_nhwc(gy, w, x_shape, stride, padding, dilation)
    og = o // groups
    wmat = w.reshape(groups, og, cg * kh * kw)
    gy_groups = gy.reshape(n, groups, og, oh * ow)
    gx = np.empty(x_shape, dtype=gy.dtype)
    for n0, n1 in _chunks(n, oh * ow, kh * kw * c * gy.itemsize):
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


# Strided data gradient by kernel rows: gcol_i (P, kW*C) = gy (P, O) @ w_i (O, kW*C) per
# kernel row i, then col2im into a padded NHWC buffer where the kW taps of a pixel are kW*C
# consecutive values: the taps j0 .. j0 + sW - 1 of all OW pixels tile sW*OW*C contiguous
# values of a row, so each group of sW taps is one add over whole rows (3x3/2: 6 adds of
# long runs instead of 9 element-strided ones in NCHW). Measured against the NCHW col2im
# (2026-12-02, one BLAS thread, N=32, 3x3/2 pad 1, best of 3x(3-15) runs in two runs, glibc
# told not to hand big blocks back to the system so that page faults do not swamp the
# comparison, ms): 16->32 32x32 3.0-3.3 -> 2.5-2.8, 32->64 16x16 2.4-3.1 -> 1.4,
# 128->256 28x28 55-60 -> 53-56, 256->512 14x14 65-70 -> 55-58; mixed at 64->128 56x56
# (73 -> 69, 61 -> 66) and slower at 8 channels (1.1-1.6 -> 1.4-1.8).
ROW_TAPS_COL2IM_MIN_CHANNELS = 16
ROW_TAPS_COL2IM_MAX_CHANNELS = 256


def _use_row_taps_col2im(c: int, kernel: Pair, stride: Pair, dilation: Pair,
                         groups: int) -> bool:
    return (groups == 1 and stride != (1, 1) and dilation == (1, 1)
            and ROW_TAPS_COL2IM_MIN_CHANNELS <= c <= ROW_TAPS_COL2IM_MAX_CHANNELS)


def _row_taps_backward_data(gy: np.ndarray, w: np.ndarray, x_shape: tuple[int, ...],
                            stride: Pair, padding: Pair) -> np.ndarray:
    n, c, h, wd = x_shape
    o, _, kh, kw = w.shape
    oh, ow = gy.shape[2:]
    (sh, sw), (ph, pw) = stride, padding
    p = oh * ow
    wr = np.ascontiguousarray(w.transpose(2, 0, 3, 1)).reshape(kh, o, kw * c)
    # (n, P, O) row-major, so each image's GEMM takes OpenBLAS's small path (blas_cpu)
    g = np.ascontiguousarray(gy.transpose(0, 2, 3, 1)).reshape(n, p, o)
    gx = np.empty((n, h, wd, c), dtype=gy.dtype)
    for n0, n1 in _chunks(n, p, kw * c * gy.itemsize):
        m = n1 - n0
        buf = np.zeros((m, h + 2 * ph, wd + 2 * pw, c), dtype=gy.dtype)
        for i in range(kh):
            gcol = np.matmul(g[n0:n1], wr[i]).reshape(m, oh, ow, kw, c)
            rows = buf[:, i:i + sh * (oh - 1) + 1:sh]  # (m, OH, Wp, C)
            for j0 in range(0, kw, sw):
                if j0 + sw <= kw:  # sW taps: one contiguous block of each row
                    block = rows[:, :, j0:j0 + sw * ow].reshape(m, oh, ow, sw, c)
                    block += gcol[:, :, :, j0:j0 + sw]
                else:
                    for j in range(j0, kw):
                        rows[:, :, j:j + sw * (ow - 1) + 1:sw] += gcol[:, :, :, j]
        gx[n0:n1] = buf[:, ph:ph + h, pw:pw + wd]
    out = gx.transpose(0, 3, 1, 2)
    return out if is_channels_last(gy) else np.ascontiguousarray(out)


# Stride-1 data gradients of channel-expanding layers (C < O) on tiny images also run GEMM
# first, in NHWC: gcol (N*P, kH*kW*C) = gy (N*P, O) @ wmat, then the col2im adds C-long runs.
# The flipped forward copies kH*kW*O values per pixel where this adds kH*kW*C, and the NCHW
# col2im's runs would be OW values long. Measured against the flipped forward (2026-12-02,
# 2-core Intel Xeon VM with AVX-512, one BLAS thread, N=64, 3x3 pad 1, best of 5 interleaved
# runs beside other work, µs): 32->64 4x4 1544 -> 928, 5x5 2062 -> 1447, 48->64 4x4 2019 ->
# 1390, 64->128 4x4 5365 -> 2502; but 32->64 at 3x3 511 -> 541, 2x2 235 -> 260, 6x6 2627 ->
# 3167, 8x8 (N=32) 1135 -> 1860, and 16->32 4x4 281 -> 428: only 16-25 pixels, from 32
# channels (the digits LeNet's second layer).
EXPANDING_TINY_MIN_CHANNELS = 32
EXPANDING_TINY_PIXELS = (16, 25)


def _expanding_tiny(c: int, o: int, groups: int, stride: Pair, out_hw: Pair) -> bool:
    lo, hi = EXPANDING_TINY_PIXELS
    return (groups == 1 and stride == (1, 1) and EXPANDING_TINY_MIN_CHANNELS <= c < o
            and lo <= out_hw[0] * out_hw[1] <= hi)


def _as_channels_last(x: np.ndarray) -> np.ndarray:
    """x (N, C, H, W) with channels-last strides: x itself if it has them, else a copy."""
    if is_channels_last(x):
        return x
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def _backward_data_gemm_first(gy: np.ndarray, w: np.ndarray, x_shape: tuple[int, ...],
                              stride: Pair, padding: Pair, dilation: Pair) -> np.ndarray:
    """Groups 1, fewer input than output channels, small images: gcol (C*kH*kW, N*P) =
    w (O, C*kH*kW)^T @ gy (O, N*P), then col2im, one strided add of (C, N, OH, OW) per
    kernel offset. The flipped forward would copy O*kH*kW columns per pixel, this adds
    C*kH*kW (the digits' 1->16 layer: 9 against 144), and both of w and gw keep their
    natural layouts: no weight transposes."""
    n, c, h, wd = x_shape
    o, _, kh, kw = w.shape
    oh, ow = gy.shape[2:]
    ph, pw = padding
    gyt = np.ascontiguousarray(gy.reshape(n, o, oh * ow).transpose(1, 0, 2))  # (O, N, P)
    gcol = (w.reshape(o, -1).T @ gyt.reshape(o, -1)).reshape(c, kh, kw, n, oh, ow)
    buf = np.zeros((n, c, h + 2 * ph, wd + 2 * pw), dtype=gy.dtype)
    bt = buf.transpose(1, 0, 2, 3)
    for i in range(kh):
        for j in range(kw):
            rows, cols = _offset_slices(i, j, (oh, ow), stride, dilation)
            bt[:, :, rows, cols] += gcol[:, i, j]
    return np.ascontiguousarray(buf[:, :, ph:ph + h, pw:pw + wd])


# Stride-1 data gradients of layers the flipped forward would run as plain im2col (more than
# ROW_TAPS_MAX_CHANNELS output channels and too small for Winograd) go by tap GEMMs instead
# (_backward_data_nhwc). Measured (2026-12-03, one BLAS thread, 2-core Intel VM, quiet, best
# of 300, three runs): 512 ch 7x7 N=32 101-137 -> 77-78 ms; the flipped forward stays faster
# where it has its own fast paths (16 ch 32x32 8.4 against 9.0, 32 ch 16x16 3.0 against 5.0).
# So do 4x4-sized images whose output channels are at least 32 and not fewer than the input's
# (measured 2026-12-03, quiet, best of 300, three runs, N=64 unless given, C->O: 16->32
# 309-527 -> 291-399 µs, 64->64 2.2-3.1 -> 1.4-1.9 ms, N=32 128->128 4.0-5.1 -> 2.1 ms; but
# slower at 16->16 (163-236 -> 246-256), 32->16, 8->8, 3x3 images (9 pixels: the padded
# rows' share grows) and no better at 5x5 or 2x2).
TAP_GEMMS_PIXELS = (12, 16)
TAP_GEMMS_MIN_OUT_CHANNELS = 32
# "too small for Winograd" above meant below 14x14 when it was measured; where the flipped
# forward now takes Winograd (>= 64 channels both ways, from 4x4) conv2d_backward_data
# goes there first (512 ch 7x7 N=32, 2026-12-04, Zen 5 VM: 37.5 -> 32.7 ms with SkylakeX
# kernels, 71 -> 51 with Haswell's)
TAP_GEMMS_WIDE_MAX_PIXELS = 196


def _use_tap_gemms(c: int, o: int, groups: int, stride: Pair, out_hw: Pair) -> bool:
    pixels = out_hw[0] * out_hw[1]
    small = (TAP_GEMMS_PIXELS[0] <= pixels <= TAP_GEMMS_PIXELS[1]
             and o >= max(c, TAP_GEMMS_MIN_OUT_CHANNELS))
    wide = o > ROW_TAPS_MAX_CHANNELS and pixels < TAP_GEMMS_WIDE_MAX_PIXELS
    return groups == 1 and stride == (1, 1) and (small or wide)


def _backward_data_nhwc(gy: np.ndarray, w: np.ndarray, x_shape: tuple[int, ...], stride: Pair,
                        padding: Pair, dilation: Pair) -> np.ndarray:
    """Channels-last gy, groups 1, any stride: gcol (N*P, K) = gy (N*P, O) @ wmat (O, K),
    then col2im into a padded NHWC buffer, one strided add of C-long runs per kernel
    offset; gx comes back channels-last. Stride 1 goes by :func:`_tap_gemms_backward_data`."""
    n, c, h, wd = x_shape
    o, _, kh, kw = w.shape
    oh, ow = gy.shape[2:]
    ph, pw = padding
    if stride == (1, 1):
        return _tap_gemms_backward_data(gy, w, x_shape, padding, dilation)
    wmat = _weight_matrix(w, 1)[0]  # (O, kH*kW*C)
    g = gy.transpose(0, 2, 3, 1)
    gx = np.empty((n, h, wd, c), dtype=gy.dtype)
    for n0, n1 in _chunks(n, oh * ow, kh * kw * c * gy.itemsize):
        m = n1 - n0
        gcol = (g[n0:n1].reshape(-1, o) @ wmat).reshape(m, oh, ow, kh, kw, c)
        buf = np.zeros((m, h + 2 * ph, wd + 2 * pw, c), dtype=gy.dtype)
        for i in range(kh):
            for j in range(kw):
                rows, cols = _offset_slices(i, j, (oh, ow), stride, dilation)
                buf[:, rows, cols] += gcol[:, :, :, i, j]
        gx[n0:n1] = buf[:, ph:ph + h, pw:pw + wd]
    return gx.transpose(0, 3, 1, 2)


def _tap_gemms_backward_data(gy: np.ndarray, w: np.ndarray, x_shape: tuple[int, ...],
                             padding: Pair, dilation: Pair) -> np.ndarray:
    """Channels-last gy, groups 1, stride 1: per kernel offset (i, j) one GEMM gy (N*P, O) @
    w[:, :, i, j] (O, C) into a reused (N, OH, OW, C) block, added into the padded NHWC
    buffer at that offset, where (stride 1) each image's OW*C values of a row are one
    contiguous run, instead of one C-long run per pixel and offset from a (N*P, kH*kW*C)
    gcol; gx comes back channels-last. Measured against the gcol col2im (2026-12-03, one
    thread, quiet 2-core Intel VM, best of 300, three runs): LeNet's 64->32 4x4 N=64
    856-1257 -> 758-1029 µs, 512 ch 7x7 N=32 85-104 -> 77-78 ms."""
    n, c, h, wd = x_shape
    o, _, kh, kw = w.shape
    oh, ow = gy.shape[2:]
    (ph, pw), (dh, dw) = padding, dilation
    g = gy.transpose(0, 2, 3, 1).reshape(-1, o)  # a view: gy is channels-last
    taps = np.ascontiguousarray(w.transpose(2, 3, 0, 1))  # (kH, kW, O, C)
    buf = np.zeros((n, h + 2 * ph, wd + 2 * pw, c), dtype=gy.dtype)
    part = np.empty((n * oh * ow, c), dtype=gy.dtype)
    block = part.reshape(n, oh, ow, c)
    for i in range(kh):
        for j in range(kw):
            np.matmul(g, taps[i, j], out=part)
            buf[:, i * dh:i * dh + oh, j * dw:j * dw + ow] += block
    gx = np.empty((n, h, wd, c), dtype=gy.dtype)  # dense channels-last, as the other paths
    gx[...] = buf[:, ph:ph + h, pw:pw + wd]
    return gx.transpose(0, 3, 1, 2)


# ---- depthwise: C/G == 1, O = G * multiplier ----------------------------------------------
#
# No GEMM has a useful shape, so each output plane is a sum over the kernel taps of a shifted
# input plane times one weight. The batch's (sample, group) planes are processed a block at a
# time (:data:`PLANE_BLOCK_BYTES`), so the padded copy, the accumulator and the temporary of
# one block stay in L2 for all kH*kW multiply-adds (one pass over the whole batch per tap
# measured 3-5x slower: each pass streamed ~4 arrays through memory). Each block is copied
# into a zero-bordered buffer, one flat row of ``_Taps.plane`` values per input plane, so
# there is no np.pad copy of the whole input and the borders are zeroed once.
#
# Stride 1 across: the output is computed "wide", over the padded row width Wp instead of OW
# (the Wp - OW extra columns read wrapped-around values and are dropped). Tap (i, j) is then
# the flat plane shifted by i*dH*Wp + j*dW, and with stride 1 down too every operand is one
# contiguous run per plane (measured 2x faster than the 2-D strided slices).

def _offset_slices(i: int, j: int, out_hw: Pair, stride: Pair,
                   dilation: Pair) -> tuple[slice, slice]:
    """Rows and columns of the padded input that kernel offset (i, j) reads."""
    rows = slice(i * dilation[0], i * dilation[0] + stride[0] * (out_hw[0] - 1) + 1, stride[0])
    cols = slice(j * dilation[1], j * dilation[1] + stride[1] * (out_hw[1] - 1) + 1, stride[1])
    return rows, cols


PLANE_BLOCK_BYTES = 640 * 2**10  # the working set of one block of planes (bytes)


class _Taps:
    """Flat-plane geometry: padded width ``wp``, accumulator row length ``wq`` (``wp`` when
    computed wide, else OW), the flat offset of each tap, the floats per buffered plane."""

    def __init__(self, in_hw: Pair, out_hw: Pair, kernel: Pair, stride: Pair, padding: Pair,
                 dilation: Pair, wide: bool) -> None:
        (h, wd), (oh, ow), (kh, kw) = in_hw, out_hw, kernel
        self.hp, self.wp = h + 2 * padding[0], wd + 2 * padding[1]
        # NOTE: wide only while the dropped columns stay a small fraction of the work.
        self.wq = self.wp if wide and stride[1] == 1 and 4 * (self.wp - ow) <= ow else ow
        self.offsets = [i * dilation[0] * self.wp + j * dilation[1]
                        for i in range(kh) for j in range(kw)]
        last = self.offsets[-1] + (oh - 1) * stride[0] * self.wp + (self.wq - 1) * stride[1]
        self.plane = max(self.hp * self.wp, last + 1)
        self.out_hw, self.stride, self.padding, self.in_hw = out_hw, stride, padding, in_hw

    def buffer(self, planes: int, depth: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        """A zeroed (planes, depth, plane) buffer and its (planes, depth, H, W) interior."""
        buf = np.zeros((planes, depth, self.plane), dtype=dtype)
        (h, wd), (ph, pw) = self.in_hw, self.padding
        grid = buf[:, :, :self.hp * self.wp].reshape(planes, depth, self.hp, self.wp)
        return buf, grid[:, :, ph:ph + h, pw:pw + wd]

    def view(self, buf: np.ndarray, m: int, depth: int, tap: int,
             writeable: bool = False) -> np.ndarray:
        """(m, 1, OH, wq) view of channel ``depth`` of the first m buffered planes that tap
        ``tap`` reads (or, writeable, scatters into)."""
        s0, s1, s2 = buf.strides
        flat = buf.reshape(-1)[depth * self.plane + self.offsets[tap]:]
        return as_strided(flat, (m, 1, self.out_hw[0], self.wq),
                          (s0, 0, s2 * self.stride[0] * self.wp, s2 * self.stride[1]),
                          writeable=writeable)


def _block(planes: int, per_plane_items: int, itemsize: int) -> int:
    """Planes per block: as many as fit in PLANE_BLOCK_BYTES, at least one."""
    return max(1, min(planes, PLANE_BLOCK_BYTES // max(per_plane_items * itemsize, 1)))


def _per_plane_weights(w: np.ndarray, n: int, groups: int) -> np.ndarray:
    """w (G*og, cg, kH, kW) -> (n*G, og, cg, kH*kW): each (sample, group) plane's weights."""
    o, cg, kh, kw = w.shape
    wk = w.reshape(1, groups, o // groups, cg, kh * kw)
    return np.broadcast_to(wk, (n, *wk.shape[1:])).reshape(n * groups, o // groups, cg, -1)


def _is_small_grouped(cg: int, og: int, groups: int) -> bool:
    """Grouped convolutions run as per-plane multiply-adds: depthwise (cg == 1, any
    multiplier; groups 1 too, a one-channel input), and the flipped depthwise of backward
    data with a multiplier (og == 1, a few channels per group)."""
    return groups > 1 and (cg == 1 or og == 1 and cg <= 8)


# Stride-1 depthwise on narrow images by banded GEMMs: one kernel row i of channel c is a 1-D
# convolution along the rows, which is a product with the (Wp, OW) Toeplitz matrix
# T[q + j, q] = w[c, 0, i, j]. With the channel's padded planes of all N images stacked into
# one (N*Hp, Wp) matrix, kernel row i is that matrix from row i on (the rows past each
# image's OH valid ones are computed and dropped): y_c = sum over i of rows[i:] @ T_ci, kH
# GEMMs per channel (np.matmul loops them over a block of channels in C) and kH - 1 adds,
# for channels in blocks of about TOEPLITZ_BLOCK_BYTES so the planes and sums stay in L2. The
# GEMMs do Wp multiply-adds per output where kW are needed, but at BLAS speed where the
# per-tap path makes two NumPy passes per tap, so it wins while Wp is a few times kW.
# Measured (2026-12-03, one BLAS thread, 2-core Intel VM, N=32, forward, best of 5 ms,
# per-tap -> banded): 240 ch 28x28 5x5 170 -> 44, 240 14x14 5x5 94 -> 11, 256 14x14 3x3 23 ->
# 8, 128 28x28 3x3 30 -> 14, 64 32x32 3x3 21 -> 10, 32 16x16 3x3 3.1 -> 0.8; about even at
# 96 56x56 5x5 (130 -> 131, Wp = 12 kW) and slower at 128 56x56 3x3 (66 -> 77, Wp = 19 kW).
# The stride-1 data gradient is a forward with the flipped kernel, so it takes the same path.
DEPTHWISE_TOEPLITZ = True  # False forces the per-tap path (benchmarks, tests)
TOEPLITZ_MAX_WIDTH_PER_TAP = 11  # padded width Wp at most this many kernel widths
TOEPLITZ_BLOCK_BYTES = 1 * 2**20


def _use_toeplitz(x: np.ndarray, w_shape: tuple[int, ...], stride: Pair, padding: Pair,
                  dilation: Pair, groups: int) -> bool:
    o, cg, _, kw = w_shape
    return (DEPTHWISE_TOEPLITZ and cg == 1 and o == groups and stride == (1, 1)
            and dilation == (1, 1) and x.dtype in (np.float32, np.float64)
            and x.shape[3] + 2 * padding[1] <= TOEPLITZ_MAX_WIDTH_PER_TAP * kw)


def _toeplitz_depthwise_forward(x: np.ndarray, w: np.ndarray, padding: Pair) -> np.ndarray:
    """Depthwise (one weight plane per channel), stride 1: y (N, C, OH, OW) NCHW from any
    layout of x, by the banded GEMMs above."""
    n, c, h, wd = x.shape
    kh, kw = w.shape[2:]
    (ph, pw) = padding
    hp, wp = h + 2 * ph, wd + 2 * pw
    oh, ow = hp - kh + 1, wp - kw + 1
    rows = n * hp
    per_channel = (rows * wp + 2 * rows * ow) * x.itemsize
    cb = max(1, min(c, TOEPLITZ_BLOCK_BYTES // max(per_channel, 1)))
    band = np.zeros((c, kh, wp, ow), x.dtype)  # band[c, i, q + j, q] = w[c, 0, i, j]
    q = np.arange(ow)
    for j in range(kw):
        band[:, :, q + j, q] = w[:, 0, :, j, None]
    y = np.empty((n, c, oh, ow), x.dtype)
    # kh spare zero rows after the last image: kernel row i reads rows [i, i + rows)
    buf = np.zeros((cb, rows + kh, wp), x.dtype)
    acc = np.empty((cb, rows, ow), x.dtype)
    tmp = np.empty_like(acc)
    for c0 in range(0, c, cb):
        c1 = min(c, c0 + cb)
        m = c1 - c0
        planes = buf[:m, :rows].reshape(m, n, hp, wp)
        planes[:, :, ph:ph + h, pw:pw + wd] = x[:, c0:c1].transpose(1, 0, 2, 3)
        a, t = acc[:m], tmp[:m]
        np.matmul(buf[:m, :rows], band[c0:c1, 0], out=a)
        for i in range(1, kh):
            np.matmul(buf[:m, i:i + rows], band[c0:c1, i], out=t)
            a += t
        y[:, c0:c1] = a.reshape(m, n, hp, ow)[:, :, :oh].transpose(1, 0, 2, 3)
    return y


def _depthwise_forward(x: np.ndarray, w: np.ndarray, out_hw: Pair, stride: Pair,
                       padding: Pair, dilation: Pair, groups: int) -> np.ndarray:
    """y[n, g*og + o] = sum over c < cg and the taps of the shifted x[n, g*cg + c] times
    w[g*og + o, c, tap]; cg == 1 (depthwise) or og == 1."""
    if _use_toeplitz(x, w.shape, stride, padding, dilation, groups):
        return _toeplitz_depthwise_forward(x, w, padding)
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    og, planes = o // groups, n * groups
    taps = _Taps((h, wd), out_hw, (kh, kw), stride, padding, dilation, wide=True)
    oh = out_hw[0]
    bp = _block(planes, cg * taps.plane + 2 * og * oh * taps.wq, x.itemsize)
    xs = x.reshape(planes, cg, h, wd)
    wt = _per_plane_weights(w, n, groups)
    buf, interior = taps.buffer(bp, cg, x.dtype)
    y = np.empty((planes, og, *out_hw), dtype=x.dtype)
    wide = taps.wq != out_hw[1]
    acc = np.empty((bp, og, oh, taps.wq), dtype=x.dtype) if wide else None
    tmp = np.empty((bp, og, oh, taps.wq), dtype=x.dtype)
    for p0 in range(0, planes, bp):
        p1 = min(p0 + bp, planes)
        m = p1 - p0
        interior[:m] = xs[p0:p1]
        a = acc[:m] if acc is not None else y[p0:p1]
        t = tmp[:m]
        for ci in range(cg):
            for k in range(kh * kw):
                v = taps.view(buf, m, ci, k)
                wv = wt[p0:p1, :, ci, k, None, None]
                if ci == k == 0:
                    np.multiply(v, wv, out=a)
                else:
                    np.multiply(v, wv, out=t)
                    np.add(a, t, out=a)
        if acc is not None:
            y[p0:p1] = a[..., :out_hw[1]]
    return y.reshape(n, o, *out_hw)


def _depthwise_backward_data(gy: np.ndarray, w: np.ndarray, x_shape: tuple[int, ...],
                             stride: Pair, padding: Pair, dilation: Pair,
                             groups: int) -> np.ndarray:
    """The adjoint of the depthwise forward (cg == 1): each tap scatters gy times its
    weight (summed over the multiplier) into the block's zeroed padded buffer."""
    n, c, h, wd = x_shape
    o, _, kh, kw = w.shape
    og, planes = o // groups, n * groups
    out_hw = gy.shape[2:]
    oh, ow = out_hw
    taps = _Taps((h, wd), out_hw, (kh, kw), stride, padding, dilation, wide=False)
    bp = _block(planes, taps.plane + (og + 1) * oh * ow, gy.itemsize)
    g = gy.reshape(planes, og, oh, ow)
    wt = _per_plane_weights(w, n, groups)[:, :, 0]  # (planes, og, taps)
    buf, interior = taps.buffer(bp, 1, gy.dtype)
    gx = np.empty((planes, 1, h, wd), dtype=gy.dtype)
    tmp = np.empty((bp, 1, oh, ow), dtype=gy.dtype)
    for p0 in range(0, planes, bp):
        p1 = min(p0 + bp, planes)
        m = p1 - p0
        if p0:
            buf[:m] = 0
        t = tmp[:m]
        for k in range(kh * kw):
            if og == 1:
                np.multiply(g[p0:p1], wt[p0:p1, :, k, None, None], out=t)
            else:
                np.matmul(wt[p0:p1, None, :, k], g[p0:p1].reshape(m, og, -1),
                          out=t.reshape(m, 1, -1))
            v = taps.view(buf, m, 0, k, writeable=True)
            np.add(v, t, out=v)
        gx[p0:p1] = interior[:m]
    return gx.reshape(x_shape)


def _depthwise_backward_weight(x: np.ndarray, gy: np.ndarray, w_shape: tuple[int, ...],
                               stride: Pair, padding: Pair, dilation: Pair,
                               groups: int) -> np.ndarray:
    """gw[g*og + o, 0, tap] = sum over the batch and the pixels of gy[n, g*og + o] times the
    tap's shifted x[n, g] (cg == 1): per block and tap one batched dot product (a matmul of
    (og, P) by (P, 1) per plane) where the shifted plane is one contiguous run, else an
    einsum; gy is copied into a zeroed wide buffer when the output is computed wide."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w_shape
    og, planes = o // groups, n * groups
    out_hw = gy.shape[2:]
    oh, ow = out_hw
    taps = _Taps((h, wd), out_hw, (kh, kw), stride, padding, dilation, wide=True)
    wide = taps.wq != ow
    flat = wide and stride[0] == 1  # each tap's plane is one contiguous run
    bp = _block(planes, taps.plane + og * oh * taps.wq, x.itemsize)
    xs = x.reshape(planes, 1, h, wd)
    g_all = gy.reshape(planes, og, oh, ow)
    buf, interior = taps.buffer(bp, 1, x.dtype)
    gbuf = np.zeros((bp, og, oh, taps.wq), dtype=x.dtype) if wide else None
    gw = np.empty((planes, og, kh * kw), dtype=x.dtype)
    for p0 in range(0, planes, bp):
        p1 = min(p0 + bp, planes)
        m = p1 - p0
        interior[:m] = xs[p0:p1]
        if gbuf is not None:
            gbuf[:m, :, :, :ow] = g_all[p0:p1]
            g = gbuf[:m]
        else:
            g = g_all[p0:p1]
        for k in range(kh * kw):
            v = taps.view(buf, m, 0, k)
            if flat:
                np.matmul(g.reshape(m, og, -1), v.reshape(m, -1, 1),
                          out=gw[p0:p1, :, k, None])
            else:
                gw[p0:p1, :, k] = np.einsum("pmab,pab->pm", g, v[:, 0])
    return gw.reshape(n, o, kh * kw).sum(axis=0).reshape(o, 1, kh, kw)


# ---- Winograd F(2x2, 3x3): where it is used (conv_winograd_cpu.py holds the algorithm) -----

WINOGRAD = True  # False forces the im2col path (benchmarks, tests)
# Where it is used, by measurement (one BLAS thread, 2026-12-02, N=32, C = O, padding 1,
# interleaved with im2col, medians of 9, 2-core shared VM, noisy): faster at 64 ch 56x56
# (462 -> 333 ms NCHW, 783 -> 411 channels-last), 128 28x28 (213 -> 211, 283 -> 218) and
# 256 14x14 (149 -> 106, 183 -> 120); slower at 16 ch 32x32 (13.0 -> 17.3: the GEMMs'
# reduction is only C = 16 long) and 32 16x16 (6.7 -> 8.9), even at 64 8x8 (3.0 -> 3.4) and
# 512 7x7 (127 -> 141: a 7x7 output pads to 8x8 tiles, 31% wasted, and T is 512 rows).
# Since the weight gradient runs band by band (conv_winograd_cpu, 2026-12-04) Winograd also
# wins on small images (the same 2-core Zen 5 VM, one BLAS thread, N=32 (64 at 4x4), C = O,
# forward + data gradient + weight gradient, best of 5x5, ms, im2col / kernel rows ->
# Winograd, SkylakeX kernels; Haswell): 64 ch 8x8 2.59 -> 2.52; 4.83 -> 3.61, 128 ch 8x8
# 11.7 -> 7.7; 18.2 -> 11.0, 256 ch 7x7 30.7 -> 28.6; 54.6 -> 43.8, 512 ch 7x7 117 -> 102;
# 216 -> 151, 64 ch 4x4 1.63 -> 1.64; 2.83 -> 2.24. So from 4x4 outputs; 32 channels stay
# off (16x16, forward: 1.07 -> 1.31 with SkylakeX).
WINOGRAD_MIN_CHANNELS = 64  # C and O at least this
WINOGRAD_MIN_PIXELS = 16  # output at least this many pixels per image (4x4)


def _use_winograd(x: np.ndarray, w_shape: tuple[int, ...], stride: Pair, dilation: Pair,
                  groups: int, out_hw: Pair) -> bool:
    """Winograd applies (3x3, stride 1, dilation 1, groups 1, float32/64) and was measured
    faster than im2col for the shape (the forward, and so the stride-1 data gradient, and
    the weight gradient: one rule for the three, see WINOGRAD_MIN_*)."""
    o, c, kh, kw = w_shape
    return (WINOGRAD and groups == 1 and (kh, kw) == (3, 3) and stride == (1, 1)
            and dilation == (1, 1) and x.dtype in (np.float32, np.float64)
            and min(c, o) >= WINOGRAD_MIN_CHANNELS
            and out_hw[0] * out_hw[1] >= WINOGRAD_MIN_PIXELS)

"""Kernel path of depthwise 2-D convolution: launches ``kernels/conv2d_depthwise.cu`` on a
``cuda`` or ``emu`` device.

Depthwise means groups == C with one input channel per filter: x (N, C, H, W), w (F, 1, KH, KW)
with F = C * M for a channel multiplier M >= 1 (filter f reads channel f // M); :func:`serves`
says whether a shape is one. The functions have the signatures of :mod:`dlcore.ops.conv_cuda`
(arrays on ``device``, float32 or float64, NCHW; ``stride``, ``padding``, ``dilation`` int pairs
already validated by the caller), so a caller can pick either module by :func:`serves`::

    y = conv2d_forward(device, x, w, (56, 56), (1, 1), (1, 1), (1, 1), groups=x.shape[1])

Which entry point serves a shape (tests assert it through
:func:`dlcore.kernels.recorded_launches`):

* forward and backward-weight: ``<T, 3, 3, S>`` / ``<T, 5, 5, S>`` for 3x3 and 5x5 at stride
  S = 1 or 2 in both dimensions and dilation 1 (taps unrolled, sizes compile-time), else
  ``<T, 0, 0, 0>`` (any size, stride, dilation); backward-weight adds
  ``conv2d_depthwise_backward_weight_reduce`` when it splits its reduction over blocks;
* backward-data: stride 1 runs the forward tiles over gx with the taps reversed
  (``conv2d_depthwise_backward_data<T, 3, 3>``, ``<T, 5, 5>``, else ``<T, 0, 0>``); other
  strides run ``conv2d_depthwise_backward_data_strided`` (a gather, no shared memory);
* a window so large that even a one-thread-wide tile exceeds :data:`SHARED_BUDGET` (a dilated
  extent of about 70 x 70 in float64) goes to the SIMT implicit GEMM,
  :mod:`dlcore.ops.conv_gemm_cuda` (not the :mod:`dlcore.ops.conv_cuda` dispatcher, which may
  send depthwise shapes back here).

Every result is deterministic: no atomics, fixed summation orders.

Bench suggestion (``dlcore/bench/conv.py`` belongs to another engineer; this is the case list
that suite could take, rows as its ``CASES``: name, N, C, O, H, k, stride, padding, groups)::

    def depthwise_cases() -> list[tuple]:
        # MobileNetV2 / EfficientNet / ConvNeXt depthwise layers at N=32. Depthwise is memory
        # bound (2 FLOPs per tap, 9-49 taps per output): report GB/s against the minimum
        # traffic (x + y + w, itemsize each; backward-data gy + w + gx; backward-weight x + gy
        # + gw) as well as GFLOP/s, and compare with cuDNN through torch when importable.
        return [
            ("dw3x3 32ch 112x112", 32, 32, 32, 112, 3, 1, 1, 32),
            ("dw3x3/2 96ch 112x112", 32, 96, 96, 112, 3, 2, 1, 96),
            ("dw3x3 144ch 56x56", 32, 144, 144, 56, 3, 1, 1, 144),
            ("dw3x3 384ch 14x14", 32, 384, 384, 14, 3, 1, 1, 384),
            ("dw3x3 960ch 7x7", 32, 960, 960, 7, 3, 1, 1, 960),
            ("dw5x5 240ch 28x28", 32, 240, 240, 28, 5, 1, 2, 240),
            ("dw5x5/2 144ch 56x56", 32, 144, 144, 56, 5, 2, 2, 144),
            ("dw7x7 128ch 56x56", 32, 128, 128, 56, 7, 1, 3, 128),  # the generic path
            ("dw3x3 x2 64->128 28x28", 32, 64, 128, 28, 3, 1, 1, 64),  # multiplier 2
        ]

    # and, in EMU_KERNEL_CASE's spirit, one tiny emulator smoke case:
    # ("tiny dw3x3 4ch 9x9", 1, 4, 4, 9, 3, 1, 1, 4)
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import numpy as np

from ..kernels import ceil_div, ctype, grid_1d
from . import conv_gemm_cuda
from .conv_gemm_cuda import no_bias

__all__ = ["conv2d_backward_data", "conv2d_backward_weight", "conv2d_forward", "serves"]

Pair = tuple[int, int]

SOURCE = "conv2d_depthwise.cu"
THREADS = 256
STRIP_ROWS = 4  # kRows: output rows per thread per step
MAX_PLANES = 32  # kMaxPlanes: sub-planes per block
TAP_GROUP = 8  # kTapGroup: taps per generic backward-weight block
MAX_TILE_ROWS = 64  # stop growing a tile down a plane past this many output rows
# Dynamic shared memory per block: under CUDA's 48 KB (no opt-in needed, and the emulator's
# limit) with room for the static tables; smaller tiles also leave room for more blocks per SM.
SHARED_BUDGET = 40 * 1024
SPECIALIZED = ((3, 3), (5, 5))  # kernel sizes with compile-time instantiations
# Backward-weight: aim for this many blocks, but give each split at least MIN_SPLIT_ITEMS tiles
# so its block reduction and partial row stay small next to the work.
TARGET_BLOCKS = 512
MIN_SPLIT_ITEMS = 4
# Strided backward-data: planes per block grow (up to 8 rounds) while the grid keeps this many.
GATHER_TARGET_BLOCKS = 1024
MAX_GRID_YZ = 65535


def serves(x_shape: tuple[int, ...], w_shape: tuple[int, ...], groups: int) -> bool:
    """Whether (x, w, groups) is a depthwise convolution these kernels take: groups == C, one
    input channel per filter, F = C * M filters (M >= 1)."""
    if len(x_shape) != 4 or len(w_shape) != 4:
        return False
    c, f = x_shape[1], w_shape[0]
    return groups == c >= 1 and w_shape[1] == 1 and f >= c and f % c == 0


class Tile(NamedTuple):
    """A block tile (see the header of ``kernels/conv2d_depthwise.cu``): tile_w x tile_h threads
    per sub-plane, ``planes`` sub-planes, ``steps`` strips down, ``row_stride`` elements per
    staged row, ``shared`` bytes of dynamic shared memory."""

    tile_w: int
    tile_h: int
    planes: int
    steps: int
    row_stride: int
    shared: int

    @property
    def rows(self) -> int:
        """Output rows the tile covers."""
        return self.tile_h * STRIP_ROWS * self.steps

    def grid(self, planes_total: int, out_hw: Pair) -> tuple[int, int, int]:
        grid = (ceil_div(planes_total, self.planes), ceil_div(out_hw[0], self.rows),
                ceil_div(out_hw[1], self.tile_w))
        if max(grid[1:]) > MAX_GRID_YZ:
            raise ValueError(f"depthwise conv2d kernels: a {out_hw} plane needs {grid[1:]} "
                             f"tiles, past the grid limit ({MAX_GRID_YZ} on y/z)")
        return grid

    def args(self) -> tuple[np.int32, ...]:
        return _ints(self.tile_w, self.tile_h, self.planes, self.steps, self.row_stride)


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _row_stride(cols: int, tile_w: int, stride_h: int, itemsize: int) -> int:
    """Elements per staged row: at least ``cols``, padded so that the strips of one warp's
    thread rows, STRIP_ROWS * stride_h staged rows apart, start tile_w banks apart (their
    lanes then hit distinct banks). A shared-memory wavefront serves 128 bytes: 32 floats,
    16 doubles; nothing to pad when a thread row fills one."""
    banks = 128 // itemsize
    if tile_w >= banks:
        return cols
    for stride in range(cols, cols + banks):
        if STRIP_ROWS * stride_h * stride % banks == tile_w:
            return stride
    return cols


@functools.lru_cache(maxsize=1024)
def _tile(out_hw: Pair, planes_avail: int, kernel: Pair, stride: Pair, dilation: Pair,
          itemsize: int, taps_in_shared: bool) -> Tile | None:
    """The block tile for output planes ``out_hw``: a thread per column (at most 32), strips
    down the plane up to MAX_TILE_ROWS rows, and small planes packed several to a block; then
    shrunk until its staged input fits SHARED_BUDGET. None when even a single strip does not."""
    ho, wo = out_hw
    tile_w = min(32, _pow2_at_least(wo))
    tile_h = min(THREADS // tile_w, _pow2_at_least(ceil_div(ho, STRIP_ROWS)))
    planes = max(1, min(THREADS // (tile_w * tile_h), MAX_PLANES, planes_avail))
    steps = max(1, min(ceil_div(ho, tile_h * STRIP_ROWS), MAX_TILE_ROWS // (tile_h * STRIP_ROWS)))
    while True:
        cols = (tile_w - 1) * stride[1] + (kernel[1] - 1) * dilation[1] + 1
        rows = (tile_h * STRIP_ROWS * steps - 1) * stride[0] + (kernel[0] - 1) * dilation[0] + 1
        row_stride = _row_stride(cols, tile_w, stride[0], itemsize)
        elements = planes * (rows * row_stride + (kernel[0] * kernel[1] if taps_in_shared else 0))
        shared = ceil_div(elements * itemsize, 16) * 16
        if shared <= SHARED_BUDGET and cols <= THREADS:  # staging keeps a thread per column
            return Tile(tile_w, tile_h, planes, steps, row_stride, shared)
        if steps > 1:
            steps //= 2
        elif tile_h > 1:
            tile_h //= 2
        elif planes > 1:
            planes //= 2
        elif tile_w > 1:
            tile_w //= 2
        else:
            return None


def _variant(kernel: Pair, stride: Pair, dilation: Pair) -> tuple[int, int, int]:
    """The template's (KH, KW, S): compile-time for SPECIALIZED sizes at stride 1 or 2 (both
    dimensions alike) and dilation 1, else (0, 0, 0), the runtime-size kernels."""
    if kernel in SPECIALIZED and dilation == (1, 1) and stride[0] == stride[1] in (1, 2):
        return (*kernel, stride[0])
    return (0, 0, 0)


@functools.lru_cache(maxsize=1024)
def _ints(*values: int) -> tuple[np.int32, ...]:
    """Kernel int arguments, cached per layer shape (the conversions cost host time)."""
    return tuple(np.int32(v) for v in values)


def _geometry(x_shape: tuple[int, ...], w_shape: tuple[int, ...], out_hw: Pair, stride: Pair,
              padding: Pair, dilation: Pair) -> tuple[np.int32, ...]:
    """N, C, F, H, W, Ho, Wo, KH, KW, SH, SW, PH, PW, DH, DW: every kernel's leading ints."""
    n, c, h, w = x_shape
    f, _, kh, kw = w_shape
    return _ints(n, c, f, h, w, *out_hw, kh, kw, *stride, *padding, *dilation)


def conv2d_forward(device: Any, x: Any, w: Any, out_hw: Pair, stride: Pair, padding: Pair,
                   dilation: Pair, groups: int, bias: Any = None) -> Any:
    """``y`` (N, F, *out_hw) = depthwise conv2d of ``x`` (N, C, H, W) with ``w`` (F, 1, KH, KW),
    plus ``bias`` (F,) when given (added as each output is stored)."""
    xp = device.xp
    with device.use():
        x, w = xp.ascontiguousarray(x), xp.ascontiguousarray(w.astype(x.dtype, copy=False))
        n, f = x.shape[0], w.shape[0]
        ho, wo = out_hw
        if n * f * ho * wo == 0:
            return xp.zeros((n, f, ho, wo), dtype=x.dtype)
        kernel = (w.shape[2], w.shape[3])
        variant = _variant(kernel, stride, dilation)
        tile = _tile((ho, wo), n * f, kernel, stride, dilation, x.itemsize, variant[0] == 0)
        if tile is None:
            return conv_gemm_cuda.conv2d_forward(device, x, w, out_hw, stride, padding,
                                                 dilation, groups, bias=bias)
        y = xp.empty((n, f, ho, wo), dtype=x.dtype)
        b = no_bias(device, x.dtype) if bias is None else \
            xp.ascontiguousarray(bias.astype(x.dtype, copy=False))
        name = f"conv2d_depthwise_forward<{ctype(x.dtype)}, {variant[0]}, {variant[1]}, " \
               f"{variant[2]}>"
        device.kernels.function(SOURCE, name)(
            tile.grid(n * f, out_hw), (THREADS,),
            (x, w, b, y, *_geometry(x.shape, w.shape, out_hw, stride, padding, dilation),
             *tile.args(), np.int32(bias is not None)), tile.shared)
    return y


def _landing(stride: int, dilation: int) -> tuple[int, int]:
    """(gcd(stride, dilation), inverse of dilation/gcd modulo stride/gcd, 0 when that is 1):
    what the strided gather needs to solve which taps land on a gx coordinate."""
    g = math.gcd(stride, dilation)
    modulus = stride // g
    return g, pow(dilation // g, -1, modulus) if modulus > 1 else 0


@functools.lru_cache(maxsize=1024)
def _gather_shape(planes_total: int, x_hw: Pair) -> tuple[int, int, int]:
    """(tile_w, tile_h, planes_per_block) of the strided gather: a thread per gx element of a
    tile_w x tile_h tile, 256 // (tile_w * tile_h) planes at a time, a few rounds per block when
    the grid is large anyway."""
    h, w = x_hw
    tile_w = min(32, _pow2_at_least(w))
    tile_h = min(THREADS // tile_w, _pow2_at_least(h))
    sub = THREADS // (tile_w * tile_h)
    spatial = ceil_div(h, tile_h) * ceil_div(w, tile_w)
    rounds = max(1, min(8, planes_total * spatial // (sub * GATHER_TARGET_BLOCKS)))
    return tile_w, tile_h, sub * rounds


def conv2d_backward_data(device: Any, gy: Any, w: Any, x_shape: tuple[int, ...], stride: Pair,
                         padding: Pair, dilation: Pair, groups: int) -> Any:
    """``gx`` (``x_shape``), the gradient of depthwise conv2d with respect to its input."""
    xp = device.xp
    with device.use():
        gy, w = xp.ascontiguousarray(gy), xp.ascontiguousarray(w.astype(gy.dtype, copy=False))
        n, c, h, wd = x_shape
        if n * c * h * wd == 0 or gy.size == 0:
            return xp.zeros(tuple(x_shape), dtype=gy.dtype)
        gx = xp.empty(tuple(x_shape), dtype=gy.dtype)
        kernel = (w.shape[2], w.shape[3])
        geo = _geometry(tuple(x_shape), w.shape, gy.shape[2:], stride, padding, dilation)
        elem = ctype(gy.dtype)
        fixed = _variant(kernel, stride, dilation)[0] > 0
        tile = None if stride != (1, 1) else \
            _tile((h, wd), n * c, kernel, stride, dilation, gy.itemsize, not fixed)
        if tile is not None:  # stride 1: the forward tiles over gx, taps reversed
            size = kernel if fixed else (0, 0)
            name = f"conv2d_depthwise_backward_data<{elem}, {size[0]}, {size[1]}>"
            device.kernels.function(SOURCE, name)(
                tile.grid(n * c, (h, wd)), (THREADS,), (gy, w, gx, *geo, *tile.args()),
                tile.shared)
            return gx
        tile_w, tile_h, per_block = _gather_shape(n * c, (h, wd))
        grid = (ceil_div(n * c, per_block), ceil_div(h, tile_h), ceil_div(wd, tile_w))
        if max(grid[1:]) > MAX_GRID_YZ:
            raise ValueError(f"depthwise conv2d backward: a {(h, wd)} plane needs {grid[1:]} "
                             f"tiles, past the grid limit ({MAX_GRID_YZ} on y/z)")
        device.kernels.function(SOURCE, f"conv2d_depthwise_backward_data_strided<{elem}>")(
            grid, (THREADS,),
            (gy, w, gx, *geo, *_ints(tile_w, tile_h, per_block, *_landing(stride[0], dilation[0]),
                                     *_landing(stride[1], dilation[1]))))
    return gx


def _splits(items: int, blocks: int) -> tuple[int, int]:
    """``(splits, items_per_split)`` for backward-weight's reduction over ``items`` tiles with
    ``blocks`` blocks per split."""
    most = min(MAX_GRID_YZ, ceil_div(items, MIN_SPLIT_ITEMS))
    splits = max(1, min(most, TARGET_BLOCKS // blocks))
    per_split = ceil_div(items, splits)
    return ceil_div(items, per_split), per_split


def conv2d_backward_weight(device: Any, x: Any, gy: Any, w_shape: tuple[int, ...], stride: Pair,
                           padding: Pair, dilation: Pair, groups: int) -> Any:
    """``gw`` (``w_shape``), the gradient of depthwise conv2d with respect to its weight;
    deterministic (a fixed reduction tree per block, split partial sums added in order)."""
    xp = device.xp
    with device.use():
        x, gy = xp.ascontiguousarray(x), xp.ascontiguousarray(gy.astype(x.dtype, copy=False))
        n = x.shape[0]
        f, _, kh, kw = w_shape
        ho, wo = gy.shape[2:]
        if f * kh * kw == 0 or n * ho * wo == 0:
            return xp.zeros(tuple(w_shape), dtype=x.dtype)
        kernel = (kh, kw)
        variant = _variant(kernel, stride, dilation)
        tile = _tile((ho, wo), n, kernel, stride, dilation, x.itemsize, False)
        if tile is None:
            return conv_gemm_cuda.conv2d_backward_weight(device, x, gy, w_shape, stride,
                                                         padding, dilation, groups)
        tap_groups = 1 if variant[0] else ceil_div(kh * kw, TAP_GROUP)
        items = ceil_div(n, tile.planes) * ceil_div(ho, tile.rows) * ceil_div(wo, tile.tile_w)
        splits, per_split = _splits(items, f * tap_groups)
        if tap_groups > MAX_GRID_YZ:
            raise ValueError(f"depthwise conv2d backward: {kh}x{kw} taps need {tap_groups} "
                             f"tap groups, past the grid limit ({MAX_GRID_YZ} on z)")
        gw = xp.empty(tuple(w_shape), dtype=x.dtype)
        partial = gw if splits == 1 else xp.empty((splits, *w_shape), dtype=x.dtype)
        elem = ctype(x.dtype)
        name = f"conv2d_depthwise_backward_weight<{elem}, {variant[0]}, {variant[1]}, " \
               f"{variant[2]}>"
        device.kernels.function(SOURCE, name)(
            (f, splits, tap_groups), (THREADS,),
            (x, gy, partial, *_geometry(x.shape, tuple(w_shape), (ho, wo), stride, padding,
                                        dilation),
             *tile.args(), np.int32(per_split)), tile.shared)
        if splits > 1:
            device.kernels.function(SOURCE, f"conv2d_depthwise_backward_weight_reduce<{elem}>")(
                grid_1d(gw.size, THREADS, 4096), (THREADS,),
                (partial, gw, np.int64(gw.size), np.int32(splits)))
    return gw

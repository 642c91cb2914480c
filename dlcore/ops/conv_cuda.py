"""Kernel path of 2-D convolution: launches ``kernels/conv2d.cu`` on a ``cuda`` or ``emu`` device.

Array-level twins of the NumPy functions in :mod:`dlcore.ops.conv_cpu`, with the device first::

    y = conv2d_forward(device, x, w, (5, 5), (1, 1), (1, 1), (1, 1), 1)

Arrays are NCHW (weights ``(F, C/groups, KH, KW)``), float32 or float64, on ``device``;
``stride``, ``padding`` and ``dilation`` are int pairs already validated by the caller. All three
directions are implicit GEMMs (see the header of ``kernels/conv2d.cu``); backward-weight splits
its long reduction over ``N*Ho*Wo`` across blocks and sums the partial results in a second,
deterministic pass.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ..kernels import ceil_div, ctype, grid_1d

__all__ = ["conv2d_backward_data", "conv2d_backward_weight", "conv2d_forward"]

Pair = tuple[int, int]

SOURCE = "conv2d.cu"
TILE = 64  # BM = BN of the kernels' block tile
K_STEP = 16  # BK
THREADS = 256
# Backward-weight split-K: aim for this many blocks in flight (a few waves on a large GPU), but
# give every split at least MIN_SPLIT_STEPS K-steps so the partial sums stay worth their traffic.
TARGET_BLOCKS = 512
MIN_SPLIT_STEPS = 8
MAX_GRID_YZ = 65535


@functools.lru_cache(maxsize=1024)
def _geometry(x_shape: tuple[int, ...], w_shape: tuple[int, ...], y_hw: Pair, stride: Pair,
              padding: Pair, dilation: Pair, groups: int) -> tuple[np.int32, ...]:
    """The kernels' trailing int32 arguments: N, C, H, W, F, Ho, Wo, KH, KW, SH, SW, PH, PW, DH,
    DW, G (every kernel of the file takes them in this order). Cached per layer shape: the
    16 scalar conversions were a third of a launch's host cost."""
    n, c, h, w = x_shape
    f, _, kh, kw = w_shape
    if groups > MAX_GRID_YZ or ceil_div(max(f, c) // groups, TILE) > MAX_GRID_YZ:
        raise ValueError(f"conv2d kernels: groups={groups} or channels per group exceed the grid "
                         f"limit ({MAX_GRID_YZ} blocks on grid y/z)")
    return tuple(np.int32(v) for v in (n, c, h, w, f, *y_hw, kh, kw, *stride, *padding,
                                       *dilation, groups))


def conv2d_forward(device: Any, x: Any, w: Any, out_hw: Pair, stride: Pair, padding: Pair,
                   dilation: Pair, groups: int) -> Any:
    """``y`` (N, F, *out_hw) = conv2d of ``x`` (N, C, H, W) with ``w`` (F, C/groups, KH, KW)."""
    xp = device.xp
    with device.use():
        x, w = xp.ascontiguousarray(x), xp.ascontiguousarray(w.astype(x.dtype, copy=False))
        n = x.shape[0]
        f = w.shape[0]
        ho, wo = out_hw
        if n * f * ho * wo == 0:
            return xp.zeros((n, f, ho, wo), dtype=x.dtype)
        y = xp.empty((n, f, ho, wo), dtype=x.dtype)
        geo = _geometry(x.shape, w.shape, (ho, wo), stride, padding, dilation, groups)
        grid = (ceil_div(n * ho * wo, TILE), ceil_div(f // groups, TILE), groups)
        device.kernels.function(SOURCE, f"conv2d_forward<{ctype(x.dtype)}>")(
            grid, (THREADS,), (x, w, y, *geo))
    return y


def conv2d_backward_data(device: Any, gy: Any, w: Any, x_shape: tuple[int, ...], stride: Pair,
                         padding: Pair, dilation: Pair, groups: int) -> Any:
    """``gx`` (``x_shape``), the gradient of conv2d with respect to its input, from ``gy``."""
    xp = device.xp
    with device.use():
        gy, w = xp.ascontiguousarray(gy), xp.ascontiguousarray(w.astype(gy.dtype, copy=False))
        n, c, h, wd = x_shape
        if n * c * h * wd == 0 or gy.size == 0:
            return xp.zeros(tuple(x_shape), dtype=gy.dtype)
        gx = xp.empty(tuple(x_shape), dtype=gy.dtype)
        geo = _geometry(tuple(x_shape), w.shape, gy.shape[2:], stride, padding, dilation, groups)
        grid = (ceil_div(n * h * wd, TILE), ceil_div(c // groups, TILE), groups)
        device.kernels.function(SOURCE, f"conv2d_backward_data<{ctype(gy.dtype)}>")(
            grid, (THREADS,), (gy, w, gx, *geo))
    return gx


def _split_k(k_total: int, tiles: int) -> tuple[int, int]:
    """``(splits, chunk)`` for backward-weight: ``chunk`` is a multiple of the K step and
    ``splits * chunk`` covers ``k_total``."""
    max_splits = max(1, k_total // (K_STEP * MIN_SPLIT_STEPS))
    splits = min(max_splits, max(1, TARGET_BLOCKS // tiles))
    chunk = ceil_div(ceil_div(k_total, splits), K_STEP) * K_STEP
    return ceil_div(k_total, chunk), chunk


def conv2d_backward_weight(device: Any, x: Any, gy: Any, w_shape: tuple[int, ...], stride: Pair,
                           padding: Pair, dilation: Pair, groups: int) -> Any:
    """``gw`` (``w_shape``), the gradient of conv2d with respect to its weight, from ``x`` and
    ``gy``; deterministic (split partial sums are added in a fixed order, no atomics)."""
    xp = device.xp
    with device.use():
        x, gy = xp.ascontiguousarray(x), xp.ascontiguousarray(gy.astype(x.dtype, copy=False))
        n, c, _, _ = x.shape
        f, cg, kh, kw = w_shape
        _, _, ho, wo = gy.shape
        k_total = n * ho * wo
        if f * cg * kh * kw == 0 or k_total == 0:
            return xp.zeros(tuple(w_shape), dtype=x.dtype)
        gw = xp.empty(tuple(w_shape), dtype=x.dtype)
        geo = _geometry(x.shape, tuple(w_shape), (ho, wo), stride, padding, dilation, groups)
        row_tiles, col_tiles = ceil_div(cg * kh * kw, TILE), ceil_div(f // groups, TILE)
        splits, chunk = _split_k(k_total, row_tiles * col_tiles * groups)
        partial = gw if splits == 1 else xp.empty((splits, *w_shape), dtype=x.dtype)
        elem = ctype(x.dtype)
        device.kernels.function(SOURCE, f"conv2d_backward_weight<{elem}>")(
            (row_tiles * splits, col_tiles, groups), (THREADS,),
            (x, gy, partial, np.int64(chunk), *geo))
        if splits > 1:
            device.kernels.function(SOURCE, f"conv2d_backward_weight_reduce<{elem}>")(
                grid_1d(gw.size, THREADS, 4096), (THREADS,),
                (partial, gw, np.int64(gw.size), np.int32(splits)))
    return gw

"""Kernel path of 2-D max and average pooling: launches ``kernels/pool2d.cu`` on a ``cuda`` or
``emu`` device.

Array-level twins of the NumPy functions in :mod:`dlcore.ops.pool_cpu`, with the device first::

    y, indices = max_pool2d_forward(device, x, (4, 4), (2, 2), (2, 2), (0, 0), (1, 1))

Arrays are NCHW float16, float32 or float64 on ``device``; ``kernel``, ``stride``, ``padding``
and ``dilation`` are int pairs already validated by the caller (plane sizes below 2^31).
Max-pooling indices are int32 here (the caller widens them to int64 only for a user who asks).
Forward kernels run one thread per output position of a plane, backward kernels one per input
position (a gather: no atomics, the same bits on every run); each thread serves several planes
(see the header of ``kernels/pool2d.cu`` for the launch shape). Every output element is written
by a kernel, so outputs are allocated without a fill.
"""

from __future__ import annotations

import functools
from typing import Any

import ml_dtypes
import numpy as np

from ..kernels import ceil_div, ctype
from . import pool_cpu

__all__ = ["INDEX_DTYPE", "KERNEL_DTYPES", "avg_pool2d_backward", "avg_pool2d_forward",
           "max_pool2d_backward", "max_pool2d_forward"]

Pair = tuple[int, int]

SOURCE = "pool2d.cu"
KERNEL_DTYPES = (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16), np.dtype(np.float32),
                 np.dtype(np.float64))
INDEX_DTYPE = pool_cpu.INDEX_DTYPE  # the two paths save the same indices
THREADS = 256  # per block, the kernels' __launch_bounds__
MAX_GRID_Y = 65535
# Threads worth launching: about four waves of a large GPU (132 SMs x 2048 threads). Beyond
# that, more threads only repeat the per-position setup a thread otherwise shares across planes.
TARGET_THREADS = 1 << 20


@functools.lru_cache(maxsize=1024)
def _launch_shape(positions: int, planes: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(grid, block) for ``planes`` planes of ``positions`` each: blocks of ``bx`` positions
    by ``by`` planes (a small plane shares its block with others, so no thread idles), grid x
    over the tiles of a plane, grid y over groups of planes, capped so that on large tensors
    each thread serves several planes."""
    tiles = ceil_div(positions, THREADS)
    bx = positions if tiles == 1 else ceil_div(ceil_div(positions, tiles), 32) * 32
    by = THREADS // bx
    plane_blocks = min(ceil_div(planes, by), MAX_GRID_Y, TARGET_THREADS // (tiles * bx * by))
    return (tiles, max(plane_blocks, 1)), (bx, by)


@functools.lru_cache(maxsize=1024)
def _ints(*values: int) -> tuple[np.int32, ...]:
    """The kernels' trailing int32 arguments, cached per layer shape (their conversion was a
    third of a launch's host cost)."""
    return tuple(np.int32(v) for v in values)


def _launch(device: Any, name: str, dtype: np.dtype, positions: int, planes: int,
            args: tuple) -> None:
    grid, block = _launch_shape(positions, planes)
    device.kernels.function(SOURCE, f"{name}<{ctype(dtype)}>")(grid, block, args)


def max_pool2d_forward(device: Any, x: Any, out_hw: Pair, kernel: Pair, stride: Pair,
                       padding: Pair, dilation: Pair) -> tuple[Any, Any]:
    """``(y, indices)``: window maxima and, as int32, the flat ``ih * W + iw`` of each one's
    first occurrence in its (n, c) plane (the last NaN where the window holds NaNs)."""
    xp = device.xp
    with device.use():
        x = xp.ascontiguousarray(x)
        n, c, h, w = x.shape
        ho, wo = out_hw
        y = xp.empty((n, c, ho, wo), dtype=x.dtype)
        indices = xp.empty((n, c, ho, wo), dtype=INDEX_DTYPE)
        if y.size:
            _launch(device, "maxpool2d_forward", x.dtype, ho * wo, n * c,
                    (x, y, indices, np.int64(n * c),
                     *_ints(h, w, ho, wo, *kernel, *stride, *padding, *dilation)))
    return y, indices


def max_pool2d_backward(device: Any, gy: Any, indices: Any, x_shape: tuple[int, ...],
                        kernel: Pair, stride: Pair, padding: Pair, dilation: Pair) -> Any:
    """``gx`` (``x_shape``): each input element gathers ``gy`` of the windows whose saved index
    (int32, from :func:`max_pool2d_forward`) names it. The window geometry bounds the search to
    the outputs whose windows span the input."""
    xp = device.xp
    with device.use():
        gy, indices = xp.ascontiguousarray(gy), xp.ascontiguousarray(indices)
        n, c, h, w = x_shape
        _, _, ho, wo = gy.shape
        gx = xp.empty(tuple(x_shape), dtype=gy.dtype)
        if gx.size:
            _launch(device, "maxpool2d_backward", gy.dtype, h * w, n * c,
                    (gy, indices, gx, np.int64(n * c),
                     *_ints(h, w, ho, wo, *kernel, *stride, *padding, *dilation)))
    return gx


@functools.lru_cache(maxsize=256)
def _avg_scale(device: Any, x_hw: Pair, out_hw: Pair, kernel: Pair, stride: Pair,
               padding: Pair, count_include_pad: bool, divisor_override: int | None,
               dtype: np.dtype) -> Any:
    """The (Ho, Wo) table of 1 / divisor on ``device``, as the NumPy twin computes it, in the
    kernels' accumulation type (float32 for float16), cached per layer shape: the kernels then
    multiply by it and hold no divisor rule of their own (a division in the backward tap loop
    brought a slow-path call and register spills)."""
    table = pool_cpu.avg_scale(x_hw, out_hw, kernel, stride, padding, count_include_pad,
                               divisor_override, pool_cpu.compute_dtype(dtype))
    with device.use():
        table = device.xp.asarray(table)
    if isinstance(table, np.ndarray):  # shared by every later call: never to be written
        table.flags.writeable = False
    return table


def avg_pool2d_forward(device: Any, x: Any, out_hw: Pair, kernel: Pair, stride: Pair,
                       padding: Pair, count_include_pad: bool,
                       divisor_override: int | None) -> Any:
    """``y``: window means with PyTorch's divisor rules (``count_include_pad``,
    ``divisor_override``)."""
    xp = device.xp
    with device.use():
        x = xp.ascontiguousarray(x)
        n, c, h, w = x.shape
        ho, wo = out_hw
        y = xp.empty((n, c, ho, wo), dtype=x.dtype)
        if y.size:
            scale = _avg_scale(device, (h, w), (ho, wo), kernel, stride, padding,
                               count_include_pad, divisor_override, x.dtype)
            _launch(device, "avgpool2d_forward", x.dtype, ho * wo, n * c,
                    (x, scale, y, np.int64(n * c),
                     *_ints(h, w, ho, wo, *kernel, *stride, *padding)))
    return y


def avg_pool2d_backward(device: Any, gy: Any, x_shape: tuple[int, ...], kernel: Pair,
                        stride: Pair, padding: Pair, count_include_pad: bool,
                        divisor_override: int | None) -> Any:
    """``gx`` (``x_shape``): each input element gathers ``gy / divisor`` over the windows that
    cover it."""
    xp = device.xp
    with device.use():
        gy = xp.ascontiguousarray(gy)
        n, c, h, w = x_shape
        _, _, ho, wo = gy.shape
        gx = xp.empty(tuple(x_shape), dtype=gy.dtype)
        if gx.size:
            scale = _avg_scale(device, (h, w), (ho, wo), kernel, stride, padding,
                               count_include_pad, divisor_override, gy.dtype)
            _launch(device, "avgpool2d_backward", gy.dtype, h * w, n * c,
                    (gy, scale, gx, np.int64(n * c),
                     *_ints(h, w, ho, wo, *kernel, *stride, *padding)))
    return gx

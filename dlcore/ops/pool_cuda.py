"""Kernel path of 2-D max and average pooling: launches ``kernels/pool2d.cu`` on a ``cuda`` or
``emu`` device.

Array-level twins of the NumPy functions in :mod:`dlcore.ops.pool_cpu`, with the device first::

    y, indices = max_pool2d_forward(device, x, (4, 4), (2, 2), (2, 2), (0, 0), (1, 1))

Arrays are NCHW float32 or float64 on ``device``; ``kernel``, ``stride``, ``padding`` and
``dilation`` are int pairs already validated by the caller. Forward kernels run one thread per
output; backward kernels gather (one thread per input element sums the windows covering it), so
they need no atomics and give the same bits on every run.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ..kernels import ctype, grid_1d

__all__ = ["avg_pool2d_backward", "avg_pool2d_forward", "max_pool2d_backward",
           "max_pool2d_forward"]

Pair = tuple[int, int]

SOURCE = "pool2d.cu"
THREADS = 256
# Grid-stride kernels: more blocks than this only add scheduling work.
MAX_BLOCKS = 65536


def _launch(device: Any, name: str, n_items: int, args: tuple) -> None:
    device.kernels.function(SOURCE, name)(grid_1d(n_items, THREADS, MAX_BLOCKS), (THREADS,), args)


@functools.lru_cache(maxsize=1024)
def _ints(*values: int) -> tuple[np.int32, ...]:
    return tuple(np.int32(v) for v in values)


def max_pool2d_forward(device: Any, x: Any, out_hw: Pair, kernel: Pair, stride: Pair,
                       padding: Pair, dilation: Pair) -> tuple[Any, Any]:
    """``(y, indices)``: window maxima and, as int64, the flat ``ih * W + iw`` of each one's
    first occurrence in its (n, c) plane (PyTorch's ``return_indices``)."""
    xp = device.xp
    with device.use():
        x = xp.ascontiguousarray(x)
        n, c, h, w = x.shape
        ho, wo = out_hw
        y = xp.empty((n, c, ho, wo), dtype=x.dtype)
        indices = xp.empty((n, c, ho, wo), dtype=np.int64)
        if y.size:
            _launch(device, f"maxpool2d_forward<{ctype(x.dtype)}>", y.size,
                    (x, y, indices, np.int64(y.size),
                     *_ints(h, w, ho, wo, *kernel, *stride, *padding, *dilation)))
    return y, indices


def max_pool2d_backward(device: Any, gy: Any, indices: Any, x_shape: tuple[int, ...],
                        kernel: Pair, stride: Pair, padding: Pair, dilation: Pair) -> Any:
    """``gx`` (``x_shape``): each input element gathers ``gy`` of the windows whose saved index
    names it. The window geometry bounds the search, so the gather reads ``KH*KW`` entries per
    input rather than the whole output plane."""
    xp = device.xp
    with device.use():
        gy, indices = xp.ascontiguousarray(gy), xp.ascontiguousarray(indices)
        _, _, h, w = x_shape
        _, _, ho, wo = gy.shape
        # every element is written by the gather kernel: no zero fill, except when no
        # window exists (then nothing is launched and the gradient is zero)
        gx = (xp.empty if gy.size else xp.zeros)(tuple(x_shape), dtype=gy.dtype)
        if gx.size and gy.size:
            _launch(device, f"maxpool2d_backward<{ctype(gy.dtype)}>", gx.size,
                    (gy, indices, gx, np.int64(gx.size),
                     *_ints(h, w, ho, wo, *kernel, *stride, *padding, *dilation)))
    return gx


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
            _launch(device, f"avgpool2d_forward<{ctype(x.dtype)}>", y.size,
                    (x, y, np.int64(y.size),
                     *_ints(h, w, ho, wo, *kernel, *stride, *padding, count_include_pad,
                            divisor_override or 0)))
    return y


def avg_pool2d_backward(device: Any, gy: Any, x_shape: tuple[int, ...], kernel: Pair,
                        stride: Pair, padding: Pair, count_include_pad: bool,
                        divisor_override: int | None) -> Any:
    """``gx`` (``x_shape``): each input element gathers ``gy / divisor`` over the windows that
    cover it."""
    xp = device.xp
    with device.use():
        gy = xp.ascontiguousarray(gy)
        _, _, h, w = x_shape
        _, _, ho, wo = gy.shape
        # every element is written by the gather kernel: no zero fill, except when no
        # window exists (then nothing is launched and the gradient is zero)
        gx = (xp.empty if gy.size else xp.zeros)(tuple(x_shape), dtype=gy.dtype)
        if gx.size and gy.size:
            _launch(device, f"avgpool2d_backward<{ctype(gy.dtype)}>", gx.size,
                    (gy, gx, np.int64(gx.size),
                     *_ints(h, w, ho, wo, *kernel, *stride, *padding, count_include_pad,
                            divisor_override or 0)))
    return gx

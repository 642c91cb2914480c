"""Resampling: ``interpolate`` (nearest, bilinear) and ``pixel_shuffle``/``pixel_unshuffle``.

All are compositions of differentiable ops, so gradients (and double backward) come for
free: pixel (un)shuffle is a reshape, a permute and a reshape; interpolation is separable,
one axis at a time, each a gather of source rows (``index_select``, whose backward
scatter-adds with ``xp.add.at``) and, for bilinear, a weighted sum of two gathers.

Source indices and weights follow PyTorch's CPU kernels exactly (``UpSample.h``): they are
computed in float32 for inputs of float32 or narrower, float64 otherwise, so the chosen
neighbours match PyTorch's bit for bit. Shape letters: N batch, C channels, H, W spatial.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..tensor import Tensor
from .index import index_select
from .shape import clone, permute, reshape
from ..dtypes import is_floating

_MODES = ("nearest", "bilinear")


# ---- pixel shuffle -----------------------------------------------------------------------
def _check_factor(op: str, name: str, factor: Any) -> int:
    if isinstance(factor, bool) or not isinstance(factor, int | np.integer):
        raise TypeError(f"{op}: {name} must be an int, got {type(factor).__name__}")
    if factor <= 0:
        raise RuntimeError(f"{op} expects a positive {name}, but got {factor}")
    return int(factor)


def pixel_shuffle(input: Tensor, upscale_factor: int) -> Tensor:
    """(*, C*r*r, H, W) -> (*, C, H*r, W*r) with ``r = upscale_factor`` (PyTorch's layout).

    >>> pixel_shuffle(dlcore.zeros(1, 8, 2, 3), 2).shape
    (1, 2, 4, 6)
    """
    r = _check_factor("pixel_shuffle", "upscale_factor", upscale_factor)
    if input.ndim < 3:
        raise RuntimeError(f"pixel_shuffle expects input to have at least 3 dimensions, but got "
                           f"input with {input.ndim} dimension(s)")
    *batch, c, h, w = input.shape
    if c % (r * r):
        raise RuntimeError(f"pixel_shuffle expects its input's 'channel' dimension to be "
                           f"divisible by the square of upscale_factor, but input.size(-3)={c} "
                           f"is not divisible by {r * r}")
    nb = len(batch)
    x = reshape(input, (*batch, c // (r * r), r, r, h, w))
    x = permute(x, (*range(nb), nb, nb + 3, nb + 1, nb + 4, nb + 2))
    return reshape(x, (*batch, c // (r * r), h * r, w * r))


def pixel_unshuffle(input: Tensor, downscale_factor: int) -> Tensor:
    """(*, C, H*r, W*r) -> (*, C*r*r, H, W) with ``r = downscale_factor``: the inverse of
    :func:`pixel_shuffle`.

    >>> pixel_unshuffle(dlcore.zeros(1, 2, 4, 6), 2).shape
    (1, 8, 2, 3)
    """
    r = _check_factor("pixel_unshuffle", "downscale_factor", downscale_factor)
    if input.ndim < 3:
        raise RuntimeError(f"pixel_unshuffle expects input to have at least 3 dimensions, but "
                           f"got input with {input.ndim} dimension(s)")
    *batch, c, h, w = input.shape
    for name, size, dim in (("height", h, -2), ("width", w, -1)):
        if size % r:
            raise RuntimeError(f"pixel_unshuffle expects {name} to be divisible by "
                               f"downscale_factor, but input.size({dim})={size} is not "
                               f"divisible by {r}")
    nb = len(batch)
    x = reshape(input, (*batch, c, h // r, r, w // r, r))
    x = permute(x, (*range(nb), nb, nb + 2, nb + 4, nb + 1, nb + 3))
    return reshape(x, (*batch, c * r * r, h // r, w // r))


# ---- interpolate: index and weight rules -------------------------------------------------
def _scale(in_size: int, out_size: int, scale_factor: float | None, ct: Any) -> Any:
    """PyTorch's ``compute_scales_value``: 1/scale_factor when given, else in/out."""
    if scale_factor is not None and scale_factor > 0:
        return ct(1.0 / scale_factor)
    return ct(in_size) / ct(out_size)


def nearest_indices(in_size: int, out_size: int, scale_factor: float | None) -> np.ndarray:
    """Source index of each output position: ``min(floor(dst * scale), in - 1)`` in float32,
    with PyTorch's exact shortcuts for equal and doubled sizes."""
    dst = np.arange(out_size)
    if out_size == in_size:
        return dst
    if out_size == 2 * in_size:
        return dst >> 1
    scale = _scale(in_size, out_size, scale_factor, np.float32)
    src = np.floor(dst.astype(np.float32) * scale).astype(np.int64)
    return np.minimum(src, in_size - 1)


def linear_indices_weights(in_size: int, out_size: int, scale_factor: float | None,
                           align_corners: bool, ct: Any
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The two source indices and their weights for each output position (linear mode):
    ``src = scale * dst`` with align_corners, else the half-pixel ``scale * (dst + 0.5) -
    0.5`` clamped at 0; neighbours ``floor(src)`` and the next one, clamped to the edge."""
    if align_corners:
        scale = ct(in_size - 1) / ct(out_size - 1) if out_size > 1 else ct(0)
        src = np.arange(out_size).astype(ct) * scale
    else:
        scale = _scale(in_size, out_size, scale_factor, ct)
        src = np.maximum(scale * (np.arange(out_size).astype(ct) + ct(0.5)) - ct(0.5), ct(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = np.clip(src - i0.astype(ct), ct(0), ct(1)).astype(ct)
    # past the last input both neighbours are the same element: weight it 1 alone, since
    # (1 - w) * x + w * x can land one rounding step away from x
    w1[i0 == i1] = 0
    return i0, i1, (ct(1) - w1).astype(ct), w1


def _resample_axis(x: Tensor, dim: int, in_size: int, out_size: int,
                   scale_factor: float | None, mode: str, align_corners: bool) -> Tensor:
    dev = x.device

    def idx(a: np.ndarray) -> Tensor:
        return Tensor._make(dev.asarray(a), dev)

    if out_size == in_size:
        # NOTE: PyTorch copies an axis whose size is unchanged, whatever the scale_factor
        # (e.g. 1.01 on a side of 5), in both modes
        return x
    if mode == "nearest":
        return index_select(x, dim, idx(nearest_indices(in_size, out_size, scale_factor)))
    ct = np.float64 if x.dtype.itemsize > 4 else np.float32
    i0, i1, w0, w1 = linear_indices_weights(in_size, out_size, scale_factor, align_corners, ct)
    shape = (out_size,) + (1,) * (x.ndim - 1 - dim)

    def weight(w: np.ndarray) -> Tensor:
        return Tensor._make(dev.asarray(w.astype(x.dtype).reshape(shape)), dev)

    return (index_select(x, dim, idx(i0)) * weight(w0)
            + index_select(x, dim, idx(i1)) * weight(w1))


# ---- interpolate: public boundary ----------------------------------------------------------
def _pair(value: Any, name: str, input: Tensor) -> list[Any]:
    if isinstance(value, Sequence):
        if len(value) != 2:
            raise ValueError(f"interpolate: input and {name} must have the same number of "
                             f"spatial dimensions, but got input with spatial dimensions of "
                             f"{list(input.shape[2:])} and {name} {tuple(value)}")
        return list(value)
    return [value, value]


def _output_size(input: Tensor, size: Any, scale_factor: Any
                 ) -> tuple[list[int], list[float | None]]:
    if size is not None and scale_factor is not None:
        raise ValueError("interpolate: only one of size or scale_factor should be defined")
    if size is None and scale_factor is None:
        raise ValueError("interpolate: either size or scale_factor should be defined")
    in_sizes = list(input.shape[2:])
    scales: list[float | None]
    if size is not None:
        sizes = _pair(size, "size", input)
        if not all(isinstance(s, int | np.integer) and not isinstance(s, bool) for s in sizes):
            raise TypeError(f"interpolate: expected size to be an int or a pair of ints, got "
                            f"{[type(s).__name__ for s in sizes]}")
        out, scales = [int(s) for s in sizes], [None, None]
    else:
        factors = [float(s) for s in _pair(scale_factor, "scale_factor", input)]
        out, scales = [math.floor(n * s) for n, s in zip(in_sizes, factors)], list(factors)
    if min(in_sizes + out) <= 0:
        raise RuntimeError(f"interpolate: input and output sizes should be greater than 0, but "
                           f"got input (H: {in_sizes[0]}, W: {in_sizes[1]}) output "
                           f"(H: {out[0]}, W: {out[1]})")
    return out, scales


def interpolate(input: Tensor, size: int | Sequence[int] | None = None,
                scale_factor: float | Sequence[float] | None = None, mode: str = "nearest",
                align_corners: bool | None = None) -> Tensor:
    """Resize the spatial dims of an (N, C, H, W) input to ``size`` or by ``scale_factor``
    (exactly one given; an output side is ``floor(in * scale_factor)``). Modes ``'nearest'``
    and ``'bilinear'``; ``align_corners`` only with bilinear (default False: half-pixel
    centres). A given ``scale_factor`` sets the coordinate scale, as in PyTorch.

    >>> interpolate(dlcore.ones(1, 1, 2, 3), scale_factor=2).shape
    (1, 1, 4, 6)
    """
    if mode not in _MODES:
        raise NotImplementedError(f"interpolate: mode {mode!r} is not supported; dlcore has "
                                  f"{' | '.join(_MODES)}")
    if mode == "nearest" and align_corners is not None:
        raise ValueError("interpolate: align_corners option can only be set with the "
                         "interpolating modes: bilinear")
    if input.ndim != 4:
        raise NotImplementedError(f"interpolate: got {input.ndim}D input of shape "
                                  f"{tuple(input.shape)}, but mode {mode!r} needs 4D (N, C, H, W) "
                                  f"input")
    if mode == "bilinear" and not is_floating(input.dtype):
        raise RuntimeError(f"interpolate: bilinear mode needs a floating point input, got dtype "
                           f"{input.dtype}")
    out, scales = _output_size(input, size, scale_factor)
    x = input
    for dim in (2, 3):
        x = _resample_axis(x, dim, input.shape[dim], out[dim - 2], scales[dim - 2], mode,
                           bool(align_corners))
    return clone(x) if x is input else x  # a new tensor even when no axis changed

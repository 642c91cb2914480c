"""Pooling: max_pool2d, avg_pool2d, adaptive_avg_pool2d, adaptive_max_pool2d, NCHW.

Shapes: x (N, C, H, W), y (N, C, OH, OW).

A kernel family (:class:`dlcore.kernels.KernelFamily`): the CUDA kernels
(``dlcore/ops/pool_cuda.py``, ``kernels/pool2d.cu``) and the CPU path
(:mod:`dlcore.ops.pool_cpu`) provide the same array-level functions, arrays in and arrays out,
NCHW, arguments validated here and normalised to int pairs, the output size ``out_hw``
computed here once (:func:`pool2d_out_size`, ceil_mode included)::

    max_pool2d_forward(device, x, out_hw, kernel, stride, padding, dilation)
        -> (y, indices): indices int32, flat h*W + w inside each (n, c) plane (half the bytes
        of int64; a plane holds fewer than 2^31 elements, checked here); ties go to the first
        maximum in row-major scan order, a NaN wins (the last one, as PyTorch); padding is
        -inf, never a winner. ``return_indices=True`` hands the user an int64 copy, as
        PyTorch's; backward keeps the int32 ones. (The cpu autograd path instead saves a byte
        per window, :class:`dlcore.ops.pool_cpu.MaxCodes`, and makes flat indices only when
        asked for them or for a double backward.)
    max_pool2d_backward(device, gy, indices, x_shape, kernel, stride, padding, dilation) -> gx
        (the geometry lets a kernel gather per input instead of scattering with atomics)
    avg_pool2d_forward(device, x, out_hw, kernel, stride, padding, count_include_pad,
                       divisor_override) -> y
    avg_pool2d_backward(device, gy, x_shape, kernel, stride, padding, count_include_pad,
                        divisor_override) -> gx

Both paths take float16, float32 and float64; float16 is computed in float32 and rounded once
per result (the kernels store __half and compute in float).

The adaptive pools are compositions that run on any device: average pooling is two matmuls
with constant window matrices (variable windows, one GEMM each), max pooling gathers each
window's columns then rows (separably) and scatters its gradient with dlcore's scatter_add.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..autograd import Function
from ..kernels import KernelFamily
from ..kernels.family import FLOAT_DTYPES_BF16
from ..tensor import Tensor
from . import pool_cpu, pool_cuda
from ._check import forward_backward
from .conv import _pair
from .index import scatter_add
from ..dtypes import is_floating

Pair = tuple[int, int]

POOL2D = KernelFamily("pool2d", pool_cuda.SOURCE, cpu=pool_cpu, kernel=pool_cuda,
                      kernel_dtypes=pool_cuda.KERNEL_DTYPES, cpu_dtypes=FLOAT_DTYPES_BF16)
# Positions inside a plane, and the saved max-pooling indices, are int32.
MAX_PLANE = 2**31 - 1


def pool2d_out_size(size: int, kernel: int, stride: int, padding: int, dilation: int,
                    ceil_mode: bool) -> int:
    """PyTorch's pooling output length along one dim; with ``ceil_mode`` the last window must
    still start inside the input or its left padding (one starting in the right padding is
    dropped)."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return max(out, 0)


def _out_hw(x_shape: tuple, kernel: Pair, stride: Pair, padding: Pair, dilation: Pair,
            ceil_mode: bool) -> Pair:
    return (pool2d_out_size(x_shape[2], kernel[0], stride[0], padding[0], dilation[0],
                            ceil_mode),
            pool2d_out_size(x_shape[3], kernel[1], stride[1], padding[1], dilation[1],
                            ceil_mode))


class MaxPool2d(Function):
    """y, or (y, indices as int64) with ``return_indices``; the gradient is scattered to the
    saved int32 indices (on the cpu, the saved window codes) by MaxPoolBackward."""

    differentiable_outputs = (0,)

    def forward(self, x: Any, args: tuple, return_indices: bool) -> Any:
        kernel, stride, padding, dilation, ceil_mode = args
        impl = POOL2D.select(self.device, x.dtype, "max_pool2d")
        out_hw = _out_hw(x.shape, kernel, stride, padding, dilation, ceil_mode)
        self.x_shape, self.geometry = x.shape, args[:4]
        self.indices: Any  # int32 flat indices, or on the cpu the codes of pool_cpu.MaxCodes
        if impl is pool_cpu:  # saves each window's code, a byte; flat indices only if asked
            y, self.indices, flat = pool_cpu.max_pool2d_forward_codes(
                x, out_hw, kernel, stride, padding, dilation, flat=return_indices)
            return (y, flat.astype(np.int64)) if flat is not None else y
        y, self.indices = impl.max_pool2d_forward(self.device, x, out_hw, *args[:4])
        # a copy: the user's int64 indices may be edited without touching the saved ones
        return (y, self.indices.astype(np.int64)) if return_indices else y

    def backward(self, gy: Tensor, _gi: Any = None) -> tuple:
        return (MaxPoolBackward.apply(gy, indices=self.indices, x_shape=self.x_shape,
                                      geometry=self.geometry),)


class MaxPoolBackward(Function):
    """gx = scatter-add of gy to the argmax indices; linear in gy, adjoint: a gather."""

    def forward(self, gy: Any, indices: Any, x_shape: tuple, geometry: tuple) -> Any:
        self.indices, self.gy_shape = indices, gy.shape
        if isinstance(indices, pool_cpu.MaxCodes):  # the cpu path's saved codes
            return pool_cpu.max_pool2d_backward_codes(gy, indices)
        impl = POOL2D.select(self.device, gy.dtype, "max_pool2d backward")
        return impl.max_pool2d_backward(self.device, gy, indices, x_shape, *geometry)

    def backward(self, ggx: Tensor) -> tuple:
        n, c = self.gy_shape[:2]
        saved = self.indices
        flat = saved.flat() if isinstance(saved, pool_cpu.MaxCodes) else saved
        xp, indices = self.device.xp, flat.reshape(n, c, -1)
        missed = indices < 0  # windows with no input tap (index -1, dilation only)
        if not missed.any():
            idx = Tensor._make(indices, self.device)
            return (ggx.reshape(n, c, -1).gather(2, idx).reshape(*self.gy_shape),)
        idx = Tensor._make(xp.maximum(indices, 0), self.device)
        keep = Tensor._make(self.device.astype(~missed, ggx.dtype), self.device)
        return ((ggx.reshape(n, c, -1).gather(2, idx) * keep).reshape(*self.gy_shape),)


class AvgPool2d(Function):
    """y = window means; linear, so its backward is AvgPoolBackward and vice versa."""

    def forward(self, x: Any, args: tuple) -> Any:
        # args: (kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
        self.x_shape, self.args = x.shape, args
        kernel, stride, padding, ceil_mode, count_include_pad, divisor_override = args
        impl = POOL2D.select(self.device, x.dtype, "avg_pool2d")
        out_hw = _out_hw(x.shape, kernel, stride, padding, (1, 1), ceil_mode)
        return impl.avg_pool2d_forward(self.device, x, out_hw, kernel, stride, padding,
                                       count_include_pad, divisor_override)

    def backward(self, gy: Tensor) -> tuple:
        return (AvgPoolBackward.apply(gy, x_shape=self.x_shape, args=self.args),)


class AvgPoolBackward(Function):
    def forward(self, gy: Any, x_shape: tuple, args: tuple) -> Any:
        self.args = args
        kernel, stride, padding, _, count_include_pad, divisor_override = args
        impl = POOL2D.select(self.device, gy.dtype, "avg_pool2d backward")
        return impl.avg_pool2d_backward(self.device, gy, x_shape, kernel, stride, padding,
                                        count_include_pad, divisor_override)

    def backward(self, ggx: Tensor) -> tuple:
        return (AvgPool2d.apply(ggx, args=self.args),)


# ---- argument checks ----------------------------------------------------------------------

def _batched(input: Tensor, op: str) -> tuple[Tensor, bool]:
    if input.ndim == 3:
        return input.unsqueeze(0), True
    if input.ndim != 4:
        raise ValueError(f"{op}: expected a 3-D (C, H, W) or 4-D (N, C, H, W) input, got "
                         f"shape {tuple(input.shape)}")
    if not is_floating(input.dtype):
        raise TypeError(f"{op}: expected a floating point input, got {input.dtype}")
    return input, False


def _window_args(x: Tensor, kernel_size: Any, stride: Any, padding: Any, dilation: Any,
                 ceil_mode: bool, op: str) -> tuple[Pair, Pair, Pair, Pair]:
    kernel = _pair(kernel_size, "kernel_size", op, 1)
    stride = kernel if stride is None or stride == [] or stride == () else \
        _pair(stride, "stride", op, 1)
    padding = _pair(padding, "padding", op, 0)
    dilation = _pair(dilation, "dilation", op, 1)
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(f"{op}: padding {padding} should be at most half of kernel_size "
                         f"{kernel}")
    out = _out_hw(x.shape, kernel, stride, padding, dilation, ceil_mode)
    if min(out) < 1:
        raise ValueError(f"{op}: output size {tuple(out)} is too small for input "
                         f"{tuple(x.shape)} with kernel_size {kernel}, stride {stride}, "
                         f"padding {padding}, dilation {dilation}")
    if max(x.shape[2] * x.shape[3], out[0] * out[1]) > MAX_PLANE:
        raise ValueError(f"{op}: input plane {tuple(x.shape[2:])} (output {tuple(out)}) holds "
                         f"2^31 or more elements; pooling indexes a plane with int32")
    return kernel, stride, padding, dilation


# ---- public functions ---------------------------------------------------------------------

def max_pool2d(input: Tensor, kernel_size: Any, stride: Any = None,
               padding: Any = 0, dilation: Any = 1, ceil_mode: bool = False,
               return_indices: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """2-D max pooling, PyTorch's ``F.max_pool2d``; ``stride`` defaults to the kernel size.

    >>> max_pool2d(dlcore.arange(16.0).reshape(1, 1, 4, 4), 2).tolist()
    [[[[5.0, 7.0], [13.0, 15.0]]]]
    """
    x, unbatched = _batched(input, "max_pool2d")
    args = _window_args(x, kernel_size, stride, padding, dilation, ceil_mode, "max_pool2d")
    out = MaxPool2d.apply(x, args=(*args, bool(ceil_mode)), return_indices=bool(return_indices))
    if not return_indices:
        return out.squeeze(0) if unbatched else out
    y, idx = out
    return (y.squeeze(0), idx.squeeze(0)) if unbatched else (y, idx)


def avg_pool2d(input: Tensor, kernel_size: Any, stride: Any = None,
               padding: Any = 0, ceil_mode: bool = False, count_include_pad: bool = True,
               divisor_override: int | None = None) -> Tensor:
    """2-D average pooling, PyTorch's ``F.avg_pool2d``.

    >>> avg_pool2d(dlcore.arange(16.0).reshape(1, 1, 4, 4), 2).tolist()
    [[[[2.5, 4.5], [10.5, 12.5]]]]
    """
    x, unbatched = _batched(input, "avg_pool2d")
    kernel, stride, padding, _ = _window_args(x, kernel_size, stride, padding, 1, ceil_mode,
                                              "avg_pool2d")
    if divisor_override is not None and divisor_override <= 0:
        raise ValueError(f"avg_pool2d: divisor_override must be positive, got "
                         f"{divisor_override}")
    y = AvgPool2d.apply(x, args=(kernel, stride, padding, bool(ceil_mode),
                                 bool(count_include_pad), divisor_override))
    return y.squeeze(0) if unbatched else y


def _adaptive_windows(size: int, out: int) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch's adaptive windows: [floor(o*size/out), ceil((o+1)*size/out))."""
    o = np.arange(out)
    return (o * size) // out, ((o + 1) * size + out - 1) // out


def _output_size(x: Tensor, output_size: Any, op: str) -> Pair:
    if isinstance(output_size, int) or output_size is None:
        output_size = (output_size, output_size)
    sizes = tuple(x.shape[2 + i] if s is None else int(s) for i, s in enumerate(output_size))
    if len(sizes) != 2 or min(sizes) < 1:
        raise ValueError(f"{op}: output_size must be positive ints (or None), got "
                         f"{output_size!r}")
    return sizes[0], sizes[1]


def _window_matrix(size: int, out: int, device: Any, dtype: Any) -> Tensor:
    """(out, size) matrix whose row o averages window o."""
    start, end = _adaptive_windows(size, out)
    pos = np.arange(size)
    m = ((pos >= start[:, None]) & (pos < end[:, None])) / (end - start)[:, None]
    return Tensor._make(device.xp.asarray(m, dtype=dtype), device)


# The dtypes BLAS sums in (float16 and bfloat16 take the mean, which sums in float32).
_GLOBAL_AVG_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class GlobalAvgPool2d(Function):
    """y = the mean of each (H, W) plane, on the cpu: the planes (N*C, H*W) times a vector of
    1/(H*W), one BLAS matrix-vector product (measured 3x faster than NumPy's mean over the
    two axes on 512ch 7x7, whose pairwise sum restarts for every 49-element plane)."""

    def forward(self, x: Any) -> Any:
        n, c, h, w = self.x_shape = x.shape
        weights = np.full(h * w, 1.0 / (h * w), x.dtype)
        return (np.ascontiguousarray(x).reshape(n * c, h * w) @ weights).reshape(n, c, 1, 1)

    def backward(self, gy: Tensor) -> tuple:
        h, w = self.x_shape[2:]
        return ((gy * (1.0 / (h * w))).expand(*self.x_shape),)


def adaptive_avg_pool2d(input: Tensor, output_size: Any) -> Tensor:
    """Average pooling to a fixed output size, PyTorch's ``F.adaptive_avg_pool2d``:
    y = A_h @ x @ A_w^T with constant window-averaging matrices (a mean for 1x1).

    >>> adaptive_avg_pool2d(dlcore.arange(16.0).reshape(1, 1, 4, 4), 1).tolist()
    [[[[7.5]]]]
    """
    x, unbatched = _batched(input, "adaptive_avg_pool2d")
    oh, ow = _output_size(x, output_size, "adaptive_avg_pool2d")
    if (oh, ow) == (1, 1) and x.device.type == "cpu" and x.dtype in _GLOBAL_AVG_DTYPES:
        y = GlobalAvgPool2d.apply(x)
    elif (oh, ow) == (1, 1):
        y = x.mean(dim=(2, 3), keepdim=True)
    else:
        a_h = _window_matrix(x.shape[2], oh, x.device, x.dtype)
        a_w = _window_matrix(x.shape[3], ow, x.device, x.dtype)
        y = a_h @ (x @ a_w.mT)
    return y.squeeze(0) if unbatched else y


class AdaptiveMaxPool2d(Function):
    """(y, indices) over variable windows, separably: columns, then rows."""

    differentiable_outputs = (0,)

    def forward(self, x: Any, output_size: Pair) -> Any:
        xp = self.device.xp
        n, c, h, w = x.shape
        # columns first, then rows: the first maximum in row-major order wins ties
        cols_best, col_arg = _gather_max(x, *_adaptive_windows(w, output_size[1]), 3, xp)
        y, row_arg = _gather_max(cols_best, *_adaptive_windows(h, output_size[0]), 2, xp)
        col = xp.take_along_axis(col_arg, row_arg, axis=2)
        self.indices = row_arg * w + col
        self.x_shape = x.shape
        return y, self.indices

    def backward(self, gy: Tensor, _gi: Any = None) -> tuple:
        n, c, h, w = self.x_shape
        idx = Tensor._make(self.indices.reshape(n, c, -1), self.device)
        zeros = Tensor._make(self.device.xp.zeros((n, c, h * w), dtype=gy.dtype), self.device)
        return (scatter_add(zeros, 2, idx, gy.reshape(n, c, -1)).reshape(n, c, h, w),)


def _gather_max(x: Any, start: np.ndarray, end: np.ndarray, axis: int,
                xp: Any) -> tuple[Any, Any]:
    """Max over variable windows [start, end) along ``axis`` and the int64 position (along
    that axis) of the first maximum; short windows repeat their last element, which never
    changes the max nor the first-maximum position."""
    best = arg = None
    for k in range(int((end - start).max())):
        pos = xp.asarray(np.minimum(start + k, end - 1))
        v = xp.take(x, pos, axis=axis)
        shape = [1] * x.ndim
        shape[axis] = pos.size
        where = pos.reshape(shape)
        if best is None:
            best, arg = v, xp.broadcast_to(where, v.shape).astype(np.int64)
            continue
        take = (v > best) | xp.isnan(v)
        best = xp.where(take, v, best)
        arg = xp.where(take, where, arg)
    return best, arg


def adaptive_max_pool2d(input: Tensor, output_size: Any,
                        return_indices: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Max pooling to a fixed output size, PyTorch's ``F.adaptive_max_pool2d``.

    >>> adaptive_max_pool2d(dlcore.arange(16.0).reshape(1, 1, 4, 4), 1).tolist()
    [[[[15.0]]]]
    """
    x, unbatched = _batched(input, "adaptive_max_pool2d")
    out = _output_size(x, output_size, "adaptive_max_pool2d")
    y, idx = AdaptiveMaxPool2d.apply(x, output_size=out)
    if unbatched:
        y, idx = y.squeeze(0), idx.squeeze(0)
    return (y, idx) if return_indices else y


# ---- dlcore check cases: the kernels against the cpu path ---------------------------------

@POOL2D.check("max_pool2d 3x3 stride 2 pad 1")
def _check_max_pool2d(device: Any) -> dict:
    def op(x: Tensor) -> Tensor:
        y = max_pool2d(x, kernel_size=3, stride=2, padding=1)
        assert isinstance(y, Tensor)  # no indices asked for
        return y

    return forward_backward(device, 2, [(2, 3, 9, 9)], op, ["input"])


@POOL2D.check("avg_pool2d 2x2")
def _check_avg_pool2d(device: Any) -> dict:
    return forward_backward(device, 2, [(2, 3, 9, 9)], lambda x: avg_pool2d(x, kernel_size=2),
                            ["input"])


@POOL2D.check("max_pool2d 3x3 stride 2 pad 1 float16")
def _check_max_pool2d_float16(device: Any) -> dict:
    # The two paths pick the same maxima and sum each gradient in float32 in the same order
    # (output order), so they agree to the bit, well inside the check's float32 tolerance.
    def op(x: Tensor) -> Tensor:
        y = max_pool2d(x.half(), kernel_size=3, stride=2, padding=1)
        assert isinstance(y, Tensor)  # no indices asked for
        return y.float()

    return forward_backward(device, 3, [(2, 3, 9, 9)], op, ["input"])


@POOL2D.check("max_pool2d 3x3 stride 2 pad 1 bfloat16")
def _check_max_pool2d_bfloat16(device: Any) -> dict:
    # As for float16: the same maxima, each gradient summed in float32 in output order and
    # rounded to bfloat16 once. On cuda this runs the uint16-word path end to end: the casts
    # on the bit pattern, the __nv_bfloat16 kernels, and the gradient's casts back.
    def op(x: Tensor) -> Tensor:
        y = max_pool2d(x.bfloat16(), kernel_size=3, stride=2, padding=1)
        assert isinstance(y, Tensor)  # no indices asked for
        return y.float()

    return forward_backward(device, 3, [(2, 3, 9, 9)], op, ["input"])

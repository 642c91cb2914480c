"""Kernel path of 2-D convolution on a ``cuda`` or ``emu`` device: which kernel serves a shape.

Array-level twins of the NumPy functions in :mod:`dlcore.ops.conv_cpu`, with the device first::

    y = conv2d_forward(device, x, w, (5, 5), (1, 1), (1, 1), (1, 1), 1)

Arrays are NCHW (weights ``(F, C/groups, KH, KW)``) on ``device``; ``stride``, ``padding`` and
``dilation`` are int pairs already validated by the caller. Each direction goes to the first
of these that serves it (tests name the kernel through
:func:`dlcore.kernels.recorded_launches`):

1. 1x1 kernels at stride 1 without padding are plain GEMMs, ``w (F, C) @ x[n] (C, H*W)`` per
   group: ``device_matmul``, i.e. cuBLAS on ``cuda`` (NumPy's BLAS on ``emu``), no kernel of ours
   (float32 and float64; float16 goes to the tensor cores, which accumulate in float);
2. depthwise convolutions (groups == C, one input channel per filter) in float32 and float64:
   :mod:`dlcore.ops.conv_depthwise_cuda` (``kernels/conv2d_depthwise.cu``: a plane tile in
   shared memory per block, taps in registers; an implicit GEMM would use 1/64 of its tile);
3. float16, and float32 while ``dlcore.backends.cudnn.allow_tf32`` is True (PyTorch's default),
   on tensor cores: :mod:`dlcore.ops.conv_tc_cuda` (``kernels/conv2d_tc.cu``, TF32 for float32,
   sm_80 and later; FP16, sm_70 and later; float accumulation);
4. the SIMT implicit GEMMs: :mod:`dlcore.ops.conv_gemm_cuda` (``kernels/conv2d.cu``; float32
   and float64).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backends import cudnn
from . import conv_depthwise_cuda, conv_gemm_cuda, conv_tc_cuda
from ._util import device_matmul

__all__ = ["KERNEL_DTYPES", "conv2d_backward_data", "conv2d_backward_weight", "conv2d_forward"]

Pair = tuple[int, int]
# NOTE: no bfloat16. The SIMT and tensor-core kernels are templated on __half and float; a
# bfloat16 path needs its own wmma tiles (m16n16k16 __nv_bfloat16, sm_80+) and their tests.
# Until then conv2d on emu/cuda refuses bfloat16 with the family's TypeError (conv2d, the
# dtype, the device), never a silent float32 detour that would look like a bfloat16 kernel;
# the cpu path computes bfloat16 in float32 and rounds once.
KERNEL_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def _is_pointwise(w_shape: tuple[int, ...], stride: Pair, padding: Pair) -> bool:
    return tuple(w_shape[2:]) == (1, 1) and stride == (1, 1) and padding == (0, 0)


POINTWISE = "cuBLAS"  # the route of 1x1 convolutions: device_matmul


def _route(device: Any, dtype: Any, x_shape: tuple[int, ...], w_shape: tuple[int, ...],
           y_hw: tuple[int, ...], stride: Pair, padding: Pair, groups: int, op: str) -> Any:
    """Which path serves this convolution (every direction: the same rules apply to the
    forward and both gradients), remembered per shape, dtype, device and TF32 switch so a
    call pays one dictionary lookup, not three predicates."""
    key = (device, dtype, x_shape, w_shape, y_hw, stride, padding, groups, cudnn.allow_tf32)
    route = _routes.get(key)
    if route is None:
        route = _routes[key] = _choose(*key[:-1], op)
    return route


_routes: dict[tuple, Any] = {}


def _choose(device: Any, dtype: Any, x_shape: tuple[int, ...], w_shape: tuple[int, ...],
            y_hw: tuple[int, ...], stride: Pair, padding: Pair, groups: int, op: str) -> Any:
    half = np.dtype(dtype) == np.float16
    if _is_pointwise(w_shape, stride, padding) and tuple(y_hw) == tuple(x_shape[2:]) \
            and not half:
        return POINTWISE
    if not half and conv_depthwise_cuda.serves(x_shape, w_shape, groups):
        return conv_depthwise_cuda
    if conv_tc_cuda.serves(device, dtype, x_shape, w_shape, groups, (y_hw[0], y_hw[1]), stride):
        return conv_tc_cuda
    if half:
        raise _no_kernel(op, dtype, device)
    return conv_gemm_cuda


def _no_kernel(op: str, dtype: Any, device: Any) -> TypeError:
    return TypeError(f"{op}: dtype {np.dtype(dtype)} on {device} needs the tensor-core kernels, "
                     f"which this device or shape cannot run (float16 needs sm_70, float32 "
                     f"TF32 sm_80); use float32 or float64")


def conv2d_forward(device: Any, x: Any, w: Any, out_hw: Pair, stride: Pair, padding: Pair,
                   dilation: Pair, groups: int, bias: Any = None) -> Any:
    """``y`` (N, F, *out_hw) = conv2d of ``x`` (N, C, H, W) with ``w`` (F, C/groups, KH, KW),
    plus ``bias`` (F,) when given (in the kernels' epilogue)."""
    route = _route(device, x.dtype, x.shape, w.shape, out_hw, stride, padding, groups, "conv2d")
    if route is not POINTWISE:
        return route.conv2d_forward(device, x, w, out_hw, stride, padding, dilation, groups,
                                    bias=bias)
    n, c, h, wd = x.shape
    f, cg = w.shape[:2]
    xp = device.xp
    with device.use():
        if x.size == 0 or f == 0:
            y = xp.zeros((n, f, *out_hw), dtype=x.dtype)
            return y if bias is None else y + bias.astype(x.dtype).reshape(1, f, 1, 1)
        fg = f // groups
        y = device_matmul(xp, w.astype(x.dtype, copy=False).reshape(groups, fg, cg),
                          xp.ascontiguousarray(x).reshape(n, groups, cg, h * wd))
        y = y.reshape(n, f, *out_hw)
        return y if bias is None else y + bias.astype(x.dtype).reshape(1, f, 1, 1)


def conv2d_backward_data(device: Any, gy: Any, w: Any, x_shape: tuple[int, ...], stride: Pair,
                         padding: Pair, dilation: Pair, groups: int) -> Any:
    """``gx`` (``x_shape``), the gradient of conv2d with respect to its input, from ``gy``."""
    route = _route(device, gy.dtype, tuple(x_shape), w.shape, gy.shape[2:], stride, padding,
                   groups, "conv2d backward")
    if route is not POINTWISE:
        return route.conv2d_backward_data(device, gy, w, x_shape, stride, padding, dilation,
                                          groups)
    n, c, h, wd = x_shape
    f, cg = w.shape[:2]
    xp = device.xp
    with device.use():
        if gy.size == 0 or c == 0:
            return xp.zeros(tuple(x_shape), dtype=gy.dtype)
        fg = f // groups
        wt = w.astype(gy.dtype, copy=False).reshape(groups, fg, cg).transpose(0, 2, 1)
        return device_matmul(xp, wt, xp.ascontiguousarray(gy).reshape(n, groups, fg, h * wd)
                             ).reshape(x_shape)


def conv2d_backward_weight(device: Any, x: Any, gy: Any, w_shape: tuple[int, ...], stride: Pair,
                           padding: Pair, dilation: Pair, groups: int) -> Any:
    """``gw`` (``w_shape``), the gradient of conv2d with respect to its weight, from ``x`` and
    ``gy``; deterministic in every path."""
    route = _route(device, x.dtype, x.shape, tuple(w_shape), gy.shape[2:], stride, padding,
                   groups, "conv2d backward")
    if route is not POINTWISE:
        return route.conv2d_backward_weight(device, x, gy, w_shape, stride, padding, dilation,
                                            groups)
    n, c, h, wd = x.shape
    f, cg = w_shape[:2]
    xp = device.xp
    with device.use():
        if x.size == 0 or gy.size == 0:
            return xp.zeros(tuple(w_shape), dtype=x.dtype)
        fg = f // groups
        # gw[g] = sum over n of gy[n, g] (Fg, P) @ x[n, g]^T (P, Cg), one batched GEMM
        prod = device_matmul(xp, xp.ascontiguousarray(gy).astype(x.dtype, copy=False)
                             .reshape(n, groups, fg, h * wd),
                             xp.ascontiguousarray(x).reshape(n, groups, cg, h * wd)
                             .transpose(0, 1, 3, 2))
        return prod.sum(axis=0).reshape(w_shape)

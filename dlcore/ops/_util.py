"""Helpers shared by the ops: operand preparation, broadcasting, dims."""

from __future__ import annotations

import functools
import os
import sys
import warnings
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeVar

import numpy as np

from .. import cuda_blas
from ..device import cupy_module
from ..precision import cast_float32, cast_low, is_active
from ..autograd import Function
from ..dtypes import BF16_WORDS, bfloat16, float32, is_floating, promote, scalar_result
from ..tensor import Tensor
from . import blas_cpu

SCALAR_TYPES = (int, float, bool, np.number, np.bool_)
F = TypeVar("F", bound=Callable[..., Any])


def gemm(a: Any, b: Any, op: str = "matmul") -> Any:
    """``a @ b`` of two arrays of one dtype. NOTE: NumPy has no float16 BLAS (its float16
    matmul is a plain loop that rounds every partial sum to half, tens of times slower), so
    float16 NumPy operands are multiplied in float32 and the result rounded once, as a GPU's
    float16 GEMM accumulates in float32; CuPy's float16 matmul is cuBLAS's and used as is.
    bfloat16 (ml_dtypes; its ``@`` has no BLAS either and returns float32) goes the same way."""
    dt = a.dtype
    if (dt == np.float16 or dt == bfloat16) and isinstance(a, np.ndarray):
        return (a.astype(np.float32) @ b.astype(np.float32)).astype(dt)
    if dt == BF16_WORDS:
        raise bfloat16_unsupported(op)
    if isinstance(a, np.ndarray):
        return blas_cpu.matmul(a, b)
    return cuda_blas.matmul(cupy_module(), a, b)


def device_matmul(xp: Any, a: Any, b: Any, out: Any = None) -> Any:
    """``a @ b`` of one device's arrays (``xp`` its array module): NumPy's on ``cpu`` and
    ``emu``, :func:`dlcore.cuda_blas.matmul` on ``cuda`` (cuBLAS called so that CUDA graphs
    can capture it; CuPy's matmul refuses capture). Every GEMM of an op on device arrays
    goes through here or :func:`gemm`."""
    if xp is np:
        return np.matmul(a, b) if out is None else np.matmul(a, b, out=out)
    return cuda_blas.matmul(xp, a, b, out)


# NOTE: on cuda a bfloat16 tensor holds uint16 words (CuPy has no bfloat16; dlcore.dtypes), so
# an op that ran the array module on them would compute on integers. The ops that have a
# bfloat16 path there (casts, copies, views, the pool2d kernels) take them; the common
# arithmetic (elementwise, reductions, matmul, linear) checks with reject_bfloat16_words and
# raises this error instead of computing garbage.
def bfloat16_unsupported(op: str) -> TypeError:
    return TypeError(f"{op}: dtype bfloat16 is not supported on cuda (CuPy has no bfloat16; "
                     "dlcore keeps its 16-bit words and only casts, copies, views and the "
                     "pool2d kernels read them); cast with .float() first, or use float16")


def reject_bfloat16_words(op: str, *tensors: Any) -> None:
    """Raise :func:`bfloat16_unsupported` if any of ``tensors`` is a cuda bfloat16 tensor."""
    for t in tensors:
        if isinstance(t, Tensor) and t._data.dtype == BF16_WORDS:
            raise bfloat16_unsupported(op)


# NOTE: ml_dtypes' bfloat16 ufuncs compute each element in float32 and round once (as a GPU
# does), but its reductions round every partial sum to bfloat16 (``ones(1000, bfloat16)
# .sum()`` is 256). Reductions therefore widen bfloat16 to float32, reduce, and round the
# result once, as PyTorch accumulates bfloat16 in float.
def widen(x: Any) -> Any:
    """``x`` in the dtype to reduce it in: float32 for bfloat16, else ``x`` itself."""
    return x.astype(float32) if x.dtype == bfloat16 else x


def narrow(y: Any, dtype: np.dtype) -> Any:
    """A reduction's result ``y`` rounded once to the input's ``dtype``."""
    return y if y.dtype == dtype else y.astype(dtype)


def is_scalar(x: Any) -> bool:
    return isinstance(x, SCALAR_TYPES)


def as_tensor_like(x: Any, like: Tensor) -> Tensor:
    """Non-Tensor operands (lists, arrays) become constant tensors on ``like``'s device."""
    if isinstance(x, Tensor):
        return x
    return Tensor._make(like.device.asarray(x), like.device)


def cast(t: Tensor, dtype: np.dtype) -> Tensor:
    if t._data.dtype == dtype:
        return t
    return t.to(dtype)


def promote_pair(a: Tensor, b: Tensor, op: str = "binary op") -> tuple[Tensor, Tensor]:
    da, db = a._data.dtype, b._data.dtype
    if da == BF16_WORDS or db == BF16_WORDS:
        raise bfloat16_unsupported(op)
    if da == db:
        return a, b
    dt = promote(da, db)
    return cast(a, dt), cast(b, dt)


def scalar_operand(t: Tensor, c: Any, op: str = "binary op") -> tuple[Tensor, Any]:
    """Cast ``t`` to the dtype of ``t op c`` (PyTorch's weak-scalar rules) and return the
    scalar as a NumPy scalar of that dtype (float32 for 16-bit floats: :func:`opmath_scalar`),
    so no array module widens the result beyond what :func:`narrow_to` rounds back."""
    if t._data.dtype == BF16_WORDS:
        raise bfloat16_unsupported(op)
    dt = scalar_result(t._data.dtype, c)
    if dt != t._data.dtype:
        t = cast(t, dt)
    if isinstance(c, bool | np.bool_) and dt.kind != "b":
        c = int(c)
    return t, opmath_scalar(dt, c)


def opmath_scalar(dt: np.dtype, c: Any) -> Any:
    """The scalar of a tensor-scalar op on a ``dt`` tensor: ``dt``'s own type, except float32
    for float16 and bfloat16, as PyTorch computes those ops in float32 and rounds once
    (``half_tensor * 65536.0`` is 65536 times the value, not times inf: 65536 has no float16)."""
    if dt.itemsize == 2 and is_floating(dt):
        return np.float32(c)
    return dt.type(c)


def narrow_to(result: Any, dt: np.dtype) -> Any:
    """A tensor-scalar op's ``result`` rounded once to its tensor's dtype ``dt`` (a no-op
    unless :func:`opmath_scalar` widened a 16-bit float op to float32)."""
    return result if result.dtype == dt else result.astype(dt)


def normalize_dim(dim: int, ndim: int, op: str) -> int:
    n = max(ndim, 1)
    if not -n <= dim < n:
        raise IndexError(f"{op}: dim {dim} is out of range for a tensor with {ndim} dims")
    return dim % n


def normalize_dims(dim: Any, ndim: int, op: str) -> tuple[int, ...] | None:
    """``None`` (all dims), an int or a tuple of ints -> sorted tuple of positive dims."""
    if dim is None:
        return None
    if isinstance(dim, int | np.integer):
        return (normalize_dim(int(dim), ndim, op),)
    dims = tuple(sorted(normalize_dim(int(d), ndim, op) for d in dim))
    if len(set(dims)) != len(dims):
        raise RuntimeError(f"{op}: dim {tuple(dim)} appears multiple times")
    return dims if dims else None


class SumTo(Function):
    """Sum a broadcast gradient back to an operand's shape."""

    def forward(self, x: Any, shape: tuple[int, ...]) -> Any:
        self.in_shape = x.shape
        lead = x.ndim - len(shape)
        axes = tuple(range(lead)) + tuple(
            i + lead for i, s in enumerate(shape) if s == 1 and x.shape[i + lead] != 1)
        out = narrow(widen(x).sum(axis=axes, keepdims=True), x.dtype) if axes else x
        return out.reshape(shape) if lead or out.shape != shape else out

    def backward(self, g: Tensor) -> tuple[Tensor]:
        return (g.expand(*self.in_shape),)


def sum_to(g: Tensor, shape: tuple[int, ...]) -> Tensor:
    if g._data.shape == shape:
        return g
    return SumTo.apply(g, shape=shape)


_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` attributed to the first frame outside the dlcore package, as
    PyTorch's warnings point at the user's line: a fixed ``stacklevel`` lands inside dlcore
    when the call goes through a wrapper (the autocast decorator, a module's forward)."""
    level = 2
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def _autocast_op(cast: Callable[..., tuple]) -> Callable[[F], F]:
    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def op(*args: Any, **kwargs: Any) -> Any:
            if is_active():
                args = _cast_tensors(cast, args)
                kwargs = dict(zip(kwargs, _cast_tensors(cast, tuple(kwargs.values()))))
            return fn(*args, **kwargs)
        return op  # type: ignore[return-value]
    return decorate


def _cast_tensors(cast: Callable[..., tuple], values: tuple) -> tuple:
    """``values`` with its Tensors passed through ``cast`` (together: one device decides)."""
    where = [i for i, v in enumerate(values) if isinstance(v, Tensor)]
    if not where:
        return values
    casted = cast(*[values[i] for i in where])
    out = list(values)
    for i, c in zip(where, casted):
        out[i] = c
    return tuple(out)


# Decorators for the public functions of ops: under ``dlcore.autocast`` their Tensor
# arguments are cast to the region's low dtype, or to float32 (see dlcore/autocast.py).
low_precision = _autocast_op(cast_low)
float32_op = _autocast_op(cast_float32)

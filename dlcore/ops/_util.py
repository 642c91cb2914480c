"""Helpers shared by the ops: operand preparation, broadcasting, dims."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from ..precision import cast_float32, cast_low, is_active
from ..autograd import Function
from ..dtypes import promote, scalar_result
from ..tensor import Tensor

SCALAR_TYPES = (int, float, bool, np.number, np.bool_)
F = TypeVar("F", bound=Callable[..., Any])


def gemm(a: Any, b: Any) -> Any:
    """``a @ b`` of two arrays of one dtype. NOTE: NumPy has no float16 BLAS (its float16
    matmul is a plain loop that rounds every partial sum to half, tens of times slower), so
    float16 NumPy operands are multiplied in float32 and the result rounded once, as a GPU's
    float16 GEMM accumulates in float32; CuPy's float16 matmul is cuBLAS's and used as is."""
    if a.dtype == np.float16 and isinstance(a, np.ndarray):
        return (a.astype(np.float32) @ b.astype(np.float32)).astype(np.float16)
    return a @ b


def is_scalar(x: Any) -> bool:
    return isinstance(x, SCALAR_TYPES)


def as_tensor_like(x: Any, like: Tensor) -> Tensor:
    """Non-Tensor operands (lists, arrays) become constant tensors on ``like``'s device."""
    if isinstance(x, Tensor):
        return x
    return Tensor._make(like.device.asarray(x), like.device)


def cast(t: Tensor, dtype: np.dtype) -> Tensor:
    if t.data.dtype == dtype:
        return t
    return t.to(dtype)


def promote_pair(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    da, db = a.data.dtype, b.data.dtype
    if da == db:
        return a, b
    dt = promote(da, db)
    return cast(a, dt), cast(b, dt)


def scalar_operand(t: Tensor, c: Any) -> tuple[Tensor, Any]:
    """Cast ``t`` to the dtype of ``t op c`` (PyTorch's weak-scalar rules) and return the
    scalar as a NumPy scalar of that dtype, so no array module widens the result."""
    dt = scalar_result(t.data.dtype, c)
    if dt != t.data.dtype:
        t = cast(t, dt)
    if isinstance(c, bool | np.bool_) and dt.kind != "b":
        c = int(c)
    return t, dt.type(c)


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
        out = x.sum(axis=axes, keepdims=True) if axes else x
        return out.reshape(shape) if lead or out.shape != shape else out

    def backward(self, g: Tensor) -> tuple[Tensor]:
        return (g.expand(*self.in_shape),)


def sum_to(g: Tensor, shape: tuple[int, ...]) -> Tensor:
    if g.data.shape == shape:
        return g
    return SumTo.apply(g, shape=shape)


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

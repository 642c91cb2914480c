"""Binds the ops to :class:`~dlcore.Tensor` as methods and operators (PyTorch's names)."""

from __future__ import annotations

from typing import Any

from . import ops
from .tensor import Tensor


def _rsub(self: Tensor, other: Any) -> Tensor:
    return ops.sub(other, self)


def _rtruediv(self: Tensor, other: Any) -> Tensor:
    return ops.div(other, self)


def _rpow(self: Tensor, other: Any) -> Tensor:
    return ops.pow(other, self)


def _rmatmul(self: Tensor, other: Any) -> Tensor:
    return ops.matmul(other, self)


def _iop(name: str) -> Any:
    def method(self: Tensor, other: Any) -> Tensor:
        return getattr(self, name)(other)
    return method


def _variadic(fn: Any) -> Any:
    def method(self: Tensor, *args: Any) -> Tensor:
        return fn(self, *args)
    method.__name__ = fn.__name__
    method.__doc__ = fn.__doc__
    return method


def _install() -> None:
    T = Tensor
    T.__add__ = T.__radd__ = ops.add
    T.__sub__ = ops.sub
    T.__rsub__ = _rsub
    T.__mul__ = T.__rmul__ = ops.mul
    T.__truediv__ = ops.div
    T.__rtruediv__ = _rtruediv
    T.__pow__ = ops.pow
    T.__rpow__ = _rpow
    T.__matmul__ = ops.matmul
    T.__rmatmul__ = _rmatmul
    T.__neg__ = ops.neg
    T.__abs__ = ops.abs
    T.__eq__ = ops.eq
    T.__ne__ = ops.ne
    T.__lt__ = ops.lt
    T.__le__ = ops.le
    T.__gt__ = ops.gt
    T.__ge__ = ops.ge
    T.__invert__ = ops.logical_not
    T.__and__ = ops.logical_and
    T.__or__ = ops.logical_or
    T.__getitem__ = ops.getitem
    T.__iadd__ = _iop("add_")
    T.__isub__ = _iop("sub_")
    T.__imul__ = _iop("mul_")
    T.__itruediv__ = _iop("div_")
    for name in ("add", "sub", "mul", "div", "pow", "matmul", "maximum", "minimum", "exp",
                 "log", "log1p", "sqrt", "rsqrt", "abs", "sign", "sin", "cos", "tanh",
                 "sigmoid", "relu", "neg", "clamp", "sum", "mean", "prod", "max", "min",
                 "amax", "amin", "argmax", "argmin", "var", "std", "logsumexp", "softmax",
                 "log_softmax", "flatten", "unflatten", "squeeze", "unsqueeze", "transpose",
                 "split", "chunk", "unbind", "flip", "gather", "scatter_add", "index_select",
                 "masked_fill", "contiguous", "clone", "eq", "ne", "lt", "le", "gt", "ge",
                 "isnan", "isfinite", "mm", "bmm", "logical_not"):
        setattr(T, name, getattr(ops, name))
    T.subtract, T.multiply, T.divide = ops.sub, ops.mul, ops.div
    T.clip = ops.clamp
    for name in ("reshape", "view", "permute", "expand", "repeat"):
        setattr(T, name, _variadic(getattr(ops, name)))
    T.leaky_relu = ops.leaky_relu
    T.gelu = ops.gelu
    T.softplus = ops.softplus
    T.where = lambda self, condition, other: ops.where(condition, self, other)
    T.expand_as = lambda self, other: ops.expand(self, *other.shape)
    T.view_as = lambda self, other: ops.reshape(self, *other.shape)
    T.reshape_as = T.view_as
    T.type_as = lambda self, other: self.to(other.dtype)
    T.T = property(lambda self: ops.permute(self, *reversed(range(self.ndim))))
    T.mT = property(lambda self: ops.transpose(self, -2, -1))
    T.t = lambda self: ops.transpose(self, 0, 1) if self.ndim == 2 else self
    T.masked_fill_ = lambda self, mask, value: self.copy_(ops.masked_fill(self, mask, value))
    T.scatter_add_ = lambda self, dim, index, src: self.copy_(
        ops.scatter_add(self, dim, index, src))


_install()

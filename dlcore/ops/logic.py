"""Truth tests and triangular masks: ``isinf``, ``all``, ``any``, ``tril``, ``triu``."""

from __future__ import annotations

from typing import Any

from ..autograd import Function, device_work
from ..tensor import Tensor
from ._util import normalize_dim


def isinf(input: Tensor) -> Tensor:
    """Where ``input`` is +inf or -inf (a bool tensor)."""
    return Tensor._make(device_work(input.device, lambda: input.device.xp.isinf(input._data)),
                        input.device)


def _truth(input: Tensor, dim: int | None, keepdim: bool, fn: str) -> Tensor:
    xp = input.device.xp
    if dim is None:
        return Tensor._make(device_work(input.device, lambda: xp.asarray(
            getattr(xp, fn)(input._data))), input.device)
    axis = normalize_dim(dim, input.ndim, fn)
    return Tensor._make(device_work(input.device, lambda: getattr(xp, fn)(
        input._data, axis=axis, keepdims=keepdim)), input.device)


def all(input: Tensor, dim: int | None = None, keepdim: bool = False) -> Tensor:
    """Whether every element (along ``dim``) is true / non-zero: a bool tensor."""
    return _truth(input, dim, keepdim, "all")


def any(input: Tensor, dim: int | None = None, keepdim: bool = False) -> Tensor:
    """Whether some element (along ``dim``) is true / non-zero: a bool tensor."""
    return _truth(input, dim, keepdim, "any")


class Triangle(Function):
    """The lower (``upper=False``) or upper triangle of the last two dims, the rest zero;
    linear, so its gradient is the same triangle of ``g``."""

    def forward(self, x: Any, diagonal: int, upper: bool) -> Any:
        self.diagonal, self.upper = diagonal, upper
        xp = self.device.xp
        return xp.triu(x, diagonal) if upper else xp.tril(x, diagonal)

    def backward(self, g: Tensor) -> tuple:
        return (Triangle.apply(g, diagonal=self.diagonal, upper=self.upper),)


def _triangle(input: Tensor, diagonal: int, upper: bool, op: str) -> Tensor:
    if input.ndim < 2:
        raise RuntimeError(f"{op}: expected a tensor with at least 2 dims, got shape "
                           f"{tuple(input.shape)}")
    return Triangle.apply(input, diagonal=int(diagonal), upper=upper)


def tril(input: Tensor, diagonal: int = 0) -> Tensor:
    """The lower triangle (on and below ``diagonal``) of the last two dims.

    >>> dlcore.ones(2, 2).tril().tolist()
    [[1.0, 0.0], [1.0, 1.0]]
    """
    return _triangle(input, diagonal, False, "tril")


def triu(input: Tensor, diagonal: int = 0) -> Tensor:
    """The upper triangle (on and above ``diagonal``) of the last two dims."""
    return _triangle(input, diagonal, True, "triu")

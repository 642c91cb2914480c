"""Integer-style division: ``//`` (floor_divide) and ``%`` (remainder), Python's (and
PyTorch's) conventions: the quotient rounds toward minus infinity and the remainder takes the
sign of the divisor."""

from __future__ import annotations

from typing import Any

from ..autograd import Function
from ..tensor import Tensor
from ._util import as_tensor_like, promote_pair, sum_to


class FloorDivide(Function):
    """Piecewise constant in both operands: its gradient is zero almost everywhere, so it is
    recorded as non-differentiable (backward raises, as PyTorch's does)."""

    def forward(self, a: Any, b: Any) -> Any:
        return self.device.xp.floor_divide(a, b)


class Remainder(Function):
    """a - b * floor(a / b): gradient 1 in a, -floor(a / b) in b."""

    save_inputs = True

    def forward(self, a: Any, b: Any) -> Any:
        return self.device.xp.mod(a, b)

    def backward(self, g: Tensor) -> tuple:
        a, b = self.saved_tensors
        na, nb = self.needs_input_grad
        ga = sum_to(g, a.shape) if na else None
        gb = None
        if nb:
            quotient = Tensor._make(self.device.xp.floor_divide(a._data, b._data), self.device)
            gb = sum_to(-g * quotient, b.shape)
        return ga, gb


def _operands(input: Any, other: Any) -> tuple[Tensor, Tensor]:
    if isinstance(input, Tensor):
        return promote_pair(input, as_tensor_like(other, input))
    return promote_pair(as_tensor_like(input, other), other)


def floor_divide(input: Any, other: Any) -> Tensor:
    """``input // other``, rounded toward minus infinity (Python's and PyTorch's ``//``).

    >>> (dlcore.tensor([7, -7]) // 2).tolist()
    [3, -4]
    """
    a, b = _operands(input, other)
    return FloorDivide.apply(a, b)


def remainder(input: Any, other: Any) -> Tensor:
    """``input % other`` with the sign of ``other`` (Python's and PyTorch's ``%``).

    >>> (dlcore.tensor([7, -7]) % 3).tolist()
    [1, 2]
    """
    a, b = _operands(input, other)
    return Remainder.apply(a, b)

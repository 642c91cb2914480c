"""Matrix products (GEMMs through NumPy's BLAS or cuBLAS via CuPy)."""

from __future__ import annotations

from typing import Any

from ..autograd import Function
from ..tensor import Tensor
from ._util import low_precision, sum_to


class MatMul(Function):
    """``a @ b`` for operands of at least 2 dims, batch dims broadcast."""

    save_inputs = True

    def forward(self, a: Any, b: Any) -> Any:
        return a @ b

    def backward(self, g: Tensor) -> tuple:
        a, b = self.saved_tensors
        na, nb = self.needs_input_grad
        ga = sum_to(g @ b.mT, a.shape) if na else None
        gb = sum_to(a.mT @ g, b.shape) if nb else None
        return ga, gb


@low_precision
def matmul(input: Tensor, other: Tensor) -> Tensor:
    """Matrix product with PyTorch's rules for 1-D operands (a 1-D left operand is a row,
    a 1-D right operand a column, and the added dim is removed again).

    >>> (dlcore.ones(2, 3) @ dlcore.ones(3)).tolist()
    [3.0, 3.0]
    """
    if not isinstance(other, Tensor) or not isinstance(input, Tensor):
        raise TypeError("matmul: both operands must be tensors")
    if input.ndim == 0 or other.ndim == 0:
        raise RuntimeError(f"matmul: both arguments need at least 1 dim, got shapes "
                           f"{tuple(input.shape)} and {tuple(other.shape)}")
    if input.dtype != other.dtype:
        raise RuntimeError(f"matmul: expected both operands to have the same dtype, got "
                           f"{input.dtype} (shape {tuple(input.shape)}) and {other.dtype} "
                           f"(shape {tuple(other.shape)})")
    a, b = input, other
    squeeze_a = a.ndim == 1
    squeeze_b = b.ndim == 1
    if squeeze_a:
        a = a.unsqueeze(0)
    if squeeze_b:
        b = b.unsqueeze(1)
    if a.shape[-1] != b.shape[-2]:
        raise RuntimeError(f"matmul: shapes {tuple(input.shape)} and {tuple(other.shape)} "
                           f"cannot be multiplied ({a.shape[-1]} != {b.shape[-2]})")
    out = MatMul.apply(a, b)
    if squeeze_a:
        out = out.squeeze(-2)
    if squeeze_b:
        out = out.squeeze(-1)
    return out


def mm(input: Tensor, mat2: Tensor) -> Tensor:
    if input.ndim != 2 or mat2.ndim != 2:
        raise RuntimeError(f"mm: expected 2-D tensors, got shapes {tuple(input.shape)} and "
                           f"{tuple(mat2.shape)}")
    return matmul(input, mat2)


def bmm(input: Tensor, mat2: Tensor) -> Tensor:
    if input.ndim != 3 or mat2.ndim != 3 or input.shape[0] != mat2.shape[0]:
        raise RuntimeError(f"bmm: expected 3-D tensors with equal batch, got shapes "
                           f"{tuple(input.shape)} and {tuple(mat2.shape)}")
    return matmul(input, mat2)

"""Matrix products (GEMMs through NumPy's BLAS or cuBLAS via CuPy)."""

from __future__ import annotations

from typing import Any

from ..autograd import Function
from ..tensor import Tensor
from ._util import float32_op, gemm, low_precision, sum_to
from ..dtypes import is_floating


class MatMul(Function):
    """``a @ b`` for operands of at least 2 dims, batch dims broadcast."""

    save_inputs = True

    def forward(self, a: Any, b: Any) -> Any:
        return gemm(a, b)

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


class _EuclideanNorm(Function):
    """sqrt(sum x^2) over ``dims``; gradient x / norm, and 0 where the norm is 0 (PyTorch's
    choice: the subgradient of smallest size, never NaN)."""

    save_inputs = True
    save_output = True

    def forward(self, x: Any, dims: tuple[int, ...] | None, keepdim: bool) -> Any:
        xp = self.device.xp
        self.dims, self.keepdim = dims, keepdim
        return xp.sqrt((x * x).sum(axis=dims, keepdims=keepdim))

    def backward(self, g: Tensor) -> tuple:
        (x,) = self.saved_tensors
        norm = self.output()
        if not self.keepdim and self.dims is not None:
            shape = [1 if i in self.dims else s for i, s in enumerate(x.shape)]
            norm, g = norm.reshape(*shape), g.reshape(*shape)
        elif not self.keepdim:
            norm, g = norm.reshape(*([1] * x.ndim)), g.reshape(*([1] * x.ndim))
        zero = norm == 0
        safe = norm.masked_fill(zero, 1.0)
        return ((g * x / safe).masked_fill(zero.expand(*x.shape), 0.0),)


@float32_op
def vector_norm(x: Tensor, ord: float = 2, dim: Any = None, keepdim: bool = False) -> Tensor:
    """The ``ord``-norm of ``x`` over ``dim`` (all elements by default), PyTorch's
    ``linalg.vector_norm``: ``ord`` 2 (Euclidean), 1, inf, -inf, 0 (the count of non-zeros)
    or any other positive number.

    >>> dlcore.linalg.vector_norm(dlcore.tensor([3.0, 4.0])).item()
    5.0
    """
    if not is_floating(x.dtype):
        raise RuntimeError(f"vector_norm: expected a floating point tensor, got {x.dtype}")
    dims = None if dim is None else tuple(
        sorted({int(d) % max(x.ndim, 1) for d in ((dim,) if isinstance(dim, int) else dim)}))
    if ord == 2:
        return _EuclideanNorm.apply(x, dims=dims, keepdim=keepdim)
    a = x.abs()
    if ord == float("inf"):
        return a.amax(dim=() if dims is None else dims, keepdim=keepdim)
    if ord == float("-inf"):
        return a.amin(dim=() if dims is None else dims, keepdim=keepdim)
    if ord == 0:
        return (a != 0).to(x.dtype).sum(dim=dims, keepdim=keepdim)
    if ord == 1:
        return a.sum(dim=dims, keepdim=keepdim)
    if not ord > 0:
        raise RuntimeError(f"vector_norm: ord must be positive, 0 or +-inf, got {ord}")
    return (a ** ord).sum(dim=dims, keepdim=keepdim) ** (1.0 / ord)


def norm(x: Tensor, ord: Any = None, dim: Any = None, keepdim: bool = False) -> Tensor:
    """PyTorch's ``linalg.norm`` for vectors and the Frobenius norm of matrices (``ord``
    None or 'fro'); other matrix norms are not built (a clear error)."""
    if ord is None or ord == "fro":
        return vector_norm(x, 2, dim, keepdim)
    if isinstance(ord, str) or (dim is not None and not isinstance(dim, int) and len(dim) == 2):
        raise NotImplementedError(f"norm: matrix norm ord={ord!r} is not available in dlcore "
                                  "(vector norms and 'fro' are)")
    return vector_norm(x, ord, dim, keepdim)

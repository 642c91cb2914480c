"""Matrix products (GEMMs through NumPy's BLAS or cuBLAS via CuPy)."""

from __future__ import annotations

from typing import Any

import numpy as np

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


class _SingularValues(Function):
    """The singular values of the last two dims, descending (``linalg.svdvals``). Gradient
    ``U diag(g) V^T`` (d sigma_i = u_i^T dA v_i), exact where the singular values are distinct
    and nonzero-gapped; first order only."""

    def forward(self, x: Any) -> Any:
        u, s, vh = self.device.xp.linalg.svd(x, full_matrices=False)
        self.u, self.vh = u, vh
        return s

    def backward(self, g: Tensor) -> tuple:
        from ..autograd import is_grad_enabled

        if is_grad_enabled():
            raise RuntimeError("svdvals: double backward (create_graph=True) through singular "
                               "values is not supported")
        ga = (self.u * g._data[..., None, :]) @ self.vh
        return (Tensor._make(ga, self.device),)


def svdvals(x: Tensor) -> Tensor:
    """Singular values of the matrices in the last two dims of ``x``, descending
    (``torch.linalg.svdvals``), differentiable (first order).

    >>> dlcore.linalg.svdvals(dlcore.tensor([[3.0, 0.0], [0.0, -4.0]])).tolist()
    [4.0, 3.0]
    """
    if x.ndim < 2:
        raise RuntimeError(f"svdvals: expected a tensor of at least 2 dims, got shape "
                           f"{tuple(x.shape)}")
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"svdvals: expected a float32 or float64 tensor, got {x.dtype}")
    return _SingularValues.apply(x)


@float32_op
def matrix_norm(x: Tensor, ord: Any = "fro", dim: Any = (-2, -1), keepdim: bool = False) -> Tensor:
    """The ``ord`` matrix norm over the two dims ``dim`` (``torch.linalg.matrix_norm``):
    ``'fro'`` (Frobenius), ``'nuc'`` (sum of singular values), ``2``/``-2`` (largest and
    smallest singular value), ``1``/``-1`` (max/min column sum of ``|x|``), ``inf``/``-inf``
    (max/min row sum).

    >>> dlcore.linalg.matrix_norm(dlcore.tensor([[1.0, -2.0], [3.0, 4.0]]), ord=1).item()
    6.0
    """
    if not is_floating(x.dtype):
        raise RuntimeError(f"matrix_norm: expected a floating point tensor, got {x.dtype}")
    if x.ndim < 2:
        raise RuntimeError(f"matrix_norm: expected a tensor of at least 2 dims, got shape "
                           f"{tuple(x.shape)}")
    if isinstance(dim, int) or len(dim) != 2:
        raise RuntimeError(f"matrix_norm: dim must be a pair of dims, got {dim!r}")
    r, c = (int(d) % x.ndim for d in dim)
    if r == c:
        raise RuntimeError(f"matrix_norm: dims {dim} name the same dim twice")
    if ord == "fro":
        return vector_norm(x, 2, (r, c), keepdim)
    if ord in ("nuc", 2, -2):
        order = [d for d in range(x.ndim) if d not in (r, c)] + [r, c]
        moved = x.permute(*order) if order != list(range(x.ndim)) else x
        sv = svdvals(moved)
        out = sv.sum(-1) if ord == "nuc" else (sv[..., 0] if ord == 2 else sv[..., -1])
        if keepdim:
            for d in sorted((r, c)):
                out = out.unsqueeze(d)
        return out
    inf = float("inf")
    if ord in (1, -1, inf, -inf):
        # 1: the columns' sums (over rows r), then their max; inf: the rows' sums, then max
        summed, other = (r, c) if ord in (1, -1) else (c, r)
        sums = x.abs().sum(dim=summed, keepdim=True)
        out = sums.amax(dim=other, keepdim=True) if ord in (1, inf) else \
            sums.amin(dim=other, keepdim=True)
        return out if keepdim else out.squeeze((r, c) if r < c else (c, r))
    raise RuntimeError(f"matrix_norm: ord must be 'fro', 'nuc', 2, -2, 1, -1, inf or -inf, "
                       f"got {ord!r}")


def norm(x: Tensor, ord: Any = None, dim: Any = None, keepdim: bool = False) -> Tensor:
    """PyTorch's ``linalg.norm``: a vector norm (``dim`` an int, or a 1-D input), or a matrix
    norm (``dim`` a pair, or a 2-D input with ``ord`` given); ``ord=None`` is the 2-norm of
    the flattened input."""
    if dim is not None and not isinstance(dim, int) and len(dim) == 2:
        return matrix_norm(x, "fro" if ord is None else ord, tuple(dim), keepdim)
    if ord is None:
        return vector_norm(x, 2, dim, keepdim)
    if dim is None and x.ndim == 2:
        return matrix_norm(x, ord, (-2, -1), keepdim)
    if isinstance(ord, str):
        raise RuntimeError(f"norm: ord {ord!r} is a matrix norm; give a 2-D input or a pair of "
                           "dims")
    return vector_norm(x, ord, dim, keepdim)

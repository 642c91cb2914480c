"""Sorting: ``sort``, ``argsort``, ``topk`` (PyTorch's names and return types). Values come
from ``gather`` with the sorted indices, so their gradient is scattered back to where each
value came from; the indices are int64 and not differentiable."""

from __future__ import annotations

from collections import namedtuple

import numpy as np

from ..dtypes import bfloat16
from ..tensor import Tensor
from ._util import normalize_dim
from .index import gather

SortResult = namedtuple("SortResult", ["values", "indices"])


def _order(input: Tensor, dim: int, descending: bool, op: str) -> tuple[int, Tensor]:
    d = normalize_dim(dim, input.ndim, op)
    xp = input.device.xp
    data = input._data if input.ndim else input._data.reshape(1)
    # stable: equal values keep their order (PyTorch's stable=True); descending sorts the
    # negated keys, so ties still keep their original order
    signed = data.dtype.kind in "fi" or data.dtype == bfloat16
    keys = -data if descending and signed else data
    order = xp.argsort(keys, axis=d, kind="stable")
    if descending and not signed:  # bool/unsigned: flip an ascending order
        order = xp.flip(xp.argsort(data, axis=d, kind="stable"), axis=d)
    order = order.astype(np.int64).reshape(input.shape)
    return d, Tensor._make(order, input.device)


def sort(input: Tensor, dim: int = -1, descending: bool = False) -> SortResult:
    """``(values, indices)`` of ``input`` sorted along ``dim`` (stable).

    >>> dlcore.tensor([3.0, 1.0, 2.0]).sort().values.tolist()
    [1.0, 2.0, 3.0]
    """
    d, idx = _order(input, dim, descending, "sort")
    values = gather(input, d, idx) if input.ndim else input
    return SortResult(values, idx)


def argsort(input: Tensor, dim: int = -1, descending: bool = False) -> Tensor:
    """The int64 indices that sort ``input`` along ``dim`` (stable)."""
    return _order(input, dim, descending, "argsort")[1]


def topk(input: Tensor, k: int, dim: int = -1, largest: bool = True,
         sorted: bool = True) -> SortResult:
    """The ``k`` largest (or smallest) entries along ``dim`` and their indices, largest
    first (PyTorch's order; ``sorted`` is accepted: the result is always sorted).

    >>> dlcore.tensor([1.0, 5.0, 3.0]).topk(2).indices.tolist()
    [1, 2]
    """
    d = normalize_dim(dim, input.ndim, "topk")
    size = input.shape[d] if input.ndim else 1
    if not 0 <= k <= size:
        raise RuntimeError(f"topk: k ({k}) is out of range for dim {dim} of size {size} "
                           f"(shape {tuple(input.shape)})")
    _, idx = _order(input, d, largest, "topk")
    index = (slice(None),) * d + (slice(0, k),)
    idx = Tensor._make(input.device.xp.ascontiguousarray(idx._data[index]), input.device)
    return SortResult(gather(input, d, idx), idx)

"""Parameter: a Tensor that a Module registers as learnable."""

from __future__ import annotations

from typing import Any

from ..creation import as_tensor, empty
from ..tensor import Tensor


class Parameter(Tensor):
    """A leaf tensor with ``requires_grad=True`` (by default) that ``Module`` collects.

    ``Parameter(data)`` shares ``data``'s array (no copy), as ``torch.nn.Parameter`` does.
    """

    __slots__ = ()

    def __init__(self, data: Any = None, requires_grad: bool = True) -> None:
        if data is None:
            data = empty(0)
        if not isinstance(data, Tensor):
            data = as_tensor(data)
        self._share_leaf(data, requires_grad)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()

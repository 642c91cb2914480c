"""Parameter: a Tensor that a Module registers as learnable."""

from __future__ import annotations

from typing import Any

from ..tensor import Tensor


class Parameter(Tensor):
    """A leaf tensor with ``requires_grad=True`` (by default) that ``Module`` collects.

    ``Parameter(data)`` shares ``data``'s array (no copy), as ``torch.nn.Parameter`` does.
    """

    __slots__ = ()

    def __init__(self, data: Any = None, requires_grad: bool = True) -> None:
        if data is None:
            from ..creation import empty

            data = empty(0)
        if not isinstance(data, Tensor):
            from ..creation import as_tensor

            data = as_tensor(data)
        self.data = data.data
        self._device = data._device
        self._requires_grad = False
        self.grad = None
        self.grad_fn = None
        self._output_nr = 0
        self._accum = None
        self._version = data._version
        self._retains_grad = False
        if requires_grad:
            self.requires_grad_(True)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()

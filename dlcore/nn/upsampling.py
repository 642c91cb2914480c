"""Upsample: :func:`dlcore.nn.functional.interpolate` as a module, with PyTorch's
constructor arguments and repr (no parameters)."""

from __future__ import annotations

from collections.abc import Sequence

from ..ops.resample import interpolate
from ..tensor import Tensor
from .module import Module


class Upsample(Module):
    """Resize (N, C, H, W) inputs to ``size`` or by ``scale_factor`` (exactly one), with
    ``mode`` 'nearest' or 'bilinear' (``align_corners`` only with bilinear).

    >>> Upsample(scale_factor=2)(dlcore.ones(1, 1, 2, 2)).shape
    (1, 1, 4, 4)
    """

    def __init__(self, size: int | Sequence[int] | None = None,
                 scale_factor: float | Sequence[float] | None = None, mode: str = "nearest",
                 align_corners: bool | None = None) -> None:
        super().__init__()
        self.size = size
        # stored as floats, as PyTorch does (its repr shows scale_factor=2.0)
        if isinstance(scale_factor, Sequence):
            self.scale_factor: float | tuple[float, ...] | None = tuple(
                float(s) for s in scale_factor)
        else:
            self.scale_factor = float(scale_factor) if scale_factor is not None else None
        self.mode, self.align_corners = mode, align_corners

    def forward(self, input: Tensor) -> Tensor:
        return interpolate(input, self.size, self.scale_factor, self.mode, self.align_corners)

    def extra_repr(self) -> str:
        if self.scale_factor is not None:
            info = f"scale_factor={self.scale_factor!r}"
        else:
            info = f"size={self.size!r}"
        return info + f", mode={self.mode!r}"

"""Flatten and Unflatten: reshape layers for ``Sequential`` pipelines."""

from __future__ import annotations

from collections.abc import Sequence

from ..tensor import Tensor
from .module import Module


class Flatten(Module):
    """Merge dims ``start_dim..end_dim`` into one: (N, C, H, W) -> (N, C*H*W) by default."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, input: Tensor) -> Tensor:
        return input.flatten(self.start_dim, self.end_dim)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Unflatten(Module):
    """Split dim ``dim`` into ``unflattened_size``: (N, 12) -> (N, 3, 4) for (3, 4)."""

    def __init__(self, dim: int, unflattened_size: Sequence[int]) -> None:
        super().__init__()
        self.dim, self.unflattened_size = dim, tuple(unflattened_size)

    def forward(self, input: Tensor) -> Tensor:
        size = input.shape[self.dim] if -input.ndim <= self.dim < input.ndim else None
        known = 1
        for s in self.unflattened_size:
            known *= s if s != -1 else 1
        if size is None or (-1 not in self.unflattened_size and known != size):
            raise RuntimeError(f"unflatten: cannot split dim {self.dim} of input shape "
                               f"{tuple(input.shape)} into {self.unflattened_size}")
        return input.unflatten(self.dim, self.unflattened_size)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, unflattened_size={self.unflattened_size}"

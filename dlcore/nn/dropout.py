"""Dropout layers: element-wise (``Dropout``) and channel-wise (``Dropout2d``, with its
functional form :func:`dropout2d`, re-exported by :mod:`dlcore.nn.functional`).
Shape letters: N batch, C channels, H, W spatial."""

from __future__ import annotations

import warnings
from typing import Any

from ..autograd import device_work
from ..random import uniform_array
from ..tensor import Tensor
from . import functional as F  # NOTE: functional imports dropout2d from here; F is used
from .module import Module     # only at call time, so the cycle is harmless
from ..dtypes import is_floating


def dropout2d(input: Tensor, p: float = 0.5, training: bool = True,
              inplace: bool = False) -> Tensor:
    """Zero whole channels (``input[n, c]``) with probability ``p`` and scale the kept ones
    by ``1/(1-p)``; identity when not training. As in PyTorch, dims 0 and 1 are taken as
    (N, C) for any input of 2 or more dims: a 3-D input is read as (N, C, L) (channel-wise
    1-D dropout) with PyTorch's warning, and inputs other than 3-D or 4-D warn too.
    ``inplace`` is accepted for PyTorch code; the result is always a new tensor. The mask
    comes from the device's generator (``dlcore.manual_seed`` reproduces it).

    >>> dropout2d(dlcore.ones(2, 3, 4, 4), p=0.5, training=False).shape
    (2, 3, 4, 4)
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout2d: dropout probability has to be between 0 and 1, but got "
                         f"{p}")
    if input.ndim not in (3, 4):
        warnings.warn(f"dropout2d: Received a {input.ndim}-D input to dropout2d, which is "
                      f"deprecated (as in PyTorch); dropout2d expects (N, C, H, W) or "
                      f"(C, H, W) input", UserWarning, stacklevel=2)
    if input.ndim == 3:
        warnings.warn("dropout2d: Received a 3D input to dropout2d and assuming that "
                      "channel-wise 1D dropout behavior is desired - input is interpreted as "
                      "shape (N, C, L), where C is the channel dim (as in PyTorch)",
                      UserWarning, stacklevel=2)
    if not training or p == 0.0 or input.numel() == 0:
        return input
    if input.ndim < 2:
        raise RuntimeError(f"dropout2d: feature dropout requires at least 2 dimensions in the "
                           f"input, got shape {tuple(input.shape)}")
    if not is_floating(input.dtype):
        raise TypeError(f"dropout2d: expected a floating point tensor, got dtype {input.dtype}")
    if p == 1.0:
        return input * 0.0
    mask_shape = tuple(input.shape[:2]) + (1,) * (input.ndim - 2)
    def draw() -> Any:  # one unit of device work: a CUDA graph on emu replays it whole
        keep = uniform_array(mask_shape, 0.0, 1.0, input.dtype, input.device) < (1.0 - p)
        return keep.astype(input.dtype) * input.dtype.type(1.0 / (1.0 - p))
    return input * Tensor._make(device_work(input.device, draw), input.device)


class Dropout(Module):
    """Inverted dropout with probability ``p`` while training; identity in ``eval()``.
    Masks come from the device generator (``dlcore.manual_seed`` reproduces them)."""

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: probability has to be between 0 and 1, but got {p}")
        self.p, self.inplace = p, inplace

    def forward(self, input: Tensor) -> Tensor:
        return F.dropout(input, self.p, self.training, self.inplace)

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}"


class Dropout2d(Module):
    """Channel-wise dropout (see :func:`dropout2d`): each channel of an (N, C, H, W) input is
    zeroed with probability ``p`` while training, the rest scaled by ``1/(1-p)``."""

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout2d: probability has to be between 0 and 1, but got {p}")
        self.p, self.inplace = p, inplace

    def forward(self, input: Tensor) -> Tensor:
        return dropout2d(input, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}"

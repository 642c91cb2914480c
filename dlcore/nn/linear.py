"""Linear layers: Identity, Linear, Bilinear (PyTorch's parameter names and default
initialisation, so checkpoints map one to one)."""

from __future__ import annotations

import math
from typing import Any

from ..creation import empty
from ..device import Device
from ..dtypes import DTypeLike
from ..tensor import Tensor
from . import functional as F
from . import init
from .module import Module
from .parameter import Parameter


class Identity(Module):
    """Returns its input unchanged (arguments are accepted and ignored, as in PyTorch), a
    placeholder when swapping a layer out."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def forward(self, input: Tensor) -> Tensor:
        return input


class Linear(Module):
    """``y = x @ weight.T + bias`` with weight (out_features, in_features).

    Initialised as PyTorch does: weight by ``kaiming_uniform_(a=sqrt(5))``, i.e.
    U(-1/sqrt(in), 1/sqrt(in)), and bias from the same range.

    >>> Linear(3, 2)(dlcore.ones(4, 3)).shape
    (4, 2)
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 device: str | Device | None = None, dtype: DTypeLike = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(empty(out_features, in_features, device=device, dtype=dtype))
        if bias:
            self.bias = Parameter(empty(out_features, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init._default_layer_init_(self.weight, self.bias)

    def forward(self, input: Tensor) -> Tensor:
        return F.linear(input, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


class Bilinear(Module):
    """``y[o] = x1^T weight[o] x2 + bias[o]`` with weight (out, in1, in2); inputs of shape
    (..., in1) and (..., in2). Initialised from U(-1/sqrt(in1), 1/sqrt(in1)) like PyTorch."""

    def __init__(self, in1_features: int, in2_features: int, out_features: int,
                 bias: bool = True, device: str | Device | None = None,
                 dtype: DTypeLike = None) -> None:
        super().__init__()
        self.in1_features, self.in2_features = in1_features, in2_features
        self.out_features = out_features
        self.weight = Parameter(empty(out_features, in1_features, in2_features, device=device,
                                      dtype=dtype))
        if bias:
            self.bias = Parameter(empty(out_features, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.weight.shape[1])
        init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            init.uniform_(self.bias, -bound, bound)

    def forward(self, input1: Tensor, input2: Tensor) -> Tensor:
        i1, i2, out = self.in1_features, self.in2_features, self.out_features
        if input1.shape[-1:] != (i1,) or input2.shape[-1:] != (i2,) or \
                input1.shape[:-1] != input2.shape[:-1]:
            raise RuntimeError(f"bilinear: inputs of shapes {tuple(input1.shape)} and "
                               f"{tuple(input2.shape)} do not match (..., {i1}) and (..., {i2})")
        lead = input1.shape[:-1]
        x1 = input1.reshape(-1, i1)
        x2 = input2.reshape(-1, i2)
        # (N, in1) @ (in1, out*in2) -> (N, out, in2), then contract in2 with x2
        w = self.weight.permute(1, 0, 2).reshape(i1, out * i2)
        y = ((x1 @ w).reshape(-1, out, i2) * x2.unsqueeze(1)).sum(-1)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, out)

    def extra_repr(self) -> str:
        return (f"in1_features={self.in1_features}, in2_features={self.in2_features}, "
                f"out_features={self.out_features}, bias={self.bias is not None}")

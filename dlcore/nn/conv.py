"""Convolution layers: Conv1d, Conv2d, ConvTranspose2d with PyTorch's parameter names,
shapes and default initialisation, so checkpoints map one to one.

Initialisation (PyTorch's ``_ConvNd.reset_parameters``): weight by
``kaiming_uniform_(a=sqrt(5))``, i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and bias from the
same range, where fan_in = weight.shape[1] * prod(kernel). For ConvTranspose2d the weight is
(in, out/groups, kH, kW), so fan_in is (out/groups) * prod(kernel), exactly as PyTorch
computes it.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..creation import empty
from ..device import Device
from ..dtypes import DTypeLike
from ..ops.conv import conv1d, conv2d, conv_transpose2d
from ..tensor import Tensor
from . import init
from .module import Module
from .parameter import Parameter


# A size per spatial dim: one int for all of them, or one int each (PyTorch's _size_2_t).
Sizes = int | Sequence[int]
# Padding: sizes, or "valid" (none) or "same" (the output keeps the input's size).
Padding = Sizes | str


def _tuple(value: Sizes, n: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n
    return tuple(int(v) for v in value)


class _ConvNd(Module):
    """Shared parameters, initialisation and repr of the convolution layers."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, ...],
                 stride: tuple[int, ...], padding: Padding, dilation: tuple[int, ...],
                 groups: int, bias: bool, padding_mode: str, transposed: bool,
                 output_padding: tuple[int, ...], device: str | Device | None,
                 dtype: DTypeLike) -> None:
        super().__init__()
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(f"{type(self).__name__}: in_channels ({in_channels}) and "
                             f"out_channels ({out_channels}) must be divisible by groups "
                             f"({groups})")
        if padding_mode != "zeros":
            raise ValueError(f"{type(self).__name__}: only padding_mode='zeros' is supported, "
                             f"got {padding_mode!r}")
        if isinstance(padding, str) and padding not in ("valid", "same"):
            raise ValueError(f"{type(self).__name__}: padding must be 'valid', 'same' or "
                             f"ints, got {padding!r}")
        if padding == "same" and any(s != 1 for s in stride):
            raise ValueError(f"{type(self).__name__}: padding='same' is not supported for "
                             f"strided convolutions (stride={stride})")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.dilation = kernel_size, stride, dilation
        self.padding = padding if isinstance(padding, str) else _tuple(padding,
                                                                       len(kernel_size))
        self.output_padding, self.groups = output_padding, groups
        self.transposed, self.padding_mode = transposed, padding_mode
        shape = ((in_channels, out_channels // groups) if transposed
                 else (out_channels, in_channels // groups)) + kernel_size
        self.weight = Parameter(empty(*shape, device=device, dtype=dtype))
        if bias:
            self.bias = Parameter(empty(out_channels, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init._default_layer_init_(self.weight, self.bias)

    def extra_repr(self) -> str:
        n = len(self.kernel_size)
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0,) * n:
            s += f", padding={self.padding!r}" if isinstance(self.padding, str) else \
                f", padding={self.padding}"
        if self.dilation != (1,) * n:
            s += f", dilation={self.dilation}"
        if self.output_padding != (0,) * n:
            s += f", output_padding={self.output_padding}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s


class Conv1d(_ConvNd):
    """1-D convolution over (N, C, L); weight (out, in/groups, k).

    >>> Conv1d(2, 4, 3)(dlcore.ones(1, 2, 5)).shape
    (1, 4, 3)
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Sizes,
                 stride: Sizes = 1, padding: Padding = 0, dilation: Sizes = 1, groups: int = 1,
                 bias: bool = True, padding_mode: str = "zeros", device: str | Device | None = None,
                 dtype: DTypeLike = None) -> None:
        super().__init__(in_channels, out_channels, _tuple(kernel_size, 1), _tuple(stride, 1),
                         padding, _tuple(dilation, 1), groups, bias, padding_mode, False, (0,),
                         device, dtype)

    def forward(self, input: Tensor) -> Tensor:
        return conv1d(input, self.weight, self.bias, self.stride, self.padding, self.dilation,
                      self.groups)


class Conv2d(_ConvNd):
    """2-D convolution over (N, C, H, W); weight (out, in/groups, kH, kW).

    >>> Conv2d(3, 8, 3, padding=1)(dlcore.ones(2, 3, 5, 5)).shape
    (2, 8, 5, 5)
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Sizes,
                 stride: Sizes = 1, padding: Padding = 0, dilation: Sizes = 1, groups: int = 1,
                 bias: bool = True, padding_mode: str = "zeros", device: str | Device | None = None,
                 dtype: DTypeLike = None) -> None:
        super().__init__(in_channels, out_channels, _tuple(kernel_size, 2), _tuple(stride, 2),
                         padding, _tuple(dilation, 2), groups, bias, padding_mode, False,
                         (0, 0), device, dtype)

    def forward(self, input: Tensor) -> Tensor:
        return conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation,
                      self.groups)


class ConvTranspose2d(_ConvNd):
    """Transposed 2-D convolution; weight (in, out/groups, kH, kW).

    >>> ConvTranspose2d(4, 2, 2, stride=2)(dlcore.ones(1, 4, 3, 3)).shape
    (1, 2, 6, 6)
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Sizes,
                 stride: Sizes = 1, padding: Sizes = 0, output_padding: Sizes = 0,
                 groups: int = 1, bias: bool = True, dilation: Sizes = 1,
                 padding_mode: str = "zeros", device: str | Device | None = None,
                 dtype: DTypeLike = None) -> None:
        if isinstance(padding, str):
            raise ValueError(f"ConvTranspose2d: padding must be ints, got {padding!r}")
        super().__init__(in_channels, out_channels, _tuple(kernel_size, 2), _tuple(stride, 2),
                         padding, _tuple(dilation, 2), groups, bias, padding_mode, True,
                         _tuple(output_padding, 2), device, dtype)

    def forward(self, input: Tensor) -> Tensor:
        return conv_transpose2d(input, self.weight, self.bias, self.stride, self.padding,
                                self.output_padding, self.groups, self.dilation)

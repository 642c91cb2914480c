"""Convolutions: conv2d, conv1d (through the 2-D path) and conv_transpose2d, NCHW.

Shapes: x (N, C, H, W), w (O, C/G, kH, kW), y (N, O, OH, OW), G groups.

A kernel family (:class:`dlcore.kernels.KernelFamily`): the CUDA kernels
(``dlcore/ops/conv_cuda.py`` picks among cuBLAS for 1x1, the tensor-core kernels of
``kernels/conv2d_tc.cu`` and the SIMT ones of ``kernels/conv2d.cu``) and the CPU path
(:mod:`dlcore.ops.conv_cpu`) provide the same array-level functions, arrays in and arrays out,
NCHW, every argument already validated here and normalised to int pairs (``stride``,
``padding``, ``dilation``; symmetric padding), the output size computed here once
(:func:`conv2d_out_size`). The output grid is the one of ``gy``/``y``: for conv_transpose2d
with output_padding, x has trailing rows/cols that no window reads (backward_data leaves zeros
there)::

    conv2d_forward(device, x, w, out_hw, stride, padding, dilation, groups, bias=None) -> y
    conv2d_backward_data(device, gy, w, x_shape, stride, padding, dilation, groups) -> gx
    conv2d_backward_weight(device, x, gy, w_shape, stride, padding, dilation, groups) -> gw

Three Function classes wrap them, and each one's gradient is written with the other two
(Chainer's deconvolution design), so first and second derivatives come from the same three
primitives. conv_transpose2d *is* the backward-data Function. conv2d's bias goes into the
forward primitive (the kernels add it in their epilogue, no extra pass over y);
conv_transpose2d's is a broadcast add. Asymmetric "same" padding pads the input explicitly
first.
"""

from __future__ import annotations

from typing import Any

from ..autograd import Function, is_grad_enabled
from ..kernels import KernelFamily
from ..kernels.family import FLOAT_DTYPES_BF16
from ..tensor import Tensor
from . import conv_cpu, conv_cuda, conv_gemm_cuda
from ._check import forward_backward, kwargs_case
from ._util import low_precision
from .shape import pad as pad_op
from ..dtypes import is_floating

Pair = tuple[int, int]

CONV2D = KernelFamily("conv2d", conv_gemm_cuda.SOURCE, cpu=conv_cpu, kernel=conv_cuda,
                      kernel_dtypes=conv_cuda.KERNEL_DTYPES, cpu_dtypes=FLOAT_DTYPES_BF16)


def conv2d_out_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Output length of a convolution along one dim (PyTorch's formula)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


class Conv2d(Function):
    """y = conv2d(x, w) (+ b: inputs (x, w) or (x, w, b); the kernels add the bias in their
    epilogue); gradients are ConvBackwardData / ConvBackwardWeight nodes and a sum for b."""

    save_inputs = True
    columns: Any = None  # the cpu forward's column matrix, for the weight gradient

    def _free(self) -> None:
        super()._free()
        self.columns = None

    def forward(self, x: Any, w: Any, b: Any = None, *, args: tuple) -> Any:
        self.args = args  # (stride, padding, dilation, groups)
        stride, padding, dilation, _ = args
        out_hw = tuple(conv2d_out_size(x.shape[2 + i], w.shape[2 + i], stride[i], padding[i],
                                       dilation[i]) for i in range(2))
        impl = CONV2D.select(self.device, x.dtype, "conv2d")
        if impl is conv_cpu and is_grad_enabled():
            # the cpu forward's column matrix where the weight gradient can reuse it
            # (conv_cpu.SAVED_COLUMNS_MAX_BYTES); dropped with the node
            kept: list = []
            y = impl.conv2d_forward(self.device, x, w, out_hw, *args, bias=b,
                                    keep_columns=kept)
            self.columns = kept[0] if kept else None
            return y
        return impl.conv2d_forward(self.device, x, w, out_hw, *args, bias=b)

    def backward(self, gy: Tensor) -> tuple:
        x, w = self.saved_tensors[:2]
        nx, nw = self.needs_input_grad[:2]
        gx = ConvBackwardData.apply(gy, w, x_shape=x.shape, args=self.args) if nx else None
        gw = (ConvBackwardWeight.apply(x, gy, w_shape=w.shape, args=self.args,
                                       columns=self.columns) if nw else None)
        if len(self.needs_input_grad) == 2:
            return gx, gw
        gb = gy.sum(dim=(0, 2, 3)) if self.needs_input_grad[2] else None
        return gx, gw, gb


class ConvBackwardData(Function):
    """gx = conv2d_backward_data(gy, w): the adjoint of conv2d in x, bilinear in (gy, w)."""

    save_inputs = True

    def forward(self, gy: Any, w: Any, x_shape: tuple, args: tuple) -> Any:
        self.args = args
        impl = CONV2D.select(self.device, gy.dtype, "conv2d backward")
        return impl.conv2d_backward_data(self.device, gy, w, x_shape, *args)

    def backward(self, ggx: Tensor) -> tuple:
        gy, w = self.saved_tensors
        n_gy, n_w = self.needs_input_grad
        g_gy = _crop_to(Conv2d.apply(ggx, w, args=self.args), gy.shape) if n_gy else None
        g_w = ConvBackwardWeight.apply(ggx, gy, w_shape=w.shape, args=self.args) if n_w else None
        return g_gy, g_w


class ConvBackwardWeight(Function):
    """gw = conv2d_backward_weight(x, gy): the adjoint of conv2d in w, bilinear in (x, gy)."""

    save_inputs = True

    def forward(self, x: Any, gy: Any, w_shape: tuple, args: tuple,
                columns: Any = None) -> Any:
        self.args = args
        impl = CONV2D.select(self.device, x.dtype, "conv2d backward")
        if columns is not None and impl is conv_cpu:
            return impl.conv2d_backward_weight(self.device, x, gy, w_shape, *args,
                                               columns=columns)
        return impl.conv2d_backward_weight(self.device, x, gy, w_shape, *args)

    def backward(self, ggw: Tensor) -> tuple:
        x, gy = self.saved_tensors
        n_x, n_gy = self.needs_input_grad
        g_x = ConvBackwardData.apply(gy, ggw, x_shape=x.shape, args=self.args) if n_x else None
        g_gy = _crop_to(Conv2d.apply(x, ggw, args=self.args), gy.shape) if n_gy else None
        return g_x, g_gy


def _crop_to(y: Tensor, shape: tuple) -> Tensor:
    """Drop the trailing rows/cols a forward convolution produces for the extra input rows
    that conv_transpose2d's output_padding adds (no gy position reads them)."""
    if tuple(y.shape) == tuple(shape):
        return y
    return y[:, :, :shape[2], :shape[3]]


# ---- argument checks (once, at the public boundary) ---------------------------------------

def _pair(value: Any, name: str, op: str, minimum: int) -> Pair:
    pair: tuple[int, ...]
    if isinstance(value, int):
        pair = (value, value)
    else:
        pair = tuple(int(v) for v in value)
        if len(pair) == 1:
            pair = (pair[0], pair[0])
    if len(pair) != 2 or min(pair) < minimum:
        raise ValueError(f"{op}: {name} must be an int or a pair of ints >= {minimum}, "
                         f"got {value!r}")
    return pair[0], pair[1]


def _batched(input: Tensor, op: str, spatial: int) -> tuple[Tensor, bool]:
    """Accept an unbatched input (C, *spatial) as PyTorch does: add N=1, remember it."""
    if input.ndim == spatial + 1:
        return input.unsqueeze(0), True
    if input.ndim != spatial + 2:
        raise ValueError(f"{op}: expected a {spatial + 1}-D (unbatched) or {spatial + 2}-D "
                         f"(batched) input, got shape {tuple(input.shape)}")
    return input, False


def _check_float(input: Tensor, weight: Tensor, bias: Tensor | None, op: str) -> None:
    """Floating point operands of one dtype: PyTorch refuses to mix them (a float64 batch
    into a float32 layer is a bug to report, not to paper over with a silent cast)."""
    if not is_floating(input.dtype) or not is_floating(weight.dtype):
        raise TypeError(f"{op}: expected floating point input and weight, got {input.dtype} "
                        f"and {weight.dtype}")
    if input.dtype != weight.dtype or (bias is not None and bias.dtype != weight.dtype):
        bias_part = "" if bias is None else f", bias {bias.dtype}"
        raise RuntimeError(f"{op}: input type ({input.dtype}) and weight type "
                           f"({weight.dtype}) should be the same (input {input.dtype}, "
                           f"weight {weight.dtype}{bias_part}); cast the input with "
                           f".to({weight.dtype}) or the module with .to({input.dtype})")


def _same_padding(kernel: Pair, dilation: Pair) -> tuple[Pair, Pair]:
    """PyTorch's "same": total d*(k-1) per dim, the odd extra on the bottom/right."""
    total = (dilation[0] * (kernel[0] - 1), dilation[1] * (kernel[1] - 1))
    left = (total[0] // 2, total[1] // 2)
    return left, (total[0] - 2 * left[0], total[1] - 2 * left[1])


def _add_bias(y: Tensor, bias: Tensor | None, channels: int, op: str) -> Tensor:
    if bias is None:
        return y
    if tuple(bias.shape) != (channels,):
        raise ValueError(f"{op}: bias must have shape ({channels},), got {tuple(bias.shape)}")
    return y + bias.reshape(1, channels, 1, 1)


def _check_conv_shapes(x: Tensor, w: Tensor, groups: int, op: str) -> None:
    if w.ndim != 4:
        raise ValueError(f"{op}: weight must be 4-D (out_channels, in_channels/groups, kH, kW),"
                         f" got shape {tuple(w.shape)}")
    if groups < 1:
        raise ValueError(f"{op}: groups must be a positive int, got {groups}")
    c, o = x.shape[1], w.shape[0]
    if c % groups or o % groups:
        raise ValueError(f"{op}: in_channels ({c}) and out_channels ({o}) must both be "
                         f"divisible by groups ({groups}); input {tuple(x.shape)}, weight "
                         f"{tuple(w.shape)}")
    if w.shape[1] != c // groups:
        raise ValueError(f"{op}: weight {tuple(w.shape)} expects {w.shape[1] * groups} input "
                         f"channels with groups={groups}, but input {tuple(x.shape)} has {c}")


def _conv2d_nchw(x: Tensor, weight: Tensor, bias: Tensor | None, stride: Any, padding: Any,
                 dilation: Any, groups: int, op: str) -> Tensor:
    """Validate, resolve padding (int, pair, "valid", "same") and run Conv2d on 4-D x."""
    _check_conv_shapes(x, weight, groups, op)
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"{op}: bias must have shape ({weight.shape[0]},), got "
                         f"{tuple(bias.shape)}")
    stride = _pair(stride, "stride", op, 1)
    dilation = _pair(dilation, "dilation", op, 1)
    kernel = (weight.shape[2], weight.shape[3])
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        elif padding == "same":
            if stride != (1, 1):
                raise ValueError(f"{op}: padding='same' is not supported for strided "
                                 f"convolutions (stride={stride})")
            padding, extra = _same_padding(kernel, dilation)
            if extra != (0, 0):
                x = pad_op(x, (0, extra[1], 0, extra[0]))
        else:
            raise ValueError(f"{op}: padding must be an int, a pair, 'valid' or 'same', "
                             f"got {padding!r}")
    padding = _pair(padding, "padding", op, 0)
    for dim, size in enumerate(x.shape[2:]):
        span = dilation[dim] * (kernel[dim] - 1) + 1
        if size + 2 * padding[dim] < span:
            raise ValueError(f"{op}: kernel size {kernel} (dilated extent {span} in dim "
                             f"{dim + 2}) is larger than the padded input: input "
                             f"{tuple(x.shape)}, padding {padding}")
    args = (stride, padding, dilation, groups)
    if bias is None:
        return Conv2d.apply(x, weight, args=args)
    return Conv2d.apply(x, weight, bias, args=args)


# ---- public functions ---------------------------------------------------------------------

@low_precision
def conv2d(input: Tensor, weight: Tensor, bias: Tensor | None = None,
           stride: Any = 1, padding: Any = 0, dilation: Any = 1, groups: int = 1) -> Tensor:
    """2-D cross-correlation over an NCHW input, PyTorch's ``F.conv2d``.

    ``weight`` is (C_out, C_in/groups, kH, kW); ``padding`` an int, a pair, ``"valid"`` or
    ``"same"`` (stride 1 only). A 3-D input (C, H, W) is treated as a batch of one.

    >>> x = dlcore.ones(1, 1, 3, 3)
    >>> conv2d(x, dlcore.ones(1, 1, 2, 2)).tolist()
    [[[[4.0, 4.0], [4.0, 4.0]]]]
    """
    x, unbatched = _batched(input, "conv2d", 2)
    _check_float(x, weight, bias, "conv2d")
    y = _conv2d_nchw(x, weight, bias, stride, padding, dilation, groups, "conv2d")
    return y.squeeze(0) if unbatched else y


@low_precision
def conv1d(input: Tensor, weight: Tensor, bias: Tensor | None = None,
           stride: Any = 1, padding: Any = 0, dilation: Any = 1, groups: int = 1) -> Tensor:
    """1-D cross-correlation over (N, C, L), PyTorch's ``F.conv1d``: the 2-D path with a
    height of one (weight (C_out, C_in/groups, k)).

    >>> conv1d(dlcore.ones(1, 1, 4), dlcore.ones(1, 1, 2)).tolist()
    [[[2.0, 2.0, 2.0]]]
    """
    x, unbatched = _batched(input, "conv1d", 1)
    _check_float(x, weight, bias, "conv1d")
    if weight.ndim != 3:
        raise ValueError(f"conv1d: weight must be 3-D (out_channels, in_channels/groups, k), "
                         f"got shape {tuple(weight.shape)}")
    if not isinstance(padding, str):
        padding = (0, _single(padding, "padding"))
    y = _conv2d_nchw(x.unsqueeze(2), weight.unsqueeze(2), bias, (1, _single(stride, "stride")),
                     padding, (1, _single(dilation, "dilation")), groups, "conv1d").squeeze(2)
    return y.squeeze(0) if unbatched else y


def _single(value: Any, name: str) -> int:
    if isinstance(value, int):
        return value
    if len(value) != 1:
        raise ValueError(f"conv1d: {name} must be an int or a 1-tuple, got {value!r}")
    return int(value[0])


@low_precision
def conv_transpose2d(input: Tensor, weight: Tensor, bias: Tensor | None = None,
                     stride: Any = 1, padding: Any = 0, output_padding: Any = 0,
                     groups: int = 1, dilation: Any = 1) -> Tensor:
    """Transposed 2-D convolution, PyTorch's ``F.conv_transpose2d``: the gradient of conv2d
    with respect to its input. ``weight`` is (C_in, C_out/groups, kH, kW); the output size
    is (H - 1)*s - 2p + d*(k - 1) + output_padding + 1.

    >>> conv_transpose2d(dlcore.ones(1, 1, 2, 2), dlcore.ones(1, 1, 2, 2)).tolist()
    [[[[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]]]
    """
    op = "conv_transpose2d"
    x, unbatched = _batched(input, op, 2)
    _check_float(x, weight, bias, op)
    if weight.ndim != 4:
        raise ValueError(f"{op}: weight must be 4-D (in_channels, out_channels/groups, kH, kW),"
                         f" got shape {tuple(weight.shape)}")
    if groups < 1 or x.shape[1] % groups or weight.shape[0] != x.shape[1]:
        raise ValueError(f"{op}: weight {tuple(weight.shape)} needs in_channels == "
                         f"weight.shape[0] divisible by groups ({groups}); input "
                         f"{tuple(x.shape)}")
    stride = _pair(stride, "stride", op, 1)
    padding = _pair(padding, "padding", op, 0)
    dilation = _pair(dilation, "dilation", op, 1)
    output_padding = _pair(output_padding, "output_padding", op, 0)
    if output_padding[0] >= max(stride[0], dilation[0]) or \
            output_padding[1] >= max(stride[1], dilation[1]):
        raise ValueError(f"{op}: output_padding {output_padding} must be smaller than stride "
                         f"{stride} or dilation {dilation}")
    kernel = weight.shape[2:]
    out_hw = [(x.shape[2 + i] - 1) * stride[i] - 2 * padding[i]
              + dilation[i] * (kernel[i] - 1) + output_padding[i] + 1 for i in range(2)]
    if min(out_hw) < 1:
        raise ValueError(f"{op}: output size {tuple(out_hw)} is too small for input "
                         f"{tuple(x.shape)}, weight {tuple(weight.shape)}, padding {padding}")
    c_out = weight.shape[1] * groups
    y_shape = (x.shape[0], c_out, *out_hw)
    y = ConvBackwardData.apply(x, weight, x_shape=y_shape,
                               args=(stride, padding, dilation, groups))
    y = _add_bias(y, bias, c_out, op)
    return y.squeeze(0) if unbatched else y


# ---- dlcore check cases: the kernels against the cpu path ---------------------------------

def _check_conv2d(device: Any, stride: int, padding: int, dilation: int,
                  groups: int) -> dict:
    return forward_backward(device, 0, [(2, 4, 9, 9), (6, 4 // groups, 3, 3), (6,)],
                            lambda x, w, b: conv2d(x, w, b, stride, padding, dilation, groups),
                            ["input", "weight", "bias"])


CONV2D.check("conv2d 3x3 pad 1")(kwargs_case(_check_conv2d, stride=1, padding=1, dilation=1,
                                             groups=1))
CONV2D.check("conv2d stride 2 dilation 2 groups 2")(
    kwargs_case(_check_conv2d, stride=2, padding=2, dilation=2, groups=2))


def _check_conv2d_float16(device: Any) -> dict:
    # float16 through the FP16 tensor-core kernels on cuda/emu, float32 rounded once on the
    # cpu: both round each stored result once from float32 sums taken in different orders,
    # so they differ by at most one float16 ulp (2^-10 relative) where the float32 sums
    # straddle a rounding boundary. No bias: the cpu path adds it after rounding the product.
    return forward_backward(device, 0, [(2, 4, 9, 9), (6, 4, 3, 3)],
                            lambda x, w: conv2d(x.half(), w.half(), None, 1, 1).float(),
                            ["input", "weight"])


# Against the emulator (--reference emu): the same kernel, but inside each mma the tensor
# cores sum in the hardware's order (the emulator's wmma sums in k order), so a float16 result
# may round the other way: one float16 ulp of the output's scale, 2^-10 (an H200 gave 5.1e-4).
CONV2D.check("conv2d 3x3 pad 1 float16", rtol=2.0 ** -10, atol=1e-5, emu_rtol=2.0 ** -10)(
    _check_conv2d_float16)


@CONV2D.check("conv_transpose2d 4x4 stride 2")
def _check_conv_transpose2d(device: Any) -> dict:
    return forward_backward(device, 1, [(2, 4, 5, 5), (4, 3, 4, 4), (3,)],
                            lambda x, w, b: conv_transpose2d(x, w, b, stride=2, padding=1),
                            ["input", "weight", "bias"])

"""``dlcore.nn.functional`` (``F``): stateless layer functions with PyTorch's names and
arguments. Layers in :mod:`dlcore.nn` are thin stateful wrappers around these.

Inputs are validated here, once, with messages naming the function, the argument and the
shapes; the Functions in :mod:`dlcore.ops.nn_ops` behind them assume valid input.
Shape letters: N batch, C channels, G groups.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..autograd import device_work, no_grad
from ..device import host_checks
from ..ops import gelu, pad, sigmoid, softplus, tanh  # noqa: F401
from ..ops import leaky_relu as _leaky_relu
from ..ops import log_softmax as _log_softmax
from ..ops import relu as _relu
from ..ops import softmax as _softmax
from ..ops.conv import conv1d, conv2d, conv_transpose2d  # noqa: F401
from ..ops.loss import (binary_cross_entropy, binary_cross_entropy_with_logits,  # noqa: F401
                        cross_entropy, huber_loss, kl_div, l1_loss, mse_loss, nll_loss,
                        smooth_l1_loss)
from ..ops._util import float32_op, low_precision
from ..ops.nn_ops import Elu, EmbeddingFunction, LinearFunction, NormAffine, Silu
from ..ops.pool import (adaptive_avg_pool2d, adaptive_max_pool2d, avg_pool2d,  # noqa: F401
                        max_pool2d)
from ..ops.resample import interpolate, pixel_shuffle, pixel_unshuffle  # noqa: F401
from ..random import uniform_array
from ..tensor import Tensor
from .dropout import dropout2d  # noqa: F401  (dropout.py uses F only at call time)
from .attention import scaled_dot_product_attention  # noqa: F401  (same: F at call time)
from ..dtypes import is_floating


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


# ---- linear --------------------------------------------------------------------------
@low_precision
def linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``input @ weight.T + bias`` over the last dim of ``input``: (..., in) -> (..., out).

    >>> linear(dlcore.ones(2, 3), dlcore.ones(4, 3)).shape
    (2, 4)
    """
    if weight.ndim != 2:
        raise RuntimeError(f"linear: weight must be 2-D (out_features, in_features), got shape "
                           f"{_shape(weight)}")
    if input.ndim == 0 or input.shape[-1] != weight.shape[1]:
        feats = input.shape[-1] if input.ndim else 0
        raise RuntimeError(f"linear: input has {feats} features (shape {_shape(input)}) but "
                           f"weight expects {weight.shape[1]}")
    if input.dtype != weight.dtype:
        raise RuntimeError(f"linear: input dtype {input.dtype} does not match weight dtype "
                           f"{weight.dtype}")
    if bias is None:
        return LinearFunction.apply(input, weight)
    if _shape(bias) != (weight.shape[0],) or bias.dtype != weight.dtype:
        raise RuntimeError(f"linear: bias must have shape ({weight.shape[0]},) and dtype "
                           f"{weight.dtype}, got shape {_shape(bias)} and dtype {bias.dtype}")
    return LinearFunction.apply(input, weight, bias)


# ---- activations ---------------------------------------------------------------------
def _float_input(x: Tensor, op: str) -> Tensor:
    if not is_floating(x.dtype):
        raise TypeError(f"{op}: expected a floating point tensor, got dtype {x.dtype}")
    return x


def _in_place(input: Tensor, op: str, fn: Any) -> Tensor:
    """PyTorch's ``inplace=True``: ``fn(input)`` written into ``input``'s storage, ``input``
    returned. It is an in-place op like ``add_`` (dlcore.Tensor._inplace_binary): refused on
    a leaf that requires grad or an expanded view, version-counted, and under autograd the
    op gets a snapshot of the input to save, so backward never reads clobbered values (the
    snapshot costs what PyTorch's in-place relu saves only for ops that need their input)."""
    return input._inplace_binary(None, op, lambda a, _: fn(a))


def relu(input: Tensor, inplace: bool = False) -> Tensor:
    """``max(x, 0)``; ``inplace=True`` writes the result into ``input`` and returns it.

    >>> x = dlcore.tensor([-1.0, 2.0]); _ = relu(x, inplace=True); x.tolist()
    [0.0, 2.0]
    """
    return _in_place(input, "relu_", _relu) if inplace else _relu(input)


def leaky_relu(input: Tensor, negative_slope: float = 0.01, inplace: bool = False) -> Tensor:
    """``x`` if x > 0 else ``negative_slope * x`` (``inplace`` as in :func:`relu`)."""
    if inplace:
        return _in_place(input, "leaky_relu_", lambda a: _leaky_relu(a, negative_slope))
    return _leaky_relu(input, negative_slope)


def elu(input: Tensor, alpha: float = 1.0, inplace: bool = False) -> Tensor:
    """``x`` if x > 0 else ``alpha * (exp(x) - 1)`` (``inplace`` as in :func:`relu`).

    >>> elu(dlcore.tensor([-1.0, 2.0])).tolist()[1]
    2.0
    """
    def op(a: Tensor) -> Tensor:
        return Elu.apply(_float_input(a, "elu"), alpha=float(alpha))
    return _in_place(input, "elu_", op) if inplace else op(input)


def silu(input: Tensor, inplace: bool = False) -> Tensor:
    """``x * sigmoid(x)`` (``inplace`` as in :func:`relu`)."""
    def op(a: Tensor) -> Tensor:
        return Silu.apply(_float_input(a, "silu"))
    return _in_place(input, "silu_", op) if inplace else op(input)


def _legacy_softmax_dim(ndim: int, op: str) -> int:
    warnings.warn(f"{op}: implicit dimension choice is deprecated; pass dim=", UserWarning,
                  stacklevel=3)
    return 0 if ndim in (0, 1, 3) else 1


def softmax(input: Tensor, dim: int | None = None, dtype: Any = None) -> Tensor:
    """Softmax along ``dim`` (PyTorch's legacy choice, with a warning, when omitted)."""
    if dim is None:
        dim = _legacy_softmax_dim(input.ndim, "softmax")
    return _softmax(input, dim, dtype)


def log_softmax(input: Tensor, dim: int | None = None, dtype: Any = None) -> Tensor:
    """Log of softmax along ``dim``, computed stably in one op."""
    if dim is None:
        dim = _legacy_softmax_dim(input.ndim, "log_softmax")
    return _log_softmax(input, dim, dtype)


# ---- dropout -------------------------------------------------------------------------
def dropout(input: Tensor, p: float = 0.5, training: bool = True,
            inplace: bool = False) -> Tensor:
    """Inverted dropout: zero each element with probability ``p`` and scale the rest by
    ``1/(1-p)``, so evaluation needs no rescaling. The mask comes from the device's
    generator (``dlcore.manual_seed`` makes it reproducible); identity when not training."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return input
    _float_input(input, "dropout")
    if p == 1.0:
        return _in_place(input, "dropout_", lambda a: a * 0.0) if inplace else input * 0.0

    def draw() -> Any:  # one unit of device work: a CUDA graph on emu replays it whole
        keep = uniform_array(input.shape, 0.0, 1.0, input.dtype, input.device) < (1.0 - p)
        return keep.astype(input.dtype) * input.dtype.type(1.0 / (1.0 - p))
    mask = Tensor._make(device_work(input.device, draw), input.device)
    return _in_place(input, "dropout_", lambda a: a * mask) if inplace else input * mask


# ---- normalisation -------------------------------------------------------------------
def _norm_affine(op: str, x: Tensor, weight: Tensor | None, bias: Tensor | None,
                 dims: tuple[int, ...], eps: float) -> tuple[Tensor, Tensor, Tensor]:
    _float_input(x, op)
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.dtype != x.dtype:
            raise RuntimeError(f"{op}: {name} dtype {t.dtype} does not match input dtype "
                               f"{x.dtype}")
    params = [t for t in (weight, bias) if t is not None]
    return NormAffine.apply(x, *params, dims=dims, eps=float(eps), has_weight=weight is not None,
                            has_bias=bias is not None)


@float32_op
def batch_norm(input: Tensor, running_mean: Tensor | None,
               running_var: Tensor | None, weight: Tensor | None = None,
               bias: Tensor | None = None, training: bool = False, momentum: float = 0.1,
               eps: float = 1e-5) -> Tensor:
    """Normalise each channel (dim 1) of (N, C, ...) over N and the spatial dims.

    Training uses the batch statistics and, when running buffers are given, updates them in
    place: ``running = (1 - momentum) * running + momentum * batch`` with the unbiased batch
    variance. Evaluation uses the running statistics.
    """
    if input.ndim < 2:
        raise ValueError(f"batch_norm: expected input of shape (N, C, ...), got shape "
                         f"{_shape(input)}")
    c = input.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        if t is not None and _shape(t) != (c,):
            raise RuntimeError(f"batch_norm: {name} has shape {_shape(t)} but input has {c} "
                               f"channels (input shape {_shape(input)})")
    bshape = (c,) + (1,) * (input.ndim - 2)
    w = weight.reshape(bshape) if weight is not None else None
    b = bias.reshape(bshape) if bias is not None else None
    if not training:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm: running_mean and running_var are required when "
                             "training=False")
        # a per-channel affine map with constant statistics
        scale = (running_var.to(input.dtype) + eps).rsqrt().reshape(bshape)
        if w is not None:
            scale = scale * w
        shift = -running_mean.to(input.dtype).reshape(bshape) * scale
        if b is not None:
            shift = shift + b
        return input * scale + shift
    n = input.numel() // max(c, 1)
    if n <= 1:
        raise ValueError(f"batch_norm: expected more than 1 value per channel when training, "
                         f"got input of shape {_shape(input)}")
    dims = (0,) + tuple(range(2, input.ndim))
    y, mean, var = _norm_affine("batch_norm", input, w, b, dims, eps)
    def update() -> None:  # raw in-place work: a CUDA graph on emu replays it whole
        unbiased = var._data * (n / (n - 1))
        for running, batch in ((running_mean, mean._data), (running_var, unbiased)):
            if running is not None:
                arr = running._data
                arr *= 1.0 - momentum
                arr += (batch.reshape(c) * momentum).astype(arr.dtype, copy=False)

    with no_grad():
        device_work(input.device, update, [t._data for t in (running_mean, running_var)
                                           if t is not None])
        for t in (running_mean, running_var):
            if t is not None:
                t._bump()
    return y


@float32_op
def layer_norm(input: Tensor, normalized_shape: int | Sequence[int],
               weight: Tensor | None = None, bias: Tensor | None = None,
               eps: float = 1e-5) -> Tensor:
    """Normalise over the last ``len(normalized_shape)`` dims, then scale and shift
    elementwise by ``weight`` and ``bias`` (of shape ``normalized_shape``)."""
    ns = (int(normalized_shape),) if isinstance(normalized_shape, int | np.integer) else \
        tuple(int(s) for s in normalized_shape)
    k = len(ns)
    if k == 0 or input.ndim < k or _shape(input)[-k:] != ns:
        raise RuntimeError(f"layer_norm: input shape {_shape(input)} does not end with "
                           f"normalized_shape {ns}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and _shape(t) != ns:
            raise RuntimeError(f"layer_norm: {name} has shape {_shape(t)}, expected "
                               f"normalized_shape {ns}")
    dims = tuple(range(input.ndim - k, input.ndim))
    return _norm_affine("layer_norm", input, weight, bias, dims, eps)[0]


@float32_op
def group_norm(input: Tensor, num_groups: int, weight: Tensor | None = None,
               bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Normalise (N, C, ...) over each group of ``C // num_groups`` channels and the
    spatial dims, then scale and shift per channel."""
    if input.ndim < 2:
        raise ValueError(f"group_norm: expected input of shape (N, C, ...), got shape "
                         f"{_shape(input)}")
    n, c = input.shape[:2]
    if num_groups <= 0 or c % num_groups:
        raise ValueError(f"group_norm: {c} channels (input shape {_shape(input)}) are not "
                         f"divisible into num_groups={num_groups} groups")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and _shape(t) != (c,):
            raise RuntimeError(f"group_norm: {name} has shape {_shape(t)} but input has {c} "
                               "channels")
    # (N, G, C/G, S): statistics over dims 2 and 3, weight and bias per channel
    per = c // num_groups
    spatial = int(math.prod(input.shape[2:])) if input.ndim > 2 else 1
    x = input.reshape(n, num_groups, per, spatial)
    pshape = (num_groups, per, 1)
    w = weight.reshape(pshape) if weight is not None else None
    b = bias.reshape(pshape) if bias is not None else None
    y = _norm_affine("group_norm", x, w, b, (2, 3), eps)[0]
    return y.reshape(*input.shape)


# ---- embedding and encodings ---------------------------------------------------------
def _check_indices(indices: Tensor, num: int, op: str, what: str) -> None:
    if not isinstance(indices, Tensor) or indices.dtype.kind not in "iu":
        got = indices.dtype if isinstance(indices, Tensor) else type(indices).__name__
        raise TypeError(f"{op}: indices must be an integer tensor, got {got}")
    if indices.numel() and host_checks(indices.device):  # not inside a graph capture
        lo, hi = int(indices._data.min()), int(indices._data.max())
        bad = lo if lo < 0 else hi
        if lo < 0 or hi >= num:
            raise IndexError(f"{op}: index {bad} is out of range for {what} of size {num}")


def embedding(input: Tensor, weight: Tensor,
              padding_idx: int | None = None) -> Tensor:
    """Rows of ``weight`` (num_embeddings, D) for each index in ``input``: output shape
    ``input.shape + (D,)``. The ``padding_idx`` row receives no gradient."""
    if weight.ndim != 2:
        raise RuntimeError(f"embedding: weight must be 2-D (num_embeddings, embedding_dim), "
                           f"got shape {_shape(weight)}")
    num = weight.shape[0]
    _check_indices(input, num, "embedding", f"an embedding of weight shape {_shape(weight)}, "
                   "num_embeddings")
    if input.device is not weight.device:
        raise RuntimeError(f"embedding: indices on {input.device} but weight on {weight.device}")
    if padding_idx is not None:
        if not -num <= padding_idx < num:
            raise ValueError(f"embedding: padding_idx {padding_idx} must be within "
                             f"num_embeddings {num}")
        padding_idx %= num
    return EmbeddingFunction.apply(weight, indices=input._data, padding_idx=padding_idx)


def one_hot(tensor: Tensor, num_classes: int = -1) -> Tensor:
    """int64 one-hot encoding: shape ``tensor.shape + (num_classes,)``; ``-1`` takes
    ``max + 1``."""
    if not isinstance(tensor, Tensor) or tensor.dtype.kind not in "iu":
        raise TypeError("one_hot: expected an integer tensor of class indices")
    if num_classes == -1:
        num_classes = int(tensor._data.max()) + 1 if tensor.numel() else 0
    _check_indices(tensor, num_classes, "one_hot", "num_classes")
    xp = tensor.device.xp
    out = device_work(tensor.device, lambda: (tensor._data[..., None] ==
                                              xp.arange(num_classes)).astype(np.int64))
    return Tensor._make(out, tensor.device)


def normalize(input: Tensor, p: float = 2.0, dim: int = 1,
              eps: float = 1e-12) -> Tensor:
    """``input / max(||input||_p, eps)`` along ``dim``."""
    norm = (input.abs() ** p).sum(dim=dim, keepdim=True) ** (1.0 / p)
    return input / norm.clamp(min=eps)


"""Loss functions (``torch.nn.functional``'s names, arguments and reduction semantics).

Shape letters: N batch, C classes, d1... extra dims; M = N * d1 * ... rows of classes.

``cross_entropy`` with class indices, the hot path of classifiers, is one fused Function:
forward is log-softmax + pick + weighting in a few array passes (no log-probability matrix
is materialised), backward is the analytic ``softmax * sum(a) - a`` for the coefficient
matrix ``a`` of the targets, written with dlcore ops so double backward works. Everything
else is composed from differentiable ops. :mod:`dlcore.nn.functional` re-exports the
public functions; the ``*Loss`` modules in :mod:`dlcore.nn.loss` call them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import autograd
from ..autograd import Function
from ..device import Device, host_checks
from ..tensor import Tensor
from ._util import device_matmul, float32_op, warn_user
from .elementwise import softplus, where
from .reduce import log_softmax, softmax
from ..dtypes import is_floating

__all__ = ["binary_cross_entropy", "binary_cross_entropy_with_logits", "cross_entropy",
           "huber_loss", "kl_div", "l1_loss", "mse_loss", "nll_loss", "smooth_l1_loss"]

_REDUCTIONS = ("mean", "sum", "none")


def _reduction(size_average: bool | None, reduce: bool | None, reduction: str,
               op: str) -> str:
    """The reduction, honouring PyTorch's deprecated ``size_average``/``reduce`` pair (kept
    so positional calls written for torch line up)."""
    if size_average is not None or reduce is not None:
        warn_user(f"{op}: size_average and reduce are deprecated, use reduction")
        if reduce is False:
            return "none"
        return "sum" if size_average is False else "mean"
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{op}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    return reduction


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _tensor_operands(input: Tensor, target: Any, op: str) -> tuple[Tensor, Tensor]:
    """``input`` must be a Tensor; a target that is not one (a number, a nested list)
    becomes one of the input's dtype and device."""
    if not isinstance(input, Tensor):
        raise TypeError(f"{op}: input must be a Tensor, got {type(input).__name__}")
    if not isinstance(target, Tensor):
        target = Tensor._make(input.device.xp.asarray(target, dtype=input.dtype), input.device)
    return input, target


def _pointwise_operands(input: Tensor, target: Any, op: str) -> tuple[Tensor, Tensor]:
    """Check types and warn, as PyTorch does, when broadcasting would pair wrong elements."""
    input, target = _tensor_operands(input, target, op)
    if target.shape != input.shape:
        warn_user(f"{op}: using a target size ({tuple(target.shape)}) that is different to "
                  f"the input size ({tuple(input.shape)}); this will likely lead to "
                  "incorrect results due to broadcasting")
    return input, target


def _same_shape_operands(input: Tensor, target: Any, op: str) -> tuple[Tensor, Tensor]:
    """The binary cross entropies refuse broadcasting outright, as PyTorch's do (with no
    broadcasting warning first: there is nothing to warn about, for a Tensor target or a
    nested list / number converted to one)."""
    input, target = _tensor_operands(input, target, op)
    if tuple(target.shape) != tuple(input.shape):
        raise ValueError(f"{op}: target size ({tuple(target.shape)}) must be the same as "
                         f"input size ({tuple(input.shape)})")
    return input, target


def _constant(array: Any, like: Tensor) -> Tensor:
    return Tensor._make(array, like.device)


# ---- classification ------------------------------------------------------------------
def _rows_of_classes(input: Tensor, target: Tensor, op: str) -> tuple[Tensor, Any, tuple]:
    """``input`` as (M, C) rows and the class-index ``target`` as an (M,) array, checked;
    plus the shape an unreduced loss has (the target's)."""
    if input.ndim == 0:
        raise ValueError(f"{op}: input must have a class dimension, got a 0-d tensor")
    if not isinstance(target, Tensor):
        raise TypeError(f"{op}: target must be a Tensor, got {type(target).__name__}")
    if target.dtype.kind not in "iu":
        raise RuntimeError(f"{op}: expected class indices of an integer dtype as target (or "
                           f"class probabilities of the input's shape {tuple(input.shape)}), "
                           f"got dtype {target.dtype} and shape {tuple(target.shape)}")
    expected = input.shape[:1] + input.shape[2:] if input.ndim >= 2 else ()
    if tuple(target.shape) != expected:
        raise ValueError(f"{op}: expected target of shape {expected} for input of shape "
                         f"{tuple(input.shape)}, got target of shape {tuple(target.shape)}")
    if target.device is not input.device:
        raise RuntimeError(f"{op}: target on {target.device}, input on {input.device}")
    n_classes = input.shape[1] if input.ndim >= 2 else input.shape[0]
    if input.ndim == 1:
        rows = input.reshape(1, n_classes)
    elif input.ndim == 2:
        rows = input
    else:
        rows = input.permute(0, *range(2, input.ndim), 1).reshape(-1, n_classes)
    return rows, target._data.reshape(-1), expected


def _class_weights(weight: Tensor | None, input: Tensor, n_classes: int, op: str) -> Any:
    if weight is None:
        return None
    if tuple(weight.shape) != (n_classes,):
        raise ValueError(f"{op}: weight must have shape ({n_classes},) for {n_classes} "
                         f"classes, got {tuple(weight.shape)}")
    return weight._data.astype(input.dtype, copy=False)


def _picked_weights(target: Any, weight: Any, ignore_index: int, n_classes: int, dtype: Any,
                    xp: Any, op: str, device: Device) -> tuple[Any, Any, Any]:
    """(safe targets, weight of each row's target or 0 where ignored, valid mask). Inside a
    graph capture the bounds are not checked on the host (:func:`dlcore.device.host_checks`):
    out-of-range targets are clamped to a class, so the captured reads stay in bounds."""
    valid = target != ignore_index
    if target.size and host_checks(device):
        bad = valid & ((target < 0) | (target >= n_classes))
        if bool(bad.any()):
            value = int(target[bad][0])
            raise IndexError(f"{op}: target {value} is out of bounds for {n_classes} classes "
                             f"(ignore_index={ignore_index})")
    safe = xp.where(valid, target, 0)
    if not host_checks(device):
        safe = xp.clip(safe, 0, max(n_classes - 1, 0))
    picked = valid.astype(dtype) if weight is None else weight[safe] * valid
    return safe, picked, valid


def _matvec(xp: Any, a: Any, v: Any) -> Any:
    """``a @ v`` (matrix, vector): NumPy's on the host; on cuda through cuBLAS as a one-column
    GEMM (dlcore.cuda_blas: capturable, where CuPy's matrix-vector product refuses capture)."""
    if xp is np:
        return a @ v
    return device_matmul(xp, a, v[:, None])[:, 0]


class CrossEntropyIndices(Function):
    """Cross entropy of (M, C) logits against class indices, with class weights, ignored
    rows and label smoothing. Loss of row i: ``-sum_c a[i, c] * log_softmax(x)[i, c]``, where
    ``a`` (built only in backward) is ``coef_y`` at the target plus ``coef_s * weight``
    everywhere; the reduction's divisors are folded into the coefficients."""

    save_inputs = True

    def forward(self, x: Any, target: Any, weight: Any, ignore_index: int,
                label_smoothing: float, reduction: str) -> Any:
        xp = self.device.xp
        m, c = x.shape
        shifted = x - x.max(axis=1, keepdims=True)
        probs = xp.exp(shifted)
        sums = probs.sum(axis=1, keepdims=True)
        log_sums = xp.log(sums)[:, 0]
        probs /= sums
        safe, picked, valid = _picked_weights(target, weight, ignore_index, c, x.dtype, xp,
                                              "cross_entropy", self.device)
        logp_target = xp.take_along_axis(shifted, safe[:, None], axis=1)[:, 0] - log_sums
        with np.errstate(divide="ignore", invalid="ignore"):  # all-ignored mean is NaN
            nll_div = picked.sum() if reduction == "mean" else 1
            coef_y = picked * ((1 - label_smoothing) / nll_div)
            rows = -coef_y * logp_target
            coef_s = None
            if label_smoothing > 0:
                # PyTorch's mean divides the smoothing term as the nll term: by the picked
                # weights, i.e. the count of non-ignored rows when there are no weights
                smooth_div = picked.sum() if reduction == "mean" else 1
                coef_s = valid.astype(x.dtype) * (label_smoothing / c / smooth_div)
                w_sum = c if weight is None else weight.sum()
                w_logp = (shifted.sum(axis=1) if weight is None else _matvec(xp, shifted, weight)) \
                    - log_sums * w_sum
                rows = rows - coef_s * w_logp
        self.safe, self.weight, self.coef_y, self.coef_s = safe, weight, coef_y, coef_s
        self.probs, self.reduction = probs, reduction
        return rows if reduction == "none" else rows.sum()

    def backward(self, g: Tensor) -> tuple:
        xp = self.device.xp
        m = self.safe.shape[0]
        coef = xp.zeros_like(self.probs)
        if self.coef_s is not None:
            coef += self.coef_s[:, None] * (1 if self.weight is None else self.weight)
        coef[xp.arange(m), self.safe] += self.coef_y
        total = coef.sum(axis=1, keepdims=True)
        if autograd.is_grad_enabled():  # create_graph: softmax must be differentiable
            probs = softmax(self.saved_tensors[0], 1)
        else:
            probs = _constant(self.probs, g)
        grad = probs * _constant(total, g) - _constant(coef, g)
        return (grad * (g.reshape(m, 1) if self.reduction == "none" else g),)


@float32_op
def cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None = None,
                  size_average: bool | None = None, ignore_index: int = -100,
                  reduce: bool | None = None, reduction: str = "mean",
                  label_smoothing: float = 0.0) -> Tensor:
    """Cross entropy between logits ``input`` ((N, C), (N, C, d1, ...) or (C,)) and
    ``target``: class indices ((N,), (N, d1, ...) or ()) or class probabilities (the
    input's shape). Stable for any logit magnitude.

    >>> x = dlcore.tensor([[2.0, 0.0], [0.0, 2.0]])
    >>> round(cross_entropy(x, dlcore.tensor([0, 1])).item(), 4)
    0.1269
    """
    op = "cross_entropy"
    reduction = _reduction(size_average, reduce, reduction, op)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{op}: label_smoothing must be in [0, 1], got {label_smoothing}")
    if not isinstance(input, Tensor) or not is_floating(input.dtype):
        raise TypeError(f"{op}: input must be a floating point Tensor of logits")
    n_classes = input.shape[1] if input.ndim >= 2 else input.shape[0] if input.ndim else 0
    w = _class_weights(weight, input, n_classes, op)
    if isinstance(target, Tensor) and is_floating(target.dtype):
        return _cross_entropy_probs(input, target, w, label_smoothing, reduction, op)
    rows, t, out_shape = _rows_of_classes(input, target, op)
    out = CrossEntropyIndices.apply(rows, target=t, weight=w, ignore_index=ignore_index,
                                    label_smoothing=label_smoothing, reduction=reduction)
    return out.reshape(*out_shape) if reduction == "none" else out


def _cross_entropy_probs(input: Tensor, target: Tensor, weight: Any,
                         label_smoothing: float, reduction: str, op: str) -> Tensor:
    """Soft targets: ``-sum_c w_c * t_c * log_softmax(x)_c`` per row; mean divides by the
    number of rows (not by weights), as in PyTorch. Differentiable w.r.t. the target too."""
    if tuple(target.shape) != tuple(input.shape):
        raise ValueError(f"{op}: class-probability target must have the input's shape "
                         f"{tuple(input.shape)}, got {tuple(target.shape)}")
    class_dim = 1 if input.ndim >= 2 else 0
    n_classes = input.shape[class_dim]
    logp = log_softmax(input, class_dim)
    if label_smoothing > 0:
        target = target * (1 - label_smoothing) + label_smoothing / n_classes
    prod = logp * target
    if weight is not None:
        shape = [1] * input.ndim
        shape[class_dim] = n_classes
        prod = prod * _constant(weight.reshape(shape), input)
    return _reduce(-prod.sum(dim=class_dim), reduction)


@float32_op
def nll_loss(input: Tensor, target: Tensor, weight: Tensor | None = None,
             size_average: bool | None = None, ignore_index: int = -100,
             reduce: bool | None = None, reduction: str = "mean") -> Tensor:
    """Negative log likelihood of log-probabilities ``input`` at class indices ``target``;
    with weights, the mean divides by the summed weights of the non-ignored targets.

    >>> nll_loss(dlcore.tensor([[-1.0, -2.0]]), dlcore.tensor([1])).item()
    2.0
    """
    op = "nll_loss"
    reduction = _reduction(size_average, reduce, reduction, op)
    rows, t, out_shape = _rows_of_classes(input, target, op)
    n_classes = rows.shape[1]
    w = _class_weights(weight, input, n_classes, op)
    xp = input.device.xp
    safe, picked, _ = _picked_weights(t, w, ignore_index, n_classes, input.dtype, xp, op,
                                      input.device)
    chosen = rows.gather(1, _constant(safe[:, None], input)).reshape(-1)
    loss = -chosen * _constant(picked, input)
    if reduction == "none":
        return loss.reshape(*out_shape)
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / _constant(picked.sum(), input)


class BinaryCrossEntropy(Function):
    """Elementwise ``-w * (t * log(x) + (1 - t) * log(1 - x))``, each log clamped to >= -100
    (so x = 0 or 1 gives a finite loss), with PyTorch's analytic gradients."""

    save_inputs = True

    def forward(self, x: Any, t: Any, weight: Any) -> Any:
        xp = self.device.xp
        self.weight = weight
        with np.errstate(divide="ignore"):
            log_x = xp.maximum(xp.log(x), -100)
            log_1mx = xp.maximum(xp.log1p(-x), -100)
        loss = (t - 1) * log_1mx - t * log_x
        return loss if weight is None else loss * weight

    def backward(self, g: Tensor) -> tuple:
        x, t = self.saved_tensors
        if self.weight is not None:
            g = g * _constant(self.weight, g)
        gx = gt = None
        if self.needs_input_grad[0]:
            gx = g * (x - t) / (x * (1 - x)).clamp(min=1e-12)
        if self.needs_input_grad[1]:
            gt = g * ((-x).log1p().clamp(min=-100) - x.log().clamp(min=-100))
        return gx, gt


@float32_op
def binary_cross_entropy(input: Tensor, target: Tensor,
                         weight: Tensor | None = None, size_average: bool | None = None,
                         reduce: bool | None = None, reduction: str = "mean") -> Tensor:
    """Binary cross entropy of probabilities ``input`` (in [0, 1]) against ``target``.

    >>> round(binary_cross_entropy(dlcore.tensor([0.8]), dlcore.tensor([1.0])).item(), 4)
    0.2231
    """
    op = "binary_cross_entropy"
    reduction = _reduction(size_average, reduce, reduction, op)
    input, target = _same_shape_operands(input, target, op)
    if input._data.size and host_checks(input.device) and bool(
            ((input._data < 0) | (input._data > 1)).any()):
        raise RuntimeError(f"{op}: all elements of input should be between 0 and 1")
    w = None
    if weight is not None:
        w = input.device.xp.broadcast_to(weight._data.astype(input.dtype, copy=False),
                                          input.shape)
    loss = BinaryCrossEntropy.apply(input, target.to(input.dtype), weight=w)
    return _reduce(loss, reduction)


@float32_op
def binary_cross_entropy_with_logits(input: Tensor, target: Tensor,
                                     weight: Tensor | None = None,
                                     size_average: bool | None = None,
                                     reduce: bool | None = None, reduction: str = "mean",
                                     pos_weight: Tensor | None = None) -> Tensor:
    """``binary_cross_entropy(sigmoid(input), target)`` computed stably from logits:
    ``(1 - t) * x + (1 + (pos_weight - 1) * t) * softplus(-x)``; ``pos_weight`` (one value
    per class, the last dim) weighs the positive term.

    >>> round(binary_cross_entropy_with_logits(dlcore.tensor([0.0]),
    ...                                        dlcore.tensor([1.0])).item(), 4)
    0.6931
    """
    op = "binary_cross_entropy_with_logits"
    reduction = _reduction(size_average, reduce, reduction, op)
    input, target = _same_shape_operands(input, target, op)
    target = target.to(input.dtype)
    # NOTE: threshold=inf keeps softplus exact (logaddexp) at any magnitude; its default
    # linear cut-over at 20 would be off by up to 2e-9.
    log_sigmoid_neg = softplus(-input, threshold=math.inf)
    if pos_weight is not None:
        log_sigmoid_neg = log_sigmoid_neg * (1 + (pos_weight.to(input.dtype) - 1) * target)
    loss = (1 - target) * input + log_sigmoid_neg
    if weight is not None:
        loss = loss * weight.to(input.dtype)
    return _reduce(loss, reduction)


# ---- regression ----------------------------------------------------------------------
@float32_op
def mse_loss(input: Tensor, target: Tensor, size_average: bool | None = None,
             reduce: bool | None = None, reduction: str = "mean") -> Tensor:
    """Mean squared error.

    >>> mse_loss(dlcore.tensor([1.0, 3.0]), dlcore.tensor([0.0, 0.0])).item()
    5.0
    """
    reduction = _reduction(size_average, reduce, reduction, "mse_loss")
    input, target = _pointwise_operands(input, target, "mse_loss")
    diff = input - target
    return _reduce(diff * diff, reduction)


@float32_op
def l1_loss(input: Tensor, target: Tensor, size_average: bool | None = None,
            reduce: bool | None = None, reduction: str = "mean") -> Tensor:
    """Mean absolute error: robust to outliers, constant gradient.

    >>> l1_loss(dlcore.tensor([1.0, -3.0]), dlcore.tensor([0.0, 0.0])).item()
    2.0
    """
    reduction = _reduction(size_average, reduce, reduction, "l1_loss")
    input, target = _pointwise_operands(input, target, "l1_loss")
    return _reduce((input - target).abs(), reduction)


@float32_op
def smooth_l1_loss(input: Tensor, target: Tensor, size_average: bool | None = None,
                   reduce: bool | None = None, reduction: str = "mean",
                   beta: float = 1.0) -> Tensor:
    """``0.5 * d^2 / beta`` where ``|d| < beta``, else ``|d| - 0.5 * beta`` (L1 at beta=0)."""
    op = "smooth_l1_loss"
    reduction = _reduction(size_average, reduce, reduction, op)
    if beta < 0:
        raise ValueError(f"{op}: beta must be non-negative, got {beta}")
    input, target = _pointwise_operands(input, target, op)
    diff = input - target
    absdiff = diff.abs()
    if beta == 0:
        return _reduce(absdiff, reduction)
    loss = where(absdiff < beta, diff * diff * (0.5 / beta), absdiff - 0.5 * beta)
    return _reduce(loss, reduction)


@float32_op
def huber_loss(input: Tensor, target: Tensor, reduction: str = "mean",
               delta: float = 1.0) -> Tensor:
    """``0.5 * d^2`` where ``|d| < delta``, else ``delta * (|d| - 0.5 * delta)``: smooth L1
    scaled by ``delta``, so its gradient saturates at ``delta`` rather than 1."""
    op = "huber_loss"
    reduction = _reduction(None, None, reduction, op)
    if delta <= 0:
        raise ValueError(f"{op}: delta must be positive, got {delta}")
    input, target = _pointwise_operands(input, target, op)
    diff = input - target
    absdiff = diff.abs()
    loss = where(absdiff < delta, diff * diff * 0.5, (absdiff - 0.5 * delta) * delta)
    return _reduce(loss, reduction)


# ---- distributions -------------------------------------------------------------------
@float32_op
def kl_div(input: Tensor, target: Tensor, size_average: bool | None = None,
           reduce: bool | None = None, reduction: str = "mean",
           log_target: bool = False) -> Tensor:
    """KL divergence ``sum t * (log t - input)`` of log-probabilities ``input`` from
    ``target`` (probabilities, or log-probabilities with ``log_target``); ``t log t`` is 0
    at t = 0. ``reduction='batchmean'`` divides by the batch size: the true KL per sample
    ('mean' divides by every element, as PyTorch does).

    >>> kl_div(dlcore.tensor([0.0]), dlcore.tensor([1.0]), reduction="sum").item()
    0.0
    """
    op = "kl_div"
    batchmean = reduction == "batchmean" and size_average is None and reduce is None
    reduction = "sum" if batchmean else _reduction(size_average, reduce, reduction, op)
    input, target = _pointwise_operands(input, target, op)
    if log_target:
        loss = target.exp() * (target - input)
    else:
        positive = target > 0
        safe = where(positive, target, 1.0)
        loss = where(positive, target * safe.log(), 0.0) - target * input
    out = _reduce(loss, reduction)
    if batchmean and input.ndim > 0:
        return out / input.shape[0]
    return out

"""Loss modules (``torch.nn``'s ``*Loss`` classes): options held on the module, the
computation in :mod:`dlcore.ops.loss`. Class weights are buffers, so they follow
``module.to(device)`` and appear in ``state_dict`` as in PyTorch."""

from __future__ import annotations

from ..ops import loss as loss_ops
from ..tensor import Tensor
from .module import Module

__all__ = ["BCELoss", "BCEWithLogitsLoss", "CrossEntropyLoss", "HuberLoss", "KLDivLoss",
           "L1Loss", "MSELoss", "NLLLoss", "SmoothL1Loss"]


class _Loss(Module):
    """Holds the reduction (resolving PyTorch's deprecated ``size_average``/``reduce``)."""

    def __init__(self, size_average: bool | None = None, reduce: bool | None = None,
                 reduction: str = "mean") -> None:
        super().__init__()
        if size_average is not None or reduce is not None:
            reduction = loss_ops._reduction(size_average, reduce, reduction,
                                            type(self).__name__)
        self.reduction = reduction

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}" if self.reduction != "mean" else ""


class _WeightedLoss(_Loss):
    def __init__(self, weight: Tensor | None = None, size_average: bool | None = None,
                 reduce: bool | None = None, reduction: str = "mean") -> None:
        super().__init__(size_average, reduce, reduction)
        self.register_buffer("weight", weight)


class CrossEntropyLoss(_WeightedLoss):
    """:func:`~dlcore.nn.functional.cross_entropy` as a module."""

    def __init__(self, weight: Tensor | None = None, size_average: bool | None = None,
                 ignore_index: int = -100, reduce: bool | None = None,
                 reduction: str = "mean", label_smoothing: float = 0.0) -> None:
        super().__init__(weight, size_average, reduce, reduction)
        self.ignore_index, self.label_smoothing = ignore_index, label_smoothing

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return loss_ops.cross_entropy(input, target, weight=self.weight,
                                      ignore_index=self.ignore_index, reduction=self.reduction,
                                      label_smoothing=self.label_smoothing)


class NLLLoss(_WeightedLoss):
    """:func:`~dlcore.nn.functional.nll_loss` as a module (pair it with ``LogSoftmax``)."""

    def __init__(self, weight: Tensor | None = None, size_average: bool | None = None,
                 ignore_index: int = -100, reduce: bool | None = None,
                 reduction: str = "mean") -> None:
        super().__init__(weight, size_average, reduce, reduction)
        self.ignore_index = ignore_index

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return loss_ops.nll_loss(input, target, weight=self.weight,
                                 ignore_index=self.ignore_index, reduction=self.reduction)


class BCELoss(_WeightedLoss):
    """:func:`~dlcore.nn.functional.binary_cross_entropy` as a module."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return loss_ops.binary_cross_entropy(input, target, weight=self.weight,
                                             reduction=self.reduction)


class BCEWithLogitsLoss(_Loss):
    """:func:`~dlcore.nn.functional.binary_cross_entropy_with_logits` as a module."""

    def __init__(self, weight: Tensor | None = None, size_average: bool | None = None,
                 reduce: bool | None = None, reduction: str = "mean",
                 pos_weight: Tensor | None = None) -> None:
        super().__init__(size_average, reduce, reduction)
        self.register_buffer("weight", weight)
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return loss_ops.binary_cross_entropy_with_logits(
            input, target, weight=self.weight, reduction=self.reduction,
            pos_weight=self.pos_weight)


class MSELoss(_Loss):
    """:func:`~dlcore.nn.functional.mse_loss` as a module."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return loss_ops.mse_loss(input, target, reduction=self.reduction)


class L1Loss(_Loss):
    """:func:`~dlcore.nn.functional.l1_loss` as a module."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return loss_ops.l1_loss(input, target, reduction=self.reduction)


class SmoothL1Loss(_Loss):
    """:func:`~dlcore.nn.functional.smooth_l1_loss` as a module."""

    def __init__(self, size_average: bool | None = None, reduce: bool | None = None,
                 reduction: str = "mean", beta: float = 1.0) -> None:
        super().__init__(size_average, reduce, reduction)
        self.beta = beta

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return loss_ops.smooth_l1_loss(input, target, reduction=self.reduction, beta=self.beta)


class HuberLoss(_Loss):
    """:func:`~dlcore.nn.functional.huber_loss` as a module."""

    def __init__(self, reduction: str = "mean", delta: float = 1.0) -> None:
        super().__init__(reduction=reduction)
        self.delta = delta

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return loss_ops.huber_loss(input, target, reduction=self.reduction, delta=self.delta)


class KLDivLoss(_Loss):
    """:func:`~dlcore.nn.functional.kl_div` as a module (``reduction='batchmean'`` gives
    the true KL divergence per sample)."""

    def __init__(self, size_average: bool | None = None, reduce: bool | None = None,
                 reduction: str = "mean", log_target: bool = False) -> None:
        super().__init__(size_average, reduce, reduction)
        self.log_target = log_target

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return loss_ops.kl_div(input, target, reduction=self.reduction,
                               log_target=self.log_target)

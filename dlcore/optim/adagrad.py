"""Adagrad: per-coordinate learning rates from the running sum of squared gradients."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..ops.optim import MAXIMIZE, STEPS_ADAGRAD
from .optimizer import Optimizer, state_like


class Adagrad(Optimizer):
    """``torch.optim.Adagrad``: ``g = grad + weight_decay * p`` (negated if ``maximize``),
    ``clr = lr / (1 + (t - 1) * lr_decay)``, ``s += g * g``, ``p -= clr * g / (sqrt(s) + eps)``;
    ``s`` starts at ``initial_accumulator_value``. ``capturable`` (a dlcore extension: PyTorch's
    Adagrad has no such option): the step count lives on the device and ``clr`` is computed
    there, as Adam's bias corrections are.

    >>> opt = Adagrad(model.parameters(), lr=1e-2)  # doctest: +SKIP
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-2, lr_decay: float = 0.0,
                 weight_decay: float = 0.0, initial_accumulator_value: float = 0.0,
                 eps: float = 1e-10, foreach: bool | None = None, *,
                 maximize: bool = False, capturable: bool = False) -> None:
        """``foreach`` is accepted for PyTorch compatibility: dlcore always updates a group
        in one fused pass."""
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= lr_decay:
            raise ValueError(f"Invalid lr_decay value: {lr_decay}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if not 0.0 <= initial_accumulator_value:
            raise ValueError(f"Invalid initial_accumulator_value value: "
                             f"{initial_accumulator_value}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value,
                                      eps=eps, maximize=maximize, capturable=capturable))

    def init_single(self, param: Any, state: dict[str, Any], group: dict[str, Any]) -> None:
        if "sum" not in state:
            state["sum"] = state_like(param, group["initial_accumulator_value"])

    def step_count_rule(self, group: dict[str, Any]) -> tuple[int, float, float, float]:
        return STEPS_ADAGRAD, group["lr"], group["lr_decay"], 0.0

    def update_rule(self, grad: Any, param: Any, state: dict[str, Any], group: dict[str, Any],
                    step: int) -> tuple[str, tuple, tuple[float, ...], int]:
        clr = group["lr"] / (1 + (step - 1) * group["lr_decay"])
        return ("adagrad_step", (param, grad, state["sum"]),
                (clr, group["weight_decay"], group["eps"]), MAXIMIZE * group["maximize"])

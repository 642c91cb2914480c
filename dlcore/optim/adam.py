"""Adam and AdamW (decoupled weight decay), with AMSGrad and maximize."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from ..ops.optim import ADAM_AMSGRAD, ADAM_DECOUPLED, MAXIMIZE, STEPS_ADAM
from .optimizer import Optimizer, state_like


def check_adam_args(lr: float, betas: tuple[float, float], eps: float,
                    weight_decay: float) -> None:
    """PyTorch's argument checks of the Adam family (Adam, AdamW, NAdam, RAdam)."""
    if not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr}")
    if not 0.0 <= eps:
        raise ValueError(f"Invalid epsilon value: {eps}")
    for i in (0, 1):
        if not 0.0 <= betas[i] < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {betas[i]}")
    if not 0.0 <= weight_decay:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")


def init_moments(param: Any, state: dict[str, Any]) -> None:
    """The first and second moments of the array-operation Adam variants (NAdam, RAdam)."""
    for name in ("exp_avg", "exp_avg_sq"):
        if name not in state:
            state[name] = state_like(param)


def decayed_gradient(grad: Any, param: Any, group: dict[str, Any]) -> Any:
    """The gradient NAdam and RAdam update with: negated under ``maximize``, plus L2 weight
    decay, or with ``decoupled_weight_decay`` the parameter shrunk in place instead."""
    lr, wd = group["lr"], group["weight_decay"]
    g = -grad if group["maximize"] else grad
    if wd != 0:
        if group["decoupled_weight_decay"]:
            param *= 1 - lr * wd
        else:
            g = g + wd * param
    return g


class Adam(Optimizer):
    """``torch.optim.Adam``: ``g = grad + weight_decay * p`` (negated if ``maximize``),
    ``m = lerp(m, g, 1 - beta1)``, ``v = beta2 * v + (1 - beta2) * g * g``, then
    ``p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)``; with ``amsgrad``
    the running maximum of ``v`` replaces ``v`` in the denominator. ``capturable``: the step
    count lives on the device and the bias corrections are computed there (CUDA graphs,
    GradScaler without a host sync; :mod:`dlcore.optim.optimizer`), on ``cuda``/``emu`` only.

    >>> opt = Adam(model.parameters(), lr=1e-3)  # doctest: +SKIP
    """

    decoupled_weight_decay = False

    def __init__(self, params: Iterable[Any], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False, *, maximize: bool = False,
                 foreach: bool | None = None, capturable: bool = False,
                 fused: bool | None = None) -> None:
        """``foreach`` and ``fused`` are accepted for PyTorch compatibility: dlcore always
        updates a group in one fused pass."""
        check_adam_args(lr, betas, eps, weight_decay)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize, capturable=capturable))

    def init_single(self, param: Any, state: dict[str, Any], group: dict[str, Any]) -> None:
        for name in ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if group["amsgrad"] else ()):
            if name not in state:
                state[name] = state_like(param)

    def _scalars(self, group: dict[str, Any], step: int) -> tuple[float, ...]:
        """Per-step scalars, computed once in float64 on the host (as PyTorch does): lr,
        weight decay, 1 - beta1, beta2, 1 - beta2, step size,
        sqrt(bias correction 2), eps."""
        beta1, beta2 = group["betas"]
        lr = group["lr"]
        bias_correction1 = 1 - beta1 ** step
        bias_correction2_sqrt = math.sqrt(1 - beta2 ** step)
        return (lr, group["weight_decay"], 1 - beta1, beta2, 1 - beta2,
                lr / bias_correction1, bias_correction2_sqrt, group["eps"])

    def step_count_rule(self, group: dict[str, Any]) -> tuple[int, float, float, float]:
        beta1, beta2 = group["betas"]
        return STEPS_ADAM, group["lr"], beta1, beta2

    def update_rule(self, grad: Any, param: Any, state: dict[str, Any], group: dict[str, Any],
                    step: int) -> tuple[str, tuple, tuple[float, ...], int]:
        flags = (MAXIMIZE * group["maximize"] | ADAM_AMSGRAD * group["amsgrad"]
                 | ADAM_DECOUPLED * self.decoupled_weight_decay)
        scalars = self._scalars(group, step)
        lr, wd = scalars[0], scalars[1]
        decay = 1 - lr * wd
        return ("adam_step", (param, grad, state["exp_avg"], state["exp_avg_sq"],
                              state.get("max_exp_avg_sq")), (decay,) + scalars[1:], flags)


class AdamW(Adam):
    """``torch.optim.AdamW``: Adam whose weight decay shrinks the parameters directly,
    ``p *= 1 - lr * weight_decay``, instead of entering the gradient moments."""

    decoupled_weight_decay = True

    def __init__(self, params: Iterable[Any], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False,
                 foreach: bool | None = None, capturable: bool = False,
                 fused: bool | None = None) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                         capturable=capturable)

"""Stochastic gradient descent with momentum, dampening, Nesterov and weight decay."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..ops.optim import MAXIMIZE, SGD_FIRST_STEP, SGD_NESTEROV
from .optimizer import Optimizer, required, state_like


class SGD(Optimizer):
    """``torch.optim.SGD``: with ``g = grad + weight_decay * p`` (negated if ``maximize``),
    ``b = momentum * b + (1 - dampening) * g`` (``b = g`` on the first step),
    ``g = g + momentum * b`` (Nesterov) or ``g = b``, then ``p -= lr * g``.

    >>> opt = SGD(model.parameters(), lr=0.1, momentum=0.9)  # doctest: +SKIP
    """

    has_step_state = False  # PyTorch saves only "momentum_buffer" for SGD

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False,
                 *, maximize: bool = False, foreach: bool | None = None,
                 fused: bool | None = None) -> None:
        """``foreach`` and ``fused`` are accepted for PyTorch compatibility: dlcore always
        updates a group in one fused pass."""
        if lr is not required and not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= momentum:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      maximize=maximize))

    def init_single(self, param: Any, state: dict[str, Any], group: dict[str, Any]) -> None:
        if group["momentum"] != 0 and "momentum_buffer" not in state:
            state["momentum_buffer"] = state_like(param)

    def skips_on_device(self, group: dict[str, Any]) -> bool:
        """SGD keeps no step count; only its first step is special (``b = g``), and when the
        kernels skip it the next step's ``b = momentum * 0 + (1 - dampening) * g`` is the same
        ``g`` exactly when dampening is 0."""
        return group["momentum"] == 0 or group["dampening"] == 0

    def update_rule(self, grad: Any, param: Any, state: dict[str, Any], group: dict[str, Any],
                    step: int) -> tuple[str, tuple, tuple[float, ...], int]:
        flags = (MAXIMIZE * group["maximize"] | SGD_NESTEROV * group["nesterov"]
                 | SGD_FIRST_STEP * (step == 1))
        return ("sgd_step", (param, grad, state.get("momentum_buffer")),
                (group["lr"], group["momentum"], 1 - group["dampening"], group["weight_decay"]),
                flags)

"""RMSprop, plain or centered, with optional momentum."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..ops.optim import MAXIMIZE, RMSPROP_CENTERED, RMSPROP_MOMENTUM
from .optimizer import Optimizer, state_like


class RMSprop(Optimizer):
    """``torch.optim.RMSprop``: ``g = grad + weight_decay * p`` (negated if ``maximize``),
    ``v = alpha * v + (1 - alpha) * g * g``; centered: ``ga = lerp(ga, g, 1 - alpha)`` and
    ``avg = sqrt(v - ga * ga) + eps``, else ``avg = sqrt(v) + eps``; then with momentum
    ``b = momentum * b + g / avg; p -= lr * b``, else ``p -= lr * g / avg``. ``capturable``:
    the step count (state only: the update does not use it) is kept and counted on the device.

    >>> opt = RMSprop(model.parameters(), lr=1e-2, momentum=0.9)  # doctest: +SKIP
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-2, alpha: float = 0.99,
                 eps: float = 1e-8, weight_decay: float = 0.0, momentum: float = 0.0,
                 centered: bool = False, capturable: bool = False,
                 foreach: bool | None = None, *, maximize: bool = False) -> None:
        """``foreach`` is accepted for PyTorch compatibility: dlcore always updates a group
        in one fused pass."""
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= momentum:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if not 0.0 <= alpha:
            raise ValueError(f"Invalid alpha value: {alpha}")
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered, maximize=maximize,
                                      capturable=capturable))

    def init_single(self, param: Any, state: dict[str, Any], group: dict[str, Any]) -> None:
        names = ("square_avg",) + (("momentum_buffer",) if group["momentum"] > 0 else ()) \
            + (("grad_avg",) if group["centered"] else ())
        for name in names:
            if name not in state:
                state[name] = state_like(param)

    def update_rule(self, grad: Any, param: Any, state: dict[str, Any], group: dict[str, Any],
                    step: int) -> tuple[str, tuple, tuple[float, ...], int]:
        flags = (MAXIMIZE * group["maximize"] | RMSPROP_CENTERED * group["centered"]
                 | RMSPROP_MOMENTUM * (group["momentum"] > 0))
        return ("rmsprop_step", (param, grad, state["square_avg"], state.get("grad_avg"),
                                 state.get("momentum_buffer")),
                (group["lr"], group["alpha"], 1 - group["alpha"], group["eps"],
                 group["weight_decay"], group["momentum"]), flags)

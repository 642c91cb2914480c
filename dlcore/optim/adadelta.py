"""Adadelta: a per-element step size from running averages of squared gradients and steps."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .optimizer import Optimizer, array_module, state_like


class Adadelta(Optimizer):
    """``torch.optim.Adadelta``: ``g = grad + weight_decay * p`` (negated if ``maximize``),
    ``v = rho * v + (1 - rho) * g * g``, ``dx = sqrt(u + eps) / sqrt(v + eps) * g``,
    ``u = rho * u + (1 - rho) * dx * dx``, then ``p -= lr * dx`` (state ``square_avg`` = v,
    ``acc_delta`` = u, ``step``).

    NOTE: no fused kernel: the update is a few array operations over each bucket's flat
    buffers (:meth:`Optimizer.update_arrays`), one pass per bucket as the kernel optimizers
    make, with the state in the base's flat arrays, so ``state_dict``, ``.state[p]`` and
    moving the model work as for them.

    >>> opt = Adadelta(model.parameters())  # doctest: +SKIP
    """

    def __init__(self, params: Iterable[Any], lr: float = 1.0, rho: float = 0.9,
                 eps: float = 1e-6, weight_decay: float = 0.0, foreach: bool | None = None,
                 *, capturable: bool = False, maximize: bool = False,
                 differentiable: bool = False) -> None:
        """``foreach`` is accepted for PyTorch compatibility; ``capturable`` and
        ``differentiable`` only as False."""
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"Invalid rho value: {rho}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if capturable or differentiable:
            raise NotImplementedError("Adadelta: capturable and differentiable are not "
                                      "supported by dlcore")
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay,
                                      maximize=maximize))

    def init_single(self, param: Any, state: dict[str, Any], group: dict[str, Any]) -> None:
        for name in ("square_avg", "acc_delta"):
            if name not in state:
                state[name] = state_like(param)

    def update_arrays(self, grad: Any, param: Any, state: dict[str, Any],
                      group: dict[str, Any], step: int) -> bool:
        xp = array_module(param)
        lr, rho, eps, wd = group["lr"], group["rho"], group["eps"], group["weight_decay"]
        g = -grad if group["maximize"] else grad
        if wd != 0:
            g = g + wd * param
        square_avg, acc_delta = state["square_avg"], state["acc_delta"]
        square_avg *= rho
        square_avg += (1 - rho) * g * g
        delta = xp.sqrt(acc_delta + eps)
        delta /= xp.sqrt(square_avg + eps)
        delta *= g
        acc_delta *= rho
        acc_delta += (1 - rho) * delta * delta
        param -= lr * delta
        return True

"""RAdam: Adam whose adaptive step is switched on, and rectified, as its variance estimate
becomes tractable."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from .adam import check_adam_args, decayed_gradient, init_moments
from .optimizer import Optimizer, array_module


class RAdam(Optimizer):
    """``torch.optim.RAdam``: ``g = grad + weight_decay * p`` (negated if ``maximize``; with
    ``decoupled_weight_decay`` instead ``p *= 1 - lr * weight_decay``), Adam's moments ``m``
    and ``v``; with ``rho_inf = 2 / (1 - beta2) - 1`` and
    ``rho_t = rho_inf - 2 t beta2^t / (1 - beta2^t)``: when ``rho_t > 5``,
    ``p -= lr * m / (1 - beta1^t) * r_t * sqrt(1 - beta2^t) / (sqrt(v) + eps)`` with the
    rectification ``r_t``, else ``p -= lr * m / (1 - beta1^t)`` (SGD with momentum).

    NOTE: no fused kernel: array operations over each bucket's flat buffers
    (:meth:`Optimizer.update_arrays`; see :class:`dlcore.optim.Adadelta`). The step's scalars
    are computed on the host in float64, as PyTorch does without ``capturable``.

    >>> opt = RAdam(model.parameters(), lr=1e-3)  # doctest: +SKIP
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decoupled_weight_decay: bool = False, *,
                 foreach: bool | None = None, maximize: bool = False,
                 capturable: bool = False, differentiable: bool = False) -> None:
        """``foreach`` is accepted for PyTorch compatibility; ``capturable`` and
        ``differentiable`` only as False."""
        check_adam_args(lr, betas, eps, weight_decay)
        if capturable or differentiable:
            raise NotImplementedError("RAdam: capturable and differentiable are not "
                                      "supported by dlcore")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay, maximize=maximize,
                                      decoupled_weight_decay=decoupled_weight_decay))

    def init_single(self, param: Any, state: dict[str, Any], group: dict[str, Any]) -> None:
        init_moments(param, state)

    def update_arrays(self, grad: Any, param: Any, state: dict[str, Any],
                      group: dict[str, Any], step: int) -> bool:
        xp = array_module(param)
        lr, eps = group["lr"], group["eps"]
        beta1, beta2 = group["betas"]
        g = decayed_gradient(grad, param, group)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg += (1 - beta1) * (g - exp_avg)  # lerp
        exp_avg_sq *= beta2
        exp_avg_sq += (1 - beta2) * g * g
        bias_correction1 = 1 - beta1 ** step
        bias_correction2 = 1 - beta2 ** step
        rho_inf = 2 / (1 - beta2) - 1
        rho_t = rho_inf - 2 * step * (beta2 ** step) / bias_correction2
        update = exp_avg / bias_correction1 * lr
        if rho_t > 5.0:
            rect = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf
                             / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
            update *= math.sqrt(bias_correction2) / (xp.sqrt(exp_avg_sq) + eps)
            update *= rect
        param -= update
        return True

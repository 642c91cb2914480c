"""NAdam: Adam with Nesterov momentum and a momentum schedule."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..tensor import Tensor
from .buckets import Bucket
from .adam import check_adam_args, decayed_gradient, init_moments
from .optimizer import Optimizer, array_module


class NAdam(Optimizer):
    """``torch.optim.NAdam``: ``g = grad + weight_decay * p`` (negated if ``maximize``; with
    ``decoupled_weight_decay`` instead ``p *= 1 - lr * weight_decay``), Adam's moments ``m``
    and ``v``, the momentum schedule ``mu_t = beta1 (1 - 0.96^(t momentum_decay) / 2)`` and
    its running product ``P_t``; then with ``d = sqrt(v / (1 - beta2^t)) + eps``,
    ``p -= lr (1 - mu_t) / (1 - P_t) * g / d + lr mu_{t+1} / (1 - P_t mu_{t+1}) * m / d``.

    NOTE: no fused kernel: array operations over each bucket's flat buffers
    (:meth:`Optimizer.update_arrays`; see :class:`dlcore.optim.Adadelta`). ``mu_product`` is
    not kept per element: it is a function of the step count, computed on the host in float64
    with PyTorch's sequence of products and saved as PyTorch saves it (a scalar per parameter);
    loading recomputes it from ``step`` (the same value unless ``betas[0]`` or
    ``momentum_decay`` changed during the run).

    >>> opt = NAdam(model.parameters(), lr=2e-3)  # doctest: +SKIP
    """

    def __init__(self, params: Iterable[Any], lr: float = 2e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum_decay: float = 4e-3,
                 decoupled_weight_decay: bool = False, *, foreach: bool | None = None,
                 maximize: bool = False, capturable: bool = False,
                 differentiable: bool = False) -> None:
        """``foreach`` is accepted for PyTorch compatibility; ``capturable`` and
        ``differentiable`` only as False."""
        check_adam_args(lr, betas, eps, weight_decay)
        if not 0.0 <= momentum_decay:
            raise ValueError(f"Invalid momentum_decay value: {momentum_decay}")
        if capturable or differentiable:
            raise NotImplementedError("NAdam: capturable and differentiable are not "
                                      "supported by dlcore")
        self._mu_products: dict[tuple[float, float], list[float]] = {}
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay, momentum_decay=momentum_decay,
                                      decoupled_weight_decay=decoupled_weight_decay,
                                      maximize=maximize))

    @staticmethod
    def _mu(beta1: float, momentum_decay: float, step: int) -> float:
        return beta1 * (1.0 - 0.5 * (0.96 ** (step * momentum_decay)))

    def _mu_product(self, group: dict[str, Any], step: int) -> float:
        """``prod_{i <= step} mu_i``, multiplied in PyTorch's order (cached per schedule)."""
        beta1, momentum_decay = group["betas"][0], group["momentum_decay"]
        products = self._mu_products.setdefault((beta1, momentum_decay), [1.0])
        while len(products) <= step:
            products.append(products[-1] * self._mu(beta1, momentum_decay, len(products)))
        return products[step]

    def init_single(self, param: Any, state: dict[str, Any], group: dict[str, Any]) -> None:
        init_moments(param, state)

    def update_arrays(self, grad: Any, param: Any, state: dict[str, Any],
                      group: dict[str, Any], step: int) -> bool:
        xp = array_module(param)
        lr, eps = group["lr"], group["eps"]
        beta1, beta2 = group["betas"]
        g = decayed_gradient(grad, param, group)
        mu = self._mu(beta1, group["momentum_decay"], step)
        mu_next = self._mu(beta1, group["momentum_decay"], step + 1)
        mu_product = self._mu_product(group, step)
        mu_product_next = mu_product * mu_next
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg += (1 - beta1) * (g - exp_avg)  # lerp
        exp_avg_sq *= beta2
        exp_avg_sq += (1 - beta2) * g * g
        denom = xp.sqrt(exp_avg_sq / (1 - beta2 ** step))
        denom += eps
        param += (-lr * (1.0 - mu) / (1.0 - mu_product)) * g / denom
        param += ((-lr * mu_next) / (1.0 - mu_product_next)) * exp_avg / denom
        return True

    def _param_state(self, bucket: Bucket, i: int) -> dict[str, Any]:
        entry = super()._param_state(bucket, i)
        if entry:
            group = next(g for g in self.param_groups
                         if any(p is bucket.params[i] for p in g["params"]))
            entry["mu_product"] = Tensor(self._mu_product(group, bucket.steps[i]))
        return entry

    def _load_param_state(self, bucket: Bucket, i: int, entry: dict[str, Any]) -> None:
        super()._load_param_state(bucket, i, {k: v for k, v in entry.items()
                                              if k != "mu_product"})

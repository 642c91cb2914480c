"""Gradient attributions: saliency and integrated gradients (Captum's definitions).

Shape letters: N examples, S integration steps. An attribution has the inputs' shape and says
how much each input element contributes to the score of each example's ``target`` class.

* :func:`saliency` (Simonyan et al., 2013): ``|d score / d x|``.
* :func:`integrated_gradients` (Sundararajan et al., 2017): ``(x - x') * integral over a in
  [0, 1] of d score / d x at x' + a (x - x')``, for a baseline ``x'``. By completeness, the
  attributions of an example sum to ``score(x) - score(x')``; the difference of the
  quadrature from that is the convergence delta, which falls as ``n_steps`` grows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..autograd import no_grad
from ..creation import tensor
from ..ops import cat
from ..tensor import Tensor
from ._common import (Target, broadcast_baselines, check_input, input_gradients, scores,
                      targets)

METHODS = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid",
           "gausslegendre")


def saliency(model: Any, inputs: Tensor, target: Target = None, abs: bool = True) -> Tensor:
    """The gradient of each example's ``target`` score with respect to its input, in
    absolute value (``abs=False``: signed), as Captum's ``Saliency``.

    >>> w = dlcore.nn.Linear(3, 2)
    >>> saliency(w, dlcore.randn(4, 3), target=1).shape
    (4, 3)
    """
    x = check_input("saliency", model, inputs)
    g = input_gradients("saliency", model, x, targets("saliency", target, x.shape[0]))
    return g.abs() if abs else g


def approximation(method: str, n_steps: int) -> tuple[list[float], list[float]]:
    """The points ``alphas`` in [0, 1] and weights (step sizes) of ``method``'s quadrature of
    an integral over [0, 1] with ``n_steps`` points (Captum's methods and names)."""
    if method not in METHODS:
        raise ValueError(f"integrated_gradients: method must be one of {', '.join(METHODS)}; "
                         f"got {method!r}")
    if not isinstance(n_steps, int) or n_steps < (2 if method == "riemann_trapezoid" else 1):
        raise ValueError(f"integrated_gradients: n_steps must be an int >= "
                         f"{2 if method == 'riemann_trapezoid' else 1} for {method}, got "
                         f"{n_steps!r}")
    n = n_steps
    if method == "gausslegendre":
        points, weights = np.polynomial.legendre.leggauss(n)  # on [-1, 1]: map to [0, 1]
        return (0.5 * (points + 1)).tolist(), (0.5 * weights).tolist()
    if method == "riemann_trapezoid":
        steps = [1 / (n - 1)] * n
        steps[0] = steps[-1] = 1 / (2 * (n - 1))
        return np.linspace(0, 1, n).tolist(), steps
    start = {"riemann_left": 0.0, "riemann_right": 1 / n, "riemann_middle": 1 / (2 * n)}[method]
    return (start + np.arange(n) / n).tolist(), [1 / n] * n


def integrated_gradients(model: Any, inputs: Tensor, target: Target = None,
                         baselines: Any = None, n_steps: int = 50,
                         method: str = "gausslegendre", internal_batch_size: int | None = None,
                         return_convergence_delta: bool = False) -> Any:
    """Integrated gradients of each example's ``target`` score from ``baselines`` (None:
    zeros; a number; a Tensor broadcastable to the inputs) to ``inputs``, with ``n_steps``
    points of ``method``'s quadrature (Captum's default, Gauss-Legendre; or
    ``riemann_trapezoid``, ``riemann_left``, ``riemann_right``, ``riemann_middle``).

    The model runs on the N examples at all S points at once, (S * N, ...), or on
    ``internal_batch_size`` rows at a time (at least one point's N). With
    ``return_convergence_delta=True`` it returns ``(attributions, delta)``, ``delta`` (N,)
    being each example's sum of attributions minus ``score(input) - score(baseline)``.

    >>> w = dlcore.nn.Linear(3, 2)
    >>> integrated_gradients(w, dlcore.randn(4, 3), target=0).shape
    (4, 3)
    """
    op = "integrated_gradients"
    x = check_input(op, model, inputs)
    alphas, weights = approximation(method, n_steps)
    base = broadcast_baselines(op, baselines, x)
    n = x.shape[0]
    t = targets(op, target, n)
    if internal_batch_size is not None and (not isinstance(internal_batch_size, int)
                                            or internal_batch_size < 1):
        raise ValueError(f"{op}: internal_batch_size must be an int >= 1, got "
                         f"{internal_batch_size!r}")
    per_call = n_steps if internal_batch_size is None else max(1, internal_batch_size // n)
    with no_grad():
        diff = x - base
    total: Tensor | None = None
    for start in range(0, n_steps, per_call):
        a, w = alphas[start:start + per_call], weights[start:start + per_call]
        with no_grad():
            points = cat([base + diff * alpha for alpha in a])  # (S' * N, ...)
        g = input_gradients(op, model, points, None if t is None else np.tile(t, len(a)))
        with no_grad():
            w_t = tensor(w, dtype=x.dtype, device=x.device).reshape(-1, *([1] * x.ndim))
            part = (g.reshape(len(a), *x.shape) * w_t).sum(0)
            total = part if total is None else total + part
    assert total is not None  # n_steps >= 1
    with no_grad():
        attributions = diff * total
        if not return_convergence_delta:
            return attributions
        delta = attributions.reshape(n, -1).sum(1) - (scores(op, model(x), t)
                                                      - scores(op, model(base), t))
    return attributions, delta

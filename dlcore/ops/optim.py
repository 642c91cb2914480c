"""Optimizer updates: the kernel family behind ``dlcore.optim``.

Each optimizer's update is one elementwise rule over flat buffers (``dlcore.optim`` keeps a
group's parameters, gradients and state contiguous), applied in place::

    update(device, "adam_step", (param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq),
           scalars, flags)

``arrays`` are the rule's array arguments in the kernel's order (``None`` for state an option
leaves unused), ``scalars`` its per-step floats (computed once on the host in float64, as
PyTorch does) and ``flags`` its option bits (``MAXIMIZE``, ``ADAM_AMSGRAD``, ...: the #defines of
``kernels/optim.cu``). The
kernels (:mod:`dlcore.ops.optim_cuda`) and the NumPy rules (:mod:`dlcore.ops.optim_cpu`, their
twins and test oracle) take exactly these arguments. Not differentiable: optimizers run under
``no_grad`` on raw arrays.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..kernels import KernelFamily
from ..tensor import Tensor
from . import optim_cpu, optim_cuda
from ._check import kwargs_case, seeded_arrays
from .optim_cpu import (ADAM_AMSGRAD, ADAM_DECOUPLED, MAXIMIZE, RMSPROP_CENTERED,
                        RMSPROP_MOMENTUM, SGD_FIRST_STEP, SGD_NESTEROV)

__all__ = ["ADAM_AMSGRAD", "ADAM_DECOUPLED", "MAXIMIZE", "OPTIM", "RMSPROP_CENTERED",
           "RMSPROP_MOMENTUM", "RULES", "SGD_FIRST_STEP", "SGD_NESTEROV", "update"]

RULES = ("sgd_step", "adam_step", "rmsprop_step", "adagrad_step")

OPTIM = KernelFamily("optimizer update", optim_cuda.SOURCE, cpu=optim_cpu, kernel=optim_cuda)


def update(device: Any, rule: str, arrays: Sequence[Any], scalars: Sequence[float],
           flags: int) -> None:
    """Apply update rule ``rule`` (one of :data:`RULES`) in place to flat arrays on
    ``device``; ``arrays[0]`` is the parameter buffer."""
    if rule not in RULES:
        raise ValueError(f"optimizer update: unknown rule {rule!r}; expected one of "
                         f"{', '.join(RULES)}")
    impl = OPTIM.select(device, arrays[0].dtype, rule)
    impl.update(device, rule, arrays, scalars, flags)


# ---- dlcore check cases: the kernels against the cpu path ---------------------------------

Scalars = Callable[[int], tuple[float, ...]]


def _check_rule(device: Any, rule: str, n_state: int, scalars: Scalars,
                flags: Callable[[int], int], steps: int = 3) -> dict[str, np.ndarray]:
    """Three updates of a 317-element buffer (not a multiple of any block size) from zero
    state, with seeded parameters and gradients."""
    shape = (317,)
    param = Tensor(seeded_arrays(4, shape)[0], device=device).data
    state = [Tensor(np.zeros(shape, np.float32), device=device).data for _ in range(n_state)]
    for step in range(1, steps + 1):
        grad = Tensor(seeded_arrays(10 + step, shape)[0], device=device).data
        update(device, rule, (param, grad, *state), scalars(step), flags(step))
    arrays = {"param": param} | {f"state {i}": s for i, s in enumerate(state)}
    return {k: Tensor._make(a, device).numpy() for k, a in arrays.items()}


def _adam_scalars(lr: float, weight_decay: float) -> Scalars:
    def scalars(t: int) -> tuple[float, ...]:
        return (1 - lr * weight_decay, weight_decay, 0.1, 0.999, 0.001, lr / (1 - 0.9 ** t),
                math.sqrt(1 - 0.999 ** t), 1e-8)
    return scalars


_CHECKS: dict[str, tuple[str, int, Scalars, Callable[[int], int]]] = {
    "sgd momentum nesterov step": ("sgd_step", 1, lambda t: (0.1, 0.9, 1.0, 1e-2),
                                   lambda t: SGD_NESTEROV | SGD_FIRST_STEP * (t == 1)),
    "adam step": ("adam_step", 3, _adam_scalars(1e-2, 0.0), lambda t: 0),
    "adamw amsgrad step": ("adam_step", 3, _adam_scalars(1e-2, 1e-2),
                           lambda t: ADAM_AMSGRAD | ADAM_DECOUPLED),
    "rmsprop centered momentum step": ("rmsprop_step", 3,
                                       lambda t: (1e-2, 0.99, 0.01, 1e-8, 0.0, 0.9),
                                       lambda t: RMSPROP_CENTERED | RMSPROP_MOMENTUM),
    "adagrad maximize step": ("adagrad_step", 1, lambda t: (0.1, 1e-2, 1e-10),
                              lambda t: MAXIMIZE),
}
for _name, (_rule, _n_state, _scalars, _flags) in _CHECKS.items():
    OPTIM.check(_name)(kwargs_case(_check_rule, rule=_rule, n_state=_n_state,
                                   scalars=_scalars, flags=_flags))
del _name, _rule, _n_state, _scalars, _flags

"""Optimizer updates on the CPU: the NumPy twins of ``kernels/optim.cu``, argument for
argument (the test oracle of the kernels).

Each rule updates its arrays in place with the operations of PyTorch's single-tensor
implementation, in the kernels' order. :func:`update` runs a rule over the flat buffers in
chunks of :data:`CPU_CHUNK` elements: measured with the optim bench suite, 2-3x faster than
whole-buffer operations at 10M parameters, since a chunk of every operand (param, grad, 2-3
state arrays, 2 temporaries) of float32 fits in a 1-2 MiB L2 and DRAM sees each array once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

# flag bits, the #defines of kernels/optim.cu (MAXIMIZE is bit 0 of every rule); the
# optimizers import them through dlcore.ops.optim
MAXIMIZE = 1
SGD_NESTEROV, SGD_FIRST_STEP = 2, 4
ADAM_AMSGRAD, ADAM_DECOUPLED = 2, 4
RMSPROP_CENTERED, RMSPROP_MOMENTUM = 2, 4
CPU_CHUNK = 1 << 16


def update(device: Any, rule: str, arrays: Sequence[Any], scalars: Sequence[float],
           flags: int) -> None:
    fn = RULES[rule]
    n = int(arrays[0].size)
    for c in range(0, n, CPU_CHUNK):
        sl = slice(c, c + CPU_CHUNK)
        fn(*[None if a is None else a[sl] for a in arrays], *scalars, flags)


def _signed(grad: np.ndarray, flags: int) -> np.ndarray:
    return -grad if flags & MAXIMIZE else grad


def sgd_step(param: np.ndarray, grad: np.ndarray, momentum_buffer: np.ndarray | None,
             lr: float, momentum: float, one_minus_dampening: float, weight_decay: float,
             flags: int) -> None:
    """g = grad (+ wd * p); b = momentum * b + (1 - dampening) * g (b = g on the first step);
    g = g + momentum * b (Nesterov) or b; p -= lr * g."""
    g = _signed(grad, flags)
    if weight_decay != 0:
        g = g + param * weight_decay
    if momentum != 0:
        assert momentum_buffer is not None
        if flags & SGD_FIRST_STEP:
            momentum_buffer[...] = g
        else:
            momentum_buffer *= momentum
            momentum_buffer += g * one_minus_dampening
        g = g + momentum_buffer * momentum if flags & SGD_NESTEROV else momentum_buffer
    param -= g * lr


def adam_step(param: np.ndarray, grad: np.ndarray, exp_avg: np.ndarray,
              exp_avg_sq: np.ndarray, max_exp_avg_sq: np.ndarray | None, decay: float,
              weight_decay: float, one_minus_beta1: float, beta2: float,
              one_minus_beta2: float, step_size: float, bias_correction2_sqrt: float,
              eps: float, flags: int) -> None:
    """Adam / AdamW: g = grad (+ wd * p, or p *= 1 - lr * wd when decoupled);
    m += (g - m) * (1 - beta1); v = v * beta2 + g * (1 - beta2) * g; amsgrad: vmax = max(vmax,
    v); p -= step_size * m / (sqrt(v or vmax) / sqrt(1 - beta2^t) + eps)."""
    g = _signed(grad, flags)
    if weight_decay != 0:
        if flags & ADAM_DECOUPLED:
            param *= decay
        else:
            g = g + param * weight_decay
    exp_avg += (g - exp_avg) * one_minus_beta1
    exp_avg_sq *= beta2
    exp_avg_sq += g * one_minus_beta2 * g
    if flags & ADAM_AMSGRAD:
        assert max_exp_avg_sq is not None
        np.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        second = max_exp_avg_sq
    else:
        second = exp_avg_sq
    denom = np.sqrt(second)
    denom /= bias_correction2_sqrt
    denom += eps
    step = exp_avg / denom
    step *= step_size
    param -= step


def rmsprop_step(param: np.ndarray, grad: np.ndarray, square_avg: np.ndarray,
                 grad_avg: np.ndarray | None, momentum_buffer: np.ndarray | None, lr: float,
                 alpha: float, one_minus_alpha: float, eps: float, weight_decay: float,
                 momentum: float, flags: int) -> None:
    """g = grad (+ wd * p); v = v * alpha + g * (1 - alpha) * g; centered: ga += (g - ga) *
    (1 - alpha), avg = sqrt(v - ga * ga) + eps, else sqrt(v) + eps; momentum: b = b *
    momentum + g / avg, p -= b * lr; else p -= (g / avg) * lr."""
    g = _signed(grad, flags)
    if weight_decay != 0:
        g = g + param * weight_decay
    square_avg *= alpha
    square_avg += g * one_minus_alpha * g
    if flags & RMSPROP_CENTERED:
        assert grad_avg is not None
        grad_avg += (g - grad_avg) * one_minus_alpha
        avg = square_avg - grad_avg * grad_avg
        np.sqrt(avg, out=avg)
    else:
        avg = np.sqrt(square_avg)
    avg += eps
    if flags & RMSPROP_MOMENTUM:
        assert momentum_buffer is not None
        momentum_buffer *= momentum
        momentum_buffer += g / avg
        param -= momentum_buffer * lr
    else:
        step = g / avg
        step *= lr
        param -= step


def adagrad_step(param: np.ndarray, grad: np.ndarray, sum: np.ndarray, clr: float,
                 weight_decay: float, eps: float, flags: int) -> None:
    """g = grad (+ wd * p); s += g * g; p -= (g / (sqrt(s) + eps)) * clr, where clr = lr / (1 +
    (t - 1) * lr_decay) comes from the host."""
    g = _signed(grad, flags)
    if weight_decay != 0:
        g = g + param * weight_decay
    sum += g * g
    std = np.sqrt(sum)
    std += eps
    step = g / std
    step *= clr
    param -= step


RULES: dict[str, Callable[..., None]] = {
    "sgd_step": sgd_step, "adam_step": adam_step, "rmsprop_step": rmsprop_step,
    "adagrad_step": adagrad_step}

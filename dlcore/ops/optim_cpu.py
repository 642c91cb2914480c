"""Optimizer updates on the CPU: the NumPy twins of ``kernels/optim.cu``, argument for
argument (the test oracle of the kernels).

Each rule updates its arrays in place with the operations of PyTorch's single-tensor
implementation, in the kernels' order. :func:`update` runs a rule over the flat buffers in
chunks of :data:`CPU_CHUNK` elements: measured with the optim bench suite, 2-3x faster than
whole-buffer operations at 10M parameters, since a chunk of every operand (param, grad, 2-3
state arrays, 2 temporaries) of float32 fits in a 1-2 MiB L2 and DRAM sees each array once.
:func:`unscale_grads` (GradScaler's pass) is chunked the same way, so its inf/NaN test and its
multiplication share one read of the gradients from DRAM.

float16 buffers are computed in float32, as the kernels compute ``__half`` in float: each
chunk is widened (exactly) into float32 copies, the rule runs on them with float32 scalars,
and the parameter and state chunks are rounded back to float16, once per stored value
(NumPy's float16 ufuncs would round after every operation, and round eps = 1e-8 to zero).
The kernels contract a*b+c into one fused multiply-add, which these rules cannot, so the two
paths can differ by a float32 ulp before the rounding to float16, and so by one float16 ulp
after it, for a value that lands next to a rounding boundary (tests/optim/test_half_steps.py).

GradScaler's device-side arguments have twins here too (on ``cpu`` the "device" is the host, so
reading them is free): ``found_inf`` (a rule does nothing when it is set), ``step_scalars`` (what
:func:`count_steps` computed, replacing the host's step scalars), the scale array of
:func:`unscale_grads`, and :func:`update_scale` (GradScaler.update).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

# flag bits, the #defines of kernels/optim.cu (MAXIMIZE is bit 0 of every rule); the
# optimizers import them through dlcore.ops.optim
MAXIMIZE = 1
SGD_NESTEROV, SGD_FIRST_STEP = 2, 4
ADAM_AMSGRAD, ADAM_DECOUPLED = 2, 4
RMSPROP_CENTERED, RMSPROP_MOMENTUM = 2, 4
# every array starts on a 16-byte boundary: the kernels move 16 bytes per access (the NumPy
# rules have nothing to choose and ignore it)
ALIGNED16 = 8
# found_inf is read: a set flag skips the whole update (every rule; set by update() itself)
FOUND_INF = 16
ADAM_DEVICE_STEP, ADAGRAD_DEVICE_STEP = 32, 2
# the rules whose per-step scalars can come from the device (count_steps), and their flag bit
DEVICE_STEP = {"adam_step": ADAM_DEVICE_STEP, "adagrad_step": ADAGRAD_DEVICE_STEP}
UNSCALE_DEVICE_SCALE = 2  # unscale_grads: inv_scale = 1 / scale[0], in float32
STEPS_ADAM, STEPS_ADAGRAD = 2, 4  # count_steps: which scalars to compute
CPU_CHUNK = 1 << 16
SCRATCH = 3  # chunk-sized temporaries a rule needs at most


def compute_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype the rules compute in for ``dtype`` buffers: float32 for float16, else itself
    (the kernels' arithmetic type; their scalars are passed in it)."""
    return np.dtype(np.float32) if dtype == np.float16 else np.dtype(dtype)


def update(device: Any, rule: str, arrays: Sequence[Any], scalars: Sequence[float],
           flags: int, found_inf: Any = None, step_scalars: Any = None) -> None:
    if found_inf is not None and found_inf[0]:
        return
    if step_scalars is not None:
        scalars = _with_step_scalars(rule, scalars, step_scalars)
    fn = RULES[rule]
    n = int(arrays[0].size)
    dtype = compute_dtype(arrays[0].dtype)
    # NOTE: the rules write their intermediates into these, never into new arrays: a
    # 64K-element temporary is past glibc's 128 KiB mmap threshold, so each would be a fresh
    # mapping and its page faults (measured: Adam over 10M float32 in 1000 tensors 3-4x
    # slower than in 10, whose larger freed arrays happen to raise that threshold)
    scratch = [np.empty(min(n, CPU_CHUNK), dtype) for _ in range(SCRATCH)]
    # float16: float32 copies of each array's chunk (by position), reused from chunk to chunk
    wide = {} if dtype == arrays[0].dtype else {
        i: np.empty(min(n, CPU_CHUNK), dtype) for i, a in enumerate(arrays) if a is not None}
    for c in range(0, n, CPU_CHUNK):
        sl = slice(c, c + CPU_CHUNK)
        size = min(n - c, CPU_CHUNK)
        chunks: list[Any] = [None if a is None else a[sl] for a in arrays]
        tmp = [t[:size] for t in scratch]
        if not wide:
            fn(*chunks, *scalars, flags, tmp)
            continue
        work = list(chunks)
        for i, w in wide.items():
            work[i] = w[:size]
            np.copyto(work[i], chunks[i])
        fn(*work, *scalars, flags, tmp)
        for i in wide:
            if i != 1:  # arrays[1] is the gradient, only read
                np.copyto(chunks[i], work[i], casting="same_kind")


def _with_step_scalars(rule: str, scalars: Sequence[float], step_scalars: np.ndarray
                       ) -> list[float]:
    """The rule's scalars with the per-step ones from ``step_scalars`` (Python floats, which
    the rules round to the arithmetic dtype as they round the host's)."""
    out = list(scalars)
    if rule == "adam_step":
        out[5], out[6] = float(step_scalars[0]), float(step_scalars[1])
    else:
        out[0] = float(step_scalars[0])
    return out


def count_steps(device: Any, steps: np.ndarray, lr: float, a: float, b: float,
                step_scalars: np.ndarray, flags: int, found_inf: Any) -> None:
    """Unless ``found_inf`` is set: steps += 1, then the step's scalars from t = steps[0], in
    float64 with the optimizers' host formulas (STEPS_ADAM: lr / (1 - a^t), sqrt(1 - b^t);
    STEPS_ADAGRAD: lr / (1 + (t - 1) * a))."""
    if found_inf is not None and found_inf[0]:
        return
    steps += np.float32(1)
    t = float(steps[0])
    if flags & STEPS_ADAM:
        step_scalars[0] = lr / (1 - a ** t)
        step_scalars[1] = math.sqrt(1 - b ** t)
    elif flags & STEPS_ADAGRAD:
        step_scalars[0] = lr / (1 + (t - 1) * a)


def update_scale(device: Any, scale: np.ndarray, growth_tracker: np.ndarray,
                 found_inf: np.ndarray, growth_factor: float, backoff_factor: float,
                 growth_interval: int) -> None:
    """GradScaler.update, PyTorch's _amp_update_scale_: on any set flag of ``found_inf``,
    scale *= backoff_factor and the tracker restarts; else the tracker counts, and at
    growth_interval scale *= growth_factor (kept only if finite) and the tracker restarts. The
    products in float64, rounded to float32 once; the flags are cleared."""
    found = bool(found_inf.any())
    found_inf[...] = 0
    if found:
        scale[0] = np.float32(float(scale[0]) * backoff_factor)
        growth_tracker[0] = 0
        return
    successful = int(growth_tracker[0]) + 1
    if successful == growth_interval:
        with np.errstate(over="ignore"):
            grown = np.float32(float(scale[0]) * growth_factor)
        if np.isfinite(grown):
            scale[0] = grown
        growth_tracker[0] = 0
    else:
        growth_tracker[0] = successful


def unscale_grads(device: Any, grad: np.ndarray, inv_scale: Any, found_inf: np.ndarray,
                  flags: int) -> None:
    """found_inf[0] = 1 if any element of ``grad`` is inf or NaN (tested before scaling, as
    PyTorch does; never cleared here), then grad *= inv_scale, in place (float16: the product
    in float32, rounded once, as the kernel computes it). ``inv_scale``: the host's float, or
    GradScaler's scale array, whose float32 reciprocal is used."""
    dtype = compute_dtype(grad.dtype)
    if isinstance(inv_scale, np.ndarray):
        inv_scale = np.float32(1) / inv_scale.reshape(-1)[0]
    scale = dtype.type(inv_scale)
    for c in range(0, int(grad.size), CPU_CHUNK):
        chunk = grad[c:c + CPU_CHUNK]
        if not found_inf[0] and not np.isfinite(chunk).all():
            found_inf[0] = 1
        if dtype == grad.dtype:
            chunk *= scale
        else:
            np.copyto(chunk, chunk.astype(dtype) * scale, casting="same_kind")


Scratch = list[np.ndarray]


def _gradient(grad: np.ndarray, param: np.ndarray, weight_decay: float, flags: int,
              tmp: Scratch) -> np.ndarray:
    """g = grad, negated if maximizing, plus param * weight_decay (in tmp[0] unless it is
    grad itself; tmp[1] is overwritten)."""
    g = np.negative(grad, out=tmp[0]) if flags & MAXIMIZE else grad
    if weight_decay != 0:
        np.multiply(param, weight_decay, out=tmp[1])
        g = np.add(g, tmp[1], out=tmp[0])
    return g


def sgd_step(param: np.ndarray, grad: np.ndarray, momentum_buffer: np.ndarray | None,
             lr: float, momentum: float, one_minus_dampening: float, weight_decay: float,
             flags: int, tmp: Scratch) -> None:
    """g = grad (+ wd * p); b = momentum * b + (1 - dampening) * g (b = g on the first step);
    g = g + momentum * b (Nesterov) or b; p -= lr * g."""
    g = _gradient(grad, param, weight_decay, flags, tmp)
    t = tmp[1]
    if momentum != 0:
        assert momentum_buffer is not None
        if flags & SGD_FIRST_STEP:
            momentum_buffer[...] = g
        else:
            momentum_buffer *= momentum
            momentum_buffer += np.multiply(g, one_minus_dampening, out=t)
        if flags & SGD_NESTEROV:
            g = np.add(g, np.multiply(momentum_buffer, momentum, out=t), out=tmp[0])
        else:
            g = momentum_buffer
    param -= np.multiply(g, lr, out=t)


def adam_step(param: np.ndarray, grad: np.ndarray, exp_avg: np.ndarray,
              exp_avg_sq: np.ndarray, max_exp_avg_sq: np.ndarray | None, decay: float,
              weight_decay: float, one_minus_beta1: float, beta2: float,
              one_minus_beta2: float, step_size: float, bias_correction2_sqrt: float,
              eps: float, flags: int, tmp: Scratch) -> None:
    """Adam / AdamW: g = grad (+ wd * p, or p *= 1 - lr * wd when decoupled);
    m += (g - m) * (1 - beta1); v = v * beta2 + g * (1 - beta2) * g; amsgrad: vmax = max(vmax,
    v); p -= step_size * m / (sqrt(v or vmax) / sqrt(1 - beta2^t) + eps)."""
    if weight_decay != 0 and flags & ADAM_DECOUPLED:
        param *= decay
        g = _gradient(grad, param, 0.0, flags, tmp)
    else:
        g = _gradient(grad, param, weight_decay, flags, tmp)
    t = tmp[1]
    np.subtract(g, exp_avg, out=t)
    t *= one_minus_beta1
    exp_avg += t
    exp_avg_sq *= beta2
    np.multiply(g, one_minus_beta2, out=t)
    t *= g
    exp_avg_sq += t
    if flags & ADAM_AMSGRAD:
        assert max_exp_avg_sq is not None
        np.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        second = max_exp_avg_sq
    else:
        second = exp_avg_sq
    denom = np.sqrt(second, out=t)
    denom /= bias_correction2_sqrt
    denom += eps
    step = np.divide(exp_avg, denom, out=t)
    step *= step_size
    param -= step


def rmsprop_step(param: np.ndarray, grad: np.ndarray, square_avg: np.ndarray,
                 grad_avg: np.ndarray | None, momentum_buffer: np.ndarray | None, lr: float,
                 alpha: float, one_minus_alpha: float, eps: float, weight_decay: float,
                 momentum: float, flags: int, tmp: Scratch) -> None:
    """g = grad (+ wd * p); v = v * alpha + g * (1 - alpha) * g; centered: ga += (g - ga) *
    (1 - alpha), avg = sqrt(v - ga * ga) + eps, else sqrt(v) + eps; momentum: b = b *
    momentum + g / avg, p -= b * lr; else p -= (g / avg) * lr."""
    g = _gradient(grad, param, weight_decay, flags, tmp)
    t, avg = tmp[1], tmp[2]
    square_avg *= alpha
    np.multiply(g, one_minus_alpha, out=t)
    t *= g
    square_avg += t
    if flags & RMSPROP_CENTERED:
        assert grad_avg is not None
        np.subtract(g, grad_avg, out=t)
        t *= one_minus_alpha
        grad_avg += t
        np.subtract(square_avg, np.multiply(grad_avg, grad_avg, out=t), out=avg)
        np.sqrt(avg, out=avg)
    else:
        np.sqrt(square_avg, out=avg)
    avg += eps
    if flags & RMSPROP_MOMENTUM:
        assert momentum_buffer is not None
        momentum_buffer *= momentum
        momentum_buffer += np.divide(g, avg, out=t)
        param -= np.multiply(momentum_buffer, lr, out=t)
    else:
        step = np.divide(g, avg, out=t)
        step *= lr
        param -= step


def adagrad_step(param: np.ndarray, grad: np.ndarray, sum: np.ndarray, clr: float,
                 weight_decay: float, eps: float, flags: int, tmp: Scratch) -> None:
    """g = grad (+ wd * p); s += g * g; p -= (g / (sqrt(s) + eps)) * clr, where clr = lr / (1 +
    (t - 1) * lr_decay) comes from the host."""
    g = _gradient(grad, param, weight_decay, flags, tmp)
    t = tmp[1]
    sum += np.multiply(g, g, out=t)
    std = np.sqrt(sum, out=t)
    std += eps
    step = np.divide(g, std, out=t)
    step *= clr
    param -= step


RULES: dict[str, Callable[..., None]] = {
    "sgd_step": sgd_step, "adam_step": adam_step, "rmsprop_step": rmsprop_step,
    "adagrad_step": adagrad_step}

"""Optimizer updates: the kernel family behind ``dlcore.optim``.

Each optimizer's update is one elementwise rule over flat buffers (``dlcore.optim`` keeps a
group's parameters, gradients and state contiguous), applied in place::

    update(device, "adam_step", (param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq),
           scalars, flags)

``arrays`` are the rule's array arguments in the kernel's order (``None`` for state an option
leaves unused), ``scalars`` its per-step floats (computed once on the host in float64, as
PyTorch does) and ``flags`` its option bits (``MAXIMIZE``, ``ADAM_AMSGRAD``, ...: the #defines of
``kernels/optim.cu``). ``ALIGNED16`` is the caller's promise that every array starts on a
16-byte boundary (:func:`aligned16` tells): the kernels then move 16 bytes per access
(``float4``, ``double2``, eight halves); the optimizer gives it for its own buffers when the
parameters updated start on such a boundary (always, for a whole bucket).
:func:`unscale_grads` is GradScaler's fused pass over a flat gradient buffer: the inf/NaN test
and the multiplication by ``1 / scale`` in one read. The kernels (:mod:`dlcore.ops.optim_cuda`)
and the NumPy rules (:mod:`dlcore.ops.optim_cpu`, their twins and test oracle) take exactly
these arguments. Both take float16, float32 and float64 buffers; float16 parameters keep
float16 state (as PyTorch does) and every rule runs in float32 on them, rounding each stored
value to float16 once. Not differentiable: optimizers run under ``no_grad`` on raw arrays.

Nothing per step from the host, for GradScaler and CUDA graphs (``capturable`` optimizers):
``update(..., found_inf=flag)`` makes the whole update do nothing when the device flag is set
(no host read); :func:`count_steps` keeps step counts on the device and computes a step's
scalars there (float64, the host's formulas) for ``update(..., step_scalars=...)`` to read;
:func:`unscale_grads` takes GradScaler's device scale array instead of a host ``1 / scale``;
:func:`update_scale` is ``GradScaler.update`` (PyTorch's ``_amp_update_scale_``).
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
from .optim_cpu import (ADAM_AMSGRAD, ADAM_DECOUPLED, ALIGNED16, MAXIMIZE, RMSPROP_CENTERED,
                        RMSPROP_MOMENTUM, SGD_FIRST_STEP, SGD_NESTEROV, STEPS_ADAGRAD, STEPS_ADAM)

__all__ = ["ADAM_AMSGRAD", "ADAM_DECOUPLED", "ALIGNED16", "MAXIMIZE", "OPTIM",
           "RMSPROP_CENTERED", "RMSPROP_MOMENTUM", "RULES", "SGD_FIRST_STEP", "SGD_NESTEROV",
           "STEPS_ADAGRAD", "STEPS_ADAM", "aligned16", "count_steps", "unscale_grads", "update",
           "update_scale"]

RULES = ("sgd_step", "adam_step", "rmsprop_step", "adagrad_step")

OPTIM = KernelFamily("optimizer update", optim_cuda.SOURCE, cpu=optim_cpu, kernel=optim_cuda,
                     kernel_dtypes=optim_cuda.KERNEL_DTYPES)


def update(device: Any, rule: str, arrays: Sequence[Any], scalars: Sequence[float],
           flags: int, found_inf: Any = None, step_scalars: Any = None) -> None:
    """Apply update rule ``rule`` (one of :data:`RULES`) in place to flat arrays on
    ``device``; ``arrays[0]`` is the parameter buffer. ``found_inf``: a 1-element int32 array
    on ``device``; when it is nonzero the update does nothing (read by the kernel, not the
    host). ``step_scalars`` (``adam_step``, ``adagrad_step``): :func:`count_steps`'s float64
    array, whose values replace the step scalars (Adam's step size and sqrt of the second
    bias correction, Adagrad's clr) in ``scalars``."""
    if rule not in RULES:
        raise ValueError(f"optimizer update: unknown rule {rule!r}; expected one of "
                         f"{', '.join(RULES)}")
    impl = OPTIM.select(device, arrays[0].dtype, rule)
    impl.update(device, rule, arrays, scalars, flags, found_inf, step_scalars)


def unscale_grads(device: Any, grad: Any, inv_scale: Any, found_inf: Any,
                  flags: int = 0) -> None:
    """``grad *= inv_scale`` in place over a flat buffer on ``device``, setting
    ``found_inf[0]`` (an int32 array on the same device) to 1 if any element was inf or NaN
    before (it is never cleared here: one flag can collect several buffers). ``inv_scale``
    is a float, or GradScaler's scale (a 1-element float32 array on ``device``), whose
    float32 reciprocal is then taken in the kernel."""
    impl = OPTIM.select(device, grad.dtype, "unscale_grads")
    impl.unscale_grads(device, grad, inv_scale, found_inf, flags)


def count_steps(device: Any, steps: Any, lr: float, a: float, b: float, step_scalars: Any,
                flags: int, found_inf: Any = None) -> None:
    """Device step counts: unless ``found_inf`` is set, ``steps += 1`` (a float32 array of
    equal counts on ``device``), then the new step's scalars into ``step_scalars`` (2 float64)
    for the next :func:`update`: ``STEPS_ADAM`` (a, b = beta1, beta2) or ``STEPS_ADAGRAD``
    (a = lr_decay), or none (flags 0: counting only). One thread."""
    OPTIM.select(device, steps.dtype, "count_steps").count_steps(
        device, steps, lr, a, b, step_scalars, flags, found_inf)


def update_scale(device: Any, scale: Any, growth_tracker: Any, found_inf: Any,
                 growth_factor: float, backoff_factor: float, growth_interval: int) -> None:
    """GradScaler.update on the device (PyTorch's ``_amp_update_scale_``): ``scale`` float32
    and ``growth_tracker`` int32 (1 element each), ``found_inf`` the int32 flags of the
    iteration's optimizers, any set meaning an inf/NaN (cleared afterwards). One thread."""
    OPTIM.select(device, scale.dtype, "update_scale").update_scale(
        device, scale, growth_tracker, found_inf, growth_factor, backoff_factor,
        growth_interval)


def aligned16(*arrays: Any) -> bool:
    """Whether every array starts on a 16-byte boundary (what ``ALIGNED16`` promises): a
    CuPy array's device pointer, a NumPy array's address (the emulator keeps it modulo 16)."""
    for a in arrays:
        address = a.ctypes.data if isinstance(a, np.ndarray) else a.data.ptr
        if address % 16:
            return False
    return True


# ---- dlcore check cases: the kernels against the cpu path ---------------------------------

Scalars = Callable[[int], tuple[float, ...]]


def _check_rule(device: Any, rule: str, n_state: int, scalars: Scalars,
                flags: Callable[[int], int], steps: int = 3, vectors: bool = False,
                dtype: Any = np.float32) -> dict[str, np.ndarray]:
    """Three updates of a 317-element buffer (not a multiple of any block size or vector
    width) from zero state, with seeded parameters and gradients; ``vectors``: with
    ``ALIGNED16`` where the buffers allow it (the kernels' 16-byte path and its scalar tail);
    ``dtype``: the storage type of every buffer (results compared in float32)."""
    shape = (317,)
    param = Tensor(seeded_arrays(4, shape)[0].astype(dtype), device=device)._data
    state = [Tensor(np.zeros(shape, dtype), device=device)._data for _ in range(n_state)]
    for step in range(1, steps + 1):
        grad = Tensor(seeded_arrays(10 + step, shape)[0].astype(dtype), device=device)._data
        arrays = (param, grad, *state)
        aligned = ALIGNED16 if vectors and aligned16(*arrays) else 0
        update(device, rule, arrays, scalars(step), flags(step) | aligned)
    named = {"param": param} | {f"state {i}": s for i, s in enumerate(state)}
    return {k: Tensor._make(a, device).numpy().astype(np.float32) for k, a in named.items()}


def _check_unscale(device: Any) -> dict[str, np.ndarray]:
    """Two 317-element buffers scaled by 1/1024: one finite, one with an inf and a NaN."""
    out = {}
    for name, bad in (("clean", ()), ("with inf and nan", (5, 300))):
        host = seeded_arrays(20, (317,))[0] * np.float32(1024)
        host[list(bad)] = (np.inf, np.nan) if bad else ()
        grad = Tensor(host, device=device)._data
        found = Tensor(np.zeros(1, np.int32), device=device)._data
        unscale_grads(device, grad, 1 / 1024, found, ALIGNED16 if aligned16(grad) else 0)
        scaled = Tensor._make(grad, device).numpy()
        out[f"{name} grad"] = np.where(np.isfinite(scaled), scaled, 0)  # check compares values
        out[f"{name} non-finite mask"] = (~np.isfinite(scaled)).astype(np.float32)
        out[f"{name} found_inf"] = Tensor._make(found, device).numpy()
    return out


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
    for _vectors in (False, True):
        OPTIM.check(_name + (", 16-byte accesses" if _vectors else ""))(kwargs_case(
            _check_rule, rule=_rule, n_state=_n_state, scalars=_scalars, flags=_flags,
            vectors=_vectors))
# float16 storage: the kernels and the cpu path both compute each update in float32 from the
# widened values and round every stored value once; float32 evaluation order (FMA
# contraction) may move a rounding by one ulp, and three steps carry that forward: at most a
# few float16 ulps, 2^-8 relative (4 ulps); 1e-6 absolute for exp_avg_sq's subnormals.
OPTIM.check("adam step float16", rtol=2.0 ** -8, atol=1e-6)(kwargs_case(
    _check_rule, rule="adam_step", n_state=3, scalars=_adam_scalars(1e-2, 0.0),
    flags=lambda t: 0, dtype=np.float16))
OPTIM.check("unscale grads")(_check_unscale)


def _check_device_steps(device: Any) -> dict[str, np.ndarray]:
    """Capturable Adam and Adagrad over three steps, the middle one found inf (skipped: no
    count, no update), and the unscale with a device scale."""
    def on(a: np.ndarray) -> Any:
        return Tensor(a, device=device)._data

    out: dict[str, np.ndarray] = {}
    for rule, n_state, what in (("adam_step", 3, STEPS_ADAM), ("adagrad_step", 1, STEPS_ADAGRAD)):
        param = on(seeded_arrays(4, (317,))[0])
        state = [on(np.zeros(317, np.float32)) for _ in range(n_state)]
        steps, step_scalars = on(np.zeros(3, np.float32)), on(np.zeros(2, np.float64))
        for step in range(1, 4):
            grad = on(seeded_arrays(10 + step, (317,))[0])
            found = on(np.array([int(step == 2)], np.int32))
            count_steps(device, steps, 1e-2, 0.9 if what == STEPS_ADAM else 0.05, 0.999,
                        step_scalars, what, found)
            scalars = (_adam_scalars(1e-2, 0.0)(1) if what == STEPS_ADAM else (0.0, 0.0, 1e-10))
            update(device, rule, (param, grad, *state), scalars, 0, found, step_scalars)
        out |= {f"{rule} param": Tensor._make(param, device).numpy(),
                f"{rule} steps": Tensor._make(steps, device).numpy()}
    grad = on(seeded_arrays(20, (317,))[0])
    found = on(np.zeros(1, np.int32))
    unscale_grads(device, grad, on(np.array([3.0], np.float32)), found)
    out["unscale by 1 / 3"] = Tensor._make(grad, device).numpy()
    return out


def _check_update_scale(device: Any) -> dict[str, np.ndarray]:
    """The scale after a pattern of clean and inf steps with awkward factors."""
    scale = Tensor(np.array([1000.0], np.float32), device=device)._data
    tracker = Tensor(np.zeros(1, np.int32), device=device)._data
    seen = []
    for bad in (0, 0, 1, 0, 0, 0, 1, 1, 0, 0):
        found = Tensor(np.array([0, bad], np.int32), device=device)._data
        update_scale(device, scale, tracker, found, 1.7, 0.3, 2)
        seen.append(Tensor._make(scale, device).numpy().copy())
    return {"scales": np.concatenate(seen)}


OPTIM.check("device step counts and found_inf")(_check_device_steps)
OPTIM.check("amp update scale")(_check_update_scale)
del _name, _rule, _n_state, _scalars, _flags, _vectors

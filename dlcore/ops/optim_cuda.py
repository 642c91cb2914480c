"""Optimizer updates on a kernel device: one launch of ``kernels/optim.cu`` per call.

Every kernel there takes ``(arrays..., n, scalars..., flags)``; the scalars are cast to the
kernels' arithmetic dtype here (the buffers' dtype; float32 for float16 buffers), exactly as
the NumPy rules see them. Launch: 1-D grid-stride loop, 256 threads per block, at most 4096
blocks (with 16-byte accesses a thread covers 4 floats, 2 doubles or 8 halves per iteration,
so the grid covers n / 4, n / 2 or n / 8 items). Kernels: ``adam_step<float>`` and
``adam_step<double>``, and ``adam_step_half`` for float16 buffers (float arithmetic and
scalars; ``kernels/optim.cu`` says why it is not ``adam_step<__half>``), likewise for every
rule and ``unscale_grads``.

GradScaler and capturable optimizers (nothing decided on the host per step): every rule takes a
trailing ``found_inf`` pointer (a 1-element int32 stand-in, never read, unless ``OPT_FOUND_INF`` is
in the flags, which :func:`update` sets when given one), Adam and Adagrad then ``step_scalars``
(``count_steps``'s 2 doubles; a stand-in unless ``*_DEVICE_STEP``). ``count_steps`` and
``amp_update_scale`` run one thread (of one block).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..kernels import ceil_div, ctype, grid_1d
from .optim_cpu import ALIGNED16, DEVICE_STEP, FOUND_INF, UNSCALE_DEVICE_SCALE, compute_dtype

SOURCE = "optim.cu"
KERNEL_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
THREADS = 256
MAX_BLOCKS = 4096
# count_steps and amp_update_scale: one block of the usual size, whose thread 0 does the work
# (the resource report's 256-thread blocks hold for every kernel of the file)
ONE_BLOCK = grid_1d(1, THREADS)


def update(device: Any, rule: str, arrays: Sequence[Any], scalars: Sequence[float],
           flags: int, found_inf: Any = None, step_scalars: Any = None) -> None:
    param = arrays[0]
    cast = compute_dtype(param.dtype).type
    n = int(param.size)
    flags |= (FOUND_INF if found_inf is not None else 0) | \
        (DEVICE_STEP.get(rule, 0) if step_scalars is not None else 0)
    run = device.kernels.function(SOURCE, _entry(rule, param.dtype))
    with device:
        args = [_unused(device, param.dtype, i) if a is None else a
                for i, a in enumerate(arrays)]
        args += [np.int64(n), *[cast(s) for s in scalars], np.int32(flags),
                 _unused(device, np.dtype(np.int32), "found_inf") if found_inf is None
                 else found_inf]
        if rule in DEVICE_STEP:
            args.append(_unused(device, np.dtype(np.float64), "step_scalars")
                        if step_scalars is None else step_scalars)
        run(_grid(n, param.dtype, flags), (THREADS,), args)


def unscale_grads(device: Any, grad: Any, inv_scale: Any, found_inf: Any, flags: int) -> None:
    n = int(grad.size)
    run = device.kernels.function(SOURCE, _entry("unscale_grads", grad.dtype))
    cast = compute_dtype(grad.dtype).type
    if not _is_array(inv_scale):  # the host's 1 / scale
        host, scale = cast(inv_scale), _unused(device, np.dtype(np.float32), "scale")
    else:  # GradScaler's scale array (float32, on the device): the kernel divides
        host, scale = cast(0), inv_scale
        flags |= UNSCALE_DEVICE_SCALE
    with device:
        run(_grid(n, grad.dtype, flags), (THREADS,),
            (grad, np.int64(n), host, scale, found_inf, np.int32(flags)))


def count_steps(device: Any, steps: Any, lr: float, a: float, b: float, step_scalars: Any,
                flags: int, found_inf: Any) -> None:
    run = device.kernels.function(SOURCE, "count_steps")
    if found_inf is not None:
        flags |= FOUND_INF
    with device:
        run(ONE_BLOCK, (THREADS,), (steps, np.int32(steps.size), np.float64(lr), np.float64(a),
                         np.float64(b), step_scalars, np.int32(flags),
                         _unused(device, np.dtype(np.int32), "found_inf")
                         if found_inf is None else found_inf))


def update_scale(device: Any, scale: Any, growth_tracker: Any, found_inf: Any,
                 growth_factor: float, backoff_factor: float, growth_interval: int) -> None:
    run = device.kernels.function(SOURCE, "amp_update_scale")
    with device:
        run(ONE_BLOCK, (THREADS,), (scale, growth_tracker, found_inf, np.int32(found_inf.size),
                         np.float64(growth_factor), np.float64(backoff_factor),
                         np.int32(growth_interval)))


def _is_array(x: Any) -> bool:
    return hasattr(x, "shape") and not isinstance(x, np.generic)


def _entry(name: str, dtype: np.dtype) -> str:
    """The kernel of ``name`` for ``dtype`` buffers: ``adam_step<float>``, ``adam_step_half``."""
    return f"{name}_half" if dtype == np.float16 else f"{name}<{ctype(dtype)}>"


def _grid(n: int, dtype: np.dtype, flags: int) -> tuple[int]:
    """Enough threads for one 16-byte vector each (one element each when unaligned)."""
    per_thread = 16 // dtype.itemsize if flags & ALIGNED16 else 1
    return grid_1d(ceil_div(n, per_thread), THREADS, MAX_BLOCKS)


_dummies: dict[tuple[Any, np.dtype, int | str], Any] = {}


def _unused(device: Any, dtype: np.dtype, position: int | str) -> Any:
    """A 1-element array for the argument at ``position`` (a state slot's index, or a name)
    that an option leaves unused, made once per device, dtype and slot (zeroed; never read).
    NOTE: each slot its own, never an alias of another argument: the checked emulator copies
    arguments out and back, so aliases would clobber."""
    key = (device, dtype, position)
    dummy = _dummies.get(key)
    if dummy is None:
        with device:
            dummy = _dummies[key] = device.xp.zeros(1, dtype=dtype)
    return dummy

"""Optimizer updates on a kernel device: one launch of ``kernels/optim.cu`` per call.

Every kernel there takes ``(arrays..., n, scalars..., flags)``; the scalars are cast to the
kernels' arithmetic dtype here (the buffers' dtype; float32 for float16 buffers), exactly as
the NumPy rules see them. Launch: 1-D grid-stride loop, 256 threads per block, at most 4096
blocks (with 16-byte accesses a thread covers 4 floats, 2 doubles or 8 halves per iteration,
so the grid covers n / 4, n / 2 or n / 8 items). Kernels: ``adam_step<float>`` and
``adam_step<double>``, and ``adam_step_half`` for float16 buffers (float arithmetic and
scalars; ``kernels/optim.cu`` says why it is not ``adam_step<__half>``), likewise for every
rule and ``unscale_grads``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..kernels import ceil_div, ctype, grid_1d
from .optim_cpu import ALIGNED16, compute_dtype

SOURCE = "optim.cu"
KERNEL_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
THREADS = 256
MAX_BLOCKS = 4096


def update(device: Any, rule: str, arrays: Sequence[Any], scalars: Sequence[float],
           flags: int) -> None:
    param = arrays[0]
    cast = compute_dtype(param.dtype).type
    n = int(param.size)
    run = device.kernels.function(SOURCE, _entry(rule, param.dtype))
    with device:
        args = [_unused(device, param.dtype, i) if a is None else a
                for i, a in enumerate(arrays)]
        args += [np.int64(n), *[cast(s) for s in scalars], np.int32(flags)]
        run(_grid(n, param.dtype, flags), (THREADS,), args)


def unscale_grads(device: Any, grad: Any, inv_scale: float, found_inf: Any, flags: int) -> None:
    n = int(grad.size)
    run = device.kernels.function(SOURCE, _entry("unscale_grads", grad.dtype))
    with device:
        run(_grid(n, grad.dtype, flags), (THREADS,),
            (grad, np.int64(n), compute_dtype(grad.dtype).type(inv_scale), found_inf,
             np.int32(flags)))


def _entry(name: str, dtype: np.dtype) -> str:
    """The kernel of ``name`` for ``dtype`` buffers: ``adam_step<float>``, ``adam_step_half``."""
    return f"{name}_half" if dtype == np.float16 else f"{name}<{ctype(dtype)}>"


def _grid(n: int, dtype: np.dtype, flags: int) -> tuple[int]:
    """Enough threads for one 16-byte vector each (one element each when unaligned)."""
    per_thread = 16 // dtype.itemsize if flags & ALIGNED16 else 1
    return grid_1d(ceil_div(n, per_thread), THREADS, MAX_BLOCKS)


_dummies: dict[tuple[Any, np.dtype, int], Any] = {}


def _unused(device: Any, dtype: np.dtype, position: int) -> Any:
    """A 1-element array for the state slot at ``position`` that an option leaves unused,
    made once per device, dtype and slot. NOTE: each slot its own, never an alias of another
    argument: the checked emulator copies arguments out and back, so aliases would clobber."""
    key = (device, dtype, position)
    dummy = _dummies.get(key)
    if dummy is None:
        dummy = _dummies[key] = device.xp.empty(1, dtype=dtype)
    return dummy

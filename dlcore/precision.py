"""Automatic mixed precision: ``dlcore.autocast`` (also ``dlcore.amp.autocast``), with
PyTorch's semantics. (The module is named for what it holds; the class is the public name.)

Inside ``with dlcore.autocast("cuda"):`` (or a function decorated with it) the ops that gain
from half precision run in the region's low dtype (float16 by default on ``cuda``/``emu``,
bfloat16 on ``cpu``, as PyTorch; ``dtype=`` picks either) and the ops that need range or
accuracy run in float32, whatever the dtypes of their inputs; everything else follows the
usual promotion (float16 + float32 is float32). The lists, as PyTorch's CUDA autocast has them:

* low precision: ``matmul``/``mm``/``bmm``, ``linear``, ``conv1d``, ``conv2d``,
  ``conv_transpose2d``, the recurrent layers;
* float32: ``softmax``, ``log_softmax``, ``logsumexp``, the reductions ``sum``, ``mean``,
  ``prod``, ``var``, ``std``, every loss, and ``layer_norm``, ``group_norm``, ``batch_norm``.

Casts are ordinary differentiable ops, so backward runs in the dtypes forward used and the
gradients of float32 parameters arrive in float32. Leaf tensors that require grad (the
parameters) are cast once per outermost region and the cast reused, as PyTorch caches them.
Regions nest; ``enabled=False`` opens a region where autocast is off. The state is per thread.

>>> x, w = dlcore.ones(2, 3), dlcore.ones(4, 3)
>>> with dlcore.autocast("cpu", dtype=dlcore.float16):
...     y = dlcore.nn.functional.linear(x, w)
>>> y.dtype
dtype('float16')
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from .dtypes import bfloat16, float16, float32, is_floating, to_dtype

__all__ = ["autocast", "cast_float32", "cast_low", "is_active", "is_autocast_enabled"]

# PyTorch's defaults: float16 on the GPU (and on emu, which runs the GPU's kernels, whose
# conv2d has no bfloat16 path), bfloat16 on the CPU, whose float32-sized exponent needs no
# loss scaling.
_DEFAULT_DTYPES = {"cuda": float16, "emu": float16, "cpu": bfloat16}


class _State(threading.local):
    def __init__(self) -> None:
        self.regions: dict[str, np.dtype | None] = {}  # device type -> low dtype, None: off
        self.depth = 0
        self.cache: dict[int, tuple[Any, Any]] = {}  # id(leaf) -> (leaf, cast)


_state = _State()


class autocast:
    """Context manager and decorator: run the region's ops in mixed precision on the devices
    of type ``device_type`` (``"cuda"``, ``"cpu"`` or ``"emu"``), the low dtype being
    ``dtype`` (by default float16 on ``cuda``/``emu``, bfloat16 on ``cpu``)."""

    def __init__(self, device_type: str, dtype: Any = None, enabled: bool = True,
                 cache_enabled: bool = True) -> None:
        if device_type not in _DEFAULT_DTYPES:
            raise ValueError(f"autocast: device_type must be one of "
                             f"{', '.join(_DEFAULT_DTYPES)}, got {device_type!r}")
        low = _DEFAULT_DTYPES[device_type] if dtype is None else to_dtype(dtype)
        if not is_floating(low) or low == float32 or low.itemsize > 2:
            raise ValueError(f"autocast: dtype must be a 16-bit float dtype (float16 or "
                             f"bfloat16), got {low}")
        self.device_type, self.dtype, self.enabled = device_type, low, bool(enabled)
        self.cache_enabled = cache_enabled

    def __enter__(self) -> autocast:
        self._previous = _state.regions.get(self.device_type, _MISSING)
        _state.regions[self.device_type] = self.dtype if self.enabled else None
        _state.depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        _state.depth -= 1
        if self._previous is _MISSING:
            del _state.regions[self.device_type]
        else:
            _state.regions[self.device_type] = self._previous
        if _state.depth == 0:
            _state.cache.clear()  # weights are cast once per outermost region

    def __call__(self, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with autocast(self.device_type, self.dtype, self.enabled, self.cache_enabled):
                return fn(*args, **kwargs)
        return wrapper


_MISSING: Any = object()


def is_autocast_enabled(device_type: str = "cuda") -> bool:
    return _state.regions.get(device_type) is not None


def is_active() -> bool:
    """Whether any autocast region is open in this thread (the ops' fast-path test)."""
    return bool(_state.regions)


def _region_dtype(t: Any) -> np.dtype | None:
    """The low dtype autocast applies to ``t``'s device here, or None."""
    if not _state.regions:
        return None
    return _state.regions.get(t.device.type)


def _cast(t: Any, dtype: np.dtype) -> Any:
    if t is None or not is_floating(t.dtype) or t.dtype == dtype:
        return t
    if t.requires_grad and t.is_leaf:  # a parameter: one cast per region
        hit = _state.cache.get(id(t))
        if hit is not None and hit[0] is t and hit[1].dtype == dtype:
            return hit[1]
        cast = t.to(dtype)
        _state.cache[id(t)] = (t, cast)
        return cast
    return t.to(dtype)


def cast_low(*tensors: Any) -> tuple[Any, ...]:
    """The inputs of a low-precision op, cast to the region's low dtype when autocast is on
    for their device (None entries pass through)."""
    first = next((t for t in tensors if t is not None), None)
    low = None if first is None else _region_dtype(first)
    if low is None:
        return tensors
    return tuple(_cast(t, low) for t in tensors)


def cast_float32(*tensors: Any) -> tuple[Any, ...]:
    """The inputs of a float32 op, cast to float32 when autocast is on for their device."""
    first = next((t for t in tensors if t is not None), None)
    if first is None or _region_dtype(first) is None:
        return tensors
    return tuple(_cast(t, float32) for t in tensors)

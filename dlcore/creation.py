"""Creating tensors: from data, filled, ranges and random draws (PyTorch's names)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import random as _random
from .device import Device, as_device, device_of_array
from .dtypes import check_supported, get_default_dtype, is_floating, to_dtype
from .tensor import Tensor


def _device_array(data: Any) -> bool:
    """A NumPy or CuPy array, or anything else with the CUDA array interface."""
    return isinstance(data, np.ndarray) or hasattr(data, "__cuda_array_interface__")


def tensor(data: Any, dtype: Any = None, device: Any = None,
           requires_grad: bool = False) -> Tensor:
    """A new tensor holding a copy of ``data``.

    >>> dlcore.tensor([[1.0, 2.0], [3.0, 4.0]]).shape
    (2, 2)
    """
    return Tensor(data, dtype=dtype, device=device, requires_grad=requires_grad)


def as_tensor(data: Any, dtype: Any = None, device: Any = None) -> Tensor:
    """Like :func:`tensor` but shares memory with ``data`` where it can."""
    if isinstance(data, Tensor):
        return data.to(device=device, dtype=dtype) if device or dtype else data
    dev = device_of_array(data) if device is None and _device_array(data) else \
        as_device(device)
    return Tensor._make(dev.asarray(data, None if dtype is None else to_dtype(dtype)), dev)


def from_numpy(array: np.ndarray) -> Tensor:
    """A cpu tensor sharing memory with ``array`` (no copy)."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"from_numpy: expected a numpy.ndarray, got {type(array).__name__}")
    check_supported(array.dtype, "from_numpy")
    return Tensor._make(array, Device("cpu"))


def from_dlpack(obj: Any) -> Tensor:
    """Zero-copy import of any DLPack-capable array (NumPy, CuPy, PyTorch, JAX...)."""
    dev_type, dev_id = obj.__dlpack_device__()
    if int(dev_type) == 1:  # kDLCPU
        dev = Device("cpu")
        arr = np.from_dlpack(obj)
    elif int(dev_type) in (2, 3):  # kDLCUDA, kDLCUDAHost
        dev = Device("cuda", int(dev_id))
        arr = dev.xp.from_dlpack(obj)
    else:
        raise RuntimeError(f"from_dlpack: unsupported DLPack device type {dev_type}")
    check_supported(np.dtype(arr.dtype), "from_dlpack")
    return Tensor._make(arr, dev)


def _size(size: Sequence[Any]) -> tuple[int, ...]:
    if len(size) == 1 and isinstance(size[0], list | tuple):
        size = size[0]
    out = tuple(int(s) for s in size)
    if any(s < 0 for s in out):
        raise ValueError(f"negative dimension in size {out}")
    return out


def _filled(fill: str, size: tuple, dtype: Any, device: Any, requires_grad: bool,
            value: Any = None) -> Tensor:
    dev = as_device(device)
    dt = get_default_dtype() if dtype is None else to_dtype(dtype)
    xp = dev.xp
    with dev.use():
        if fill == "full":
            arr = xp.full(size, value, dtype=dt)
        else:
            arr = getattr(xp, fill)(size, dtype=dt)
    t = Tensor._make(arr, dev)
    return t.requires_grad_() if requires_grad else t


def zeros(*size: Any, dtype: Any = None, device: Any = None,
          requires_grad: bool = False) -> Tensor:
    """>>> dlcore.zeros(2, 3).shape
    (2, 3)"""
    return _filled("zeros", _size(size), dtype, device, requires_grad)


def ones(*size: Any, dtype: Any = None, device: Any = None,
         requires_grad: bool = False) -> Tensor:
    return _filled("ones", _size(size), dtype, device, requires_grad)


def empty(*size: Any, dtype: Any = None, device: Any = None,
          requires_grad: bool = False) -> Tensor:
    return _filled("empty", _size(size), dtype, device, requires_grad)


def full(size: Any, fill_value: Any, dtype: Any = None, device: Any = None,
         requires_grad: bool = False) -> Tensor:
    if dtype is None:
        dtype = (np.bool_ if isinstance(fill_value, bool) else np.int64
                 if isinstance(fill_value, int) else get_default_dtype())
    return _filled("full", _size((size,) if isinstance(size, int) else tuple(size)), dtype,
                   device, requires_grad, fill_value)


def _like(t: Tensor, dtype: Any, device: Any) -> tuple[Any, Any]:
    return (t.dtype if dtype is None else dtype, t.device if device is None else device)


def zeros_like(t: Tensor, dtype: Any = None, device: Any = None,
               requires_grad: bool = False) -> Tensor:
    return zeros(*t.shape, dtype=_like(t, dtype, device)[0], device=_like(t, dtype, device)[1],
                 requires_grad=requires_grad)


def ones_like(t: Tensor, dtype: Any = None, device: Any = None,
              requires_grad: bool = False) -> Tensor:
    dt, dev = _like(t, dtype, device)
    return ones(*t.shape, dtype=dt, device=dev, requires_grad=requires_grad)


def empty_like(t: Tensor, dtype: Any = None, device: Any = None,
               requires_grad: bool = False) -> Tensor:
    dt, dev = _like(t, dtype, device)
    return empty(*t.shape, dtype=dt, device=dev, requires_grad=requires_grad)


def full_like(t: Tensor, fill_value: Any, dtype: Any = None, device: Any = None,
              requires_grad: bool = False) -> Tensor:
    dt, dev = _like(t, dtype, device)
    return full(t.shape, fill_value, dtype=dt, device=dev, requires_grad=requires_grad)


def arange(start: Any, end: Any = None, step: Any = 1, dtype: Any = None, device: Any = None,
           requires_grad: bool = False) -> Tensor:
    """>>> dlcore.arange(5).tolist()
    [0, 1, 2, 3, 4]"""
    if end is None:
        start, end = 0, start
    if step == 0:
        raise ValueError("arange: step must be nonzero")
    if dtype is None:
        is_int = all(isinstance(v, int | np.integer) for v in (start, end, step))
        dtype = np.int64 if is_int else get_default_dtype()
    dev = as_device(device)
    with dev.use():
        arr = dev.xp.arange(start, end, step, dtype=to_dtype(dtype))
    t = Tensor._make(arr, dev)
    return t.requires_grad_() if requires_grad else t


def linspace(start: float, end: float, steps: int, dtype: Any = None, device: Any = None,
             requires_grad: bool = False) -> Tensor:
    dev = as_device(device)
    dt = get_default_dtype() if dtype is None else to_dtype(dtype)
    with dev.use():
        arr = dev.xp.linspace(start, end, int(steps), dtype=np.float64).astype(dt)
    t = Tensor._make(arr, dev)
    return t.requires_grad_() if requires_grad else t


def eye(n: int, m: int | None = None, dtype: Any = None, device: Any = None,
        requires_grad: bool = False) -> Tensor:
    dev = as_device(device)
    dt = get_default_dtype() if dtype is None else to_dtype(dtype)
    with dev.use():
        arr = dev.xp.eye(n, m, dtype=dt)
    t = Tensor._make(arr, dev)
    return t.requires_grad_() if requires_grad else t


def _random_tensor(arr: Any, dev: Device, requires_grad: bool) -> Tensor:
    t = Tensor._make(arr, dev)
    return t.requires_grad_() if requires_grad else t


def rand(*size: Any, dtype: Any = None, device: Any = None,
         requires_grad: bool = False) -> Tensor:
    """Uniform on [0, 1), drawn from the device's generator (see ``manual_seed``)."""
    dev = as_device(device)
    dt = get_default_dtype() if dtype is None else to_dtype(dtype)
    return _random_tensor(_random.uniform_array(_size(size), 0.0, 1.0, dt, dev), dev,
                          requires_grad)


def randn(*size: Any, dtype: Any = None, device: Any = None,
          requires_grad: bool = False) -> Tensor:
    """Standard normal, drawn from the device's generator (see ``manual_seed``)."""
    dev = as_device(device)
    dt = get_default_dtype() if dtype is None else to_dtype(dtype)
    return _random_tensor(_random.normal_array(_size(size), 0.0, 1.0, dt, dev), dev,
                          requires_grad)


def randint(low: int, high: int | None = None, size: Any = (), dtype: Any = None,
            device: Any = None) -> Tensor:
    """Integers in [low, high); ``randint(high, size)`` as in PyTorch."""
    if high is None:
        low, high = 0, low
    if high <= low:
        raise ValueError(f"randint: expected low < high, got low={low}, high={high}")
    dev = as_device(device)
    dt = np.dtype(np.int64) if dtype is None else to_dtype(dtype)
    size = (size,) if isinstance(size, int) else tuple(size)
    return Tensor._make(_random.integers_array(low, high, size, dt, dev), dev)


def randperm(n: int, dtype: Any = None, device: Any = None) -> Tensor:
    dev = as_device(device)
    arr = _random.permutation_array(int(n), dev).astype(np.int64 if dtype is None
                                                         else to_dtype(dtype))
    return Tensor._make(arr, dev)


def rand_like(t: Tensor, dtype: Any = None, device: Any = None) -> Tensor:
    dt, dev = _like(t, dtype, device)
    return rand(*t.shape, dtype=dt, device=dev)


def randn_like(t: Tensor, dtype: Any = None, device: Any = None) -> Tensor:
    dt, dev = _like(t, dtype, device)
    return randn(*t.shape, dtype=dt, device=dev)


def multinomial(input: Tensor, num_samples: int, replacement: bool = False) -> Tensor:
    """Indices drawn from the categories of each row of ``input`` (non-negative weights, not
    necessarily normalised), PyTorch's ``multinomial``: an int64 tensor of shape
    ``(rows, num_samples)`` (``(num_samples,)`` for 1-D input), seeded by ``manual_seed``.
    With replacement each draw inverts the row's CDF; without, the first ``num_samples`` of
    the Gumbel-perturbed log weights, which draws categories one after another with
    probability proportional to their weights among those left (as PyTorch's does).

    >>> dlcore.multinomial(dlcore.tensor([0.0, 1.0, 0.0]), 2, replacement=True).tolist()
    [1, 1]
    """
    op = "multinomial"
    if input.ndim not in (1, 2) or not is_floating(input.dtype):
        raise RuntimeError(f"{op}: expected a 1-D or 2-D floating point tensor of weights, got "
                           f"shape {tuple(input.shape)} and dtype {input.dtype}")
    dev, xp = input.device, input.device.xp
    w = input._data.reshape(1, -1) if input.ndim == 1 else input._data
    rows, categories = w.shape
    if not isinstance(num_samples, int) or num_samples < 1:
        raise RuntimeError(f"{op}: num_samples must be a positive int, got {num_samples!r}")
    if not replacement and num_samples > categories:
        raise RuntimeError(f"{op}: cannot draw {num_samples} samples without replacement from "
                           f"{categories} categories")
    w64 = w.astype(np.float64)
    if bool((w64 < 0).any()) or not bool(xp.isfinite(w64).all()):
        raise RuntimeError(f"{op}: weights must be finite and non-negative")
    totals = w64.sum(axis=1, keepdims=True)
    if bool((totals <= 0).any()):
        raise RuntimeError(f"{op}: every row needs a positive total weight")
    if replacement:
        cdf = xp.cumsum(w64 / totals, axis=1)
        u = _random.uniform_array((rows, num_samples), 0.0, 1.0, np.dtype(np.float64), dev)
        picks = (u[:, :, None] >= cdf[:, None, :]).sum(axis=2)
        picks = xp.minimum(picks, categories - 1)  # u can round past the last cdf step
    else:
        u = _random.uniform_array((rows, categories), 0.0, 1.0, np.dtype(np.float64), dev)
        with np.errstate(divide="ignore"):
            keys = xp.log(w64) - xp.log(-xp.log(xp.maximum(u, 1e-300)))
        picks = xp.argsort(-keys, axis=1, kind="stable")[:, :num_samples]
    picks = picks.astype(np.int64)
    return Tensor._make(picks.reshape(-1) if input.ndim == 1 else picks, dev)

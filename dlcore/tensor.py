"""Tensor: a thin handle on one NumPy or CuPy array plus the fields autograd needs.

Operators and methods route to :mod:`dlcore.ops`; this file holds only what is about the
handle itself (metadata, conversion, autograd fields, in-place guards).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import autograd
from .device import Device, as_device, device_of_array
from .dtypes import to_dtype


class Tensor:
    """An n-dimensional array on a device, with optional gradient tracking.

    ``Tensor(data, dtype=None, device=None, requires_grad=False)`` copies ``data``
    (like ``dlcore.tensor``); ops build Tensors through the cheap ``Tensor._make``.
    """

    __slots__ = ("data", "_device", "_requires_grad", "grad", "grad_fn", "_output_nr",
                 "_accum", "_version", "_retains_grad", "__weakref__")
    __array_priority__ = 1000  # numpy_array * tensor -> Tensor.__rmul__

    def __init__(self, data: Any, dtype: Any = None, device: Any = None,
                 requires_grad: bool = False) -> None:
        from .creation import _to_array

        dev = as_device(device)
        self.data = _to_array(data, dtype, dev, copy=True)
        self._device = dev
        self._requires_grad = False
        self.grad = None
        self.grad_fn = None
        self._output_nr = 0
        self._accum = None
        self._version = [0]
        self._retains_grad = False
        if requires_grad:
            self.requires_grad_(True)

    @classmethod
    def _make(cls, data: Any, device: Device, grad_fn: Any = None, output_nr: int = 0,
              version: list | None = None) -> Tensor:
        t = object.__new__(cls)
        t.data = data
        t._device = device
        t._requires_grad = grad_fn is not None
        t.grad = None
        t.grad_fn = grad_fn
        t._output_nr = output_nr
        t._accum = None
        t._version = [0] if version is None else version
        t._retains_grad = False
        return t

    # ---- metadata -------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    def size(self, dim: int | None = None) -> Any:
        return self.data.shape if dim is None else self.data.shape[dim]

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def device(self) -> Device:
        return self._device

    @property
    def ndim(self) -> int:
        return self.data.ndim

    def dim(self) -> int:
        return self.data.ndim

    def numel(self) -> int:
        return int(self.data.size)

    def element_size(self) -> int:
        return self.data.dtype.itemsize

    @property
    def is_cuda(self) -> bool:
        return self._device.type == "cuda"

    def is_floating_point(self) -> bool:
        return self.data.dtype.kind == "f"

    def __len__(self) -> int:
        if self.data.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.data.shape[0]

    # ---- autograd fields ------------------------------------------------------------
    @property
    def requires_grad(self) -> bool:
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value: bool) -> None:
        self.requires_grad_(value)

    def requires_grad_(self, requires_grad: bool = True) -> Tensor:
        if requires_grad and self.data.dtype.kind not in "fc":
            raise RuntimeError(f"requires_grad_: only floating point tensors can require "
                               f"gradients, got dtype {self.data.dtype}")
        if self.grad_fn is not None and not requires_grad:
            raise RuntimeError("requires_grad_: you can only change requires_grad of leaf "
                               "tensors; use detach() for a non-leaf")
        self._requires_grad = bool(requires_grad)
        return self

    @property
    def is_leaf(self) -> bool:
        return self.grad_fn is None

    def retain_grad(self) -> None:
        """Keep ``.grad`` for this non-leaf tensor after backward."""
        if self.grad_fn is None:
            return
        if not self._retains_grad:
            self._retains_grad = True
            from .ops.shape import RetainGrad

            node = RetainGrad.hook(self)
            self.grad_fn, self._output_nr = node, 0

    def _edge(self) -> tuple[Any, int]:
        if self.grad_fn is not None:
            return (self.grad_fn, self._output_nr)
        if self._accum is None:
            self._accum = autograd.AccumulateGrad(self)
        return (self._accum, 0)

    def backward(self, gradient: Any = None, retain_graph: bool | None = None,
                 create_graph: bool = False) -> None:
        autograd.backward(self, gradient, retain_graph, create_graph)

    def detach(self) -> Tensor:
        """The same data (shared, like PyTorch), cut off from the graph."""
        return Tensor._make(self.data, self._device, version=self._version)

    def detach_(self) -> Tensor:
        self.grad_fn = None
        self._requires_grad = False
        return self

    # ---- conversion -----------------------------------------------------------------
    def numpy(self) -> np.ndarray:
        """A NumPy array with the data: shared on ``cpu``/``emu``, a host copy on ``cuda``.
        (PyTorch refuses ``.numpy()`` on GPU tensors; copying is what users then do.)"""
        if self._requires_grad and self.grad_fn is not None:
            pass  # reading values never breaks the graph
        data = self.data
        return data if isinstance(data, np.ndarray) else data.get()

    def item(self) -> Any:
        if self.data.size != 1:
            raise RuntimeError(f"item: a tensor with {self.data.size} elements cannot be "
                               "converted to a Python scalar")
        return self.data.reshape(()).item() if isinstance(self.data, np.ndarray) else \
            self.numpy().reshape(()).item()

    def tolist(self) -> Any:
        return self.numpy().tolist()

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        arr = self.numpy()
        return arr if dtype is None else arr.astype(dtype, copy=False)

    def __dlpack__(self, *args: Any, **kwargs: Any) -> Any:
        return self.data.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self) -> Any:
        return self.data.__dlpack_device__()

    def to(self, *args: Any, **kwargs: Any) -> Tensor:
        """``t.to(device)``, ``t.to(dtype)``, ``t.to(device, dtype)``, ``t.to(other)``;
        differentiable; returns ``self`` when nothing changes."""
        copy = kwargs.pop("copy", False)
        device, dtype = parse_to_args(args, kwargs, "to")
        from .ops.shape import to_device_dtype

        out = to_device_dtype(self, device, dtype)
        return out.clone() if copy and out is self else out

    def cpu(self) -> Tensor:
        return self.to("cpu")

    def cuda(self, device: int | None = None) -> Tensor:
        return self.to(Device("cuda", device))

    def type(self, dtype: Any = None) -> Any:
        return str(self.dtype) if dtype is None else self.to(dtype)

    def float(self) -> Tensor:
        return self.to(np.float32)

    def double(self) -> Tensor:
        return self.to(np.float64)

    def half(self) -> Tensor:
        return self.to(np.float16)

    def long(self) -> Tensor:
        return self.to(np.int64)

    def int(self) -> Tensor:
        return self.to(np.int32)

    def bool(self) -> Tensor:
        return self.to(np.bool_)

    def __bool__(self) -> bool:
        if self.data.size != 1:
            raise RuntimeError(f"bool: the truth value of a tensor with {self.data.size} "
                               "elements is ambiguous")
        return bool(self.item())

    def __float__(self) -> float:
        return float(self.item())

    def __int__(self) -> int:
        return int(self.item())

    def __index__(self) -> int:
        if self.data.dtype.kind not in "iu" or self.data.size != 1:
            raise TypeError("only integer tensors of a single element can be an index")
        return int(self.item())

    __hash__ = object.__hash__

    def __iter__(self) -> Any:
        if self.data.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(self.data.shape[0]))

    def __repr__(self) -> str:
        body = np.array2string(self.numpy(), separator=", ", precision=4,
                               prefix="tensor(")
        extra = []
        if self._device.type != "cpu":
            extra.append(f"device='{self._device}'")
        if self.data.dtype != np.float32 and self.data.dtype != np.int64 and \
                self.data.dtype != np.bool_:
            extra.append(f"dtype=dlcore.{self.data.dtype}")
        if self.grad_fn is not None:
            extra.append(f"grad_fn={self.grad_fn!r}")
        elif self._requires_grad:
            extra.append("requires_grad=True")
        return "tensor(" + ", ".join([body] + extra) + ")"

    # ---- in-place -------------------------------------------------------------------
    def _check_inplace(self, op: str) -> None:
        if self._requires_grad and self.grad_fn is None and autograd.is_grad_enabled():
            raise RuntimeError(f"{op}: a leaf tensor that requires grad (shape "
                               f"{tuple(self.shape)}) is being used in an in-place operation; "
                               "wrap it in dlcore.no_grad() (as optimizers do)")

    def _bump(self) -> None:
        self._version[0] += 1

    def _inplace_from(self, result: Tensor, op: str) -> Tensor:
        """Write ``result`` into this tensor's storage and take over its graph node."""
        xp = self._device.xp
        if result._device is not self._device:
            raise RuntimeError(f"{op}: expected a tensor on {self._device}, got {result._device}")
        if result.shape != self.shape:
            raise RuntimeError(f"{op}: result of shape {tuple(result.shape)} cannot be written "
                               f"in place into a tensor of shape {tuple(self.shape)}")
        xp.copyto(self.data, result.data, casting="unsafe")
        self._bump()
        if result.grad_fn is not None and autograd.is_grad_enabled():
            if result.dtype != self.dtype:
                result = result.to(self.dtype)
            self.grad_fn, self._output_nr = result.grad_fn, result._output_nr
            self._requires_grad = True
        return self

    def _inplace_binary(self, other: Any, op: str, fn: Any) -> Tensor:
        self._check_inplace(op)
        if autograd.is_grad_enabled() and (self._requires_grad or (
                isinstance(other, Tensor) and other._requires_grad)):
            # NOTE: the out-of-place op may save `self` for backward; give it a snapshot,
            # since the storage is overwritten next.
            snap = Tensor._make(self.data.copy(), self._device, self.grad_fn, self._output_nr)
            snap._requires_grad = self._requires_grad
            snap._accum = self._accum
            return self._inplace_from(fn(snap, other), op)
        result = fn(self, other)
        xp = self._device.xp
        xp.copyto(self.data, result.data if isinstance(result, Tensor) else result,
                  casting="same_kind")
        self._bump()
        return self

    def add_(self, other: Any, alpha: Any = 1) -> Tensor:
        if alpha != 1:
            return self._inplace_binary(other, "add_", lambda a, b: a + b * alpha)
        return self._inplace_binary(other, "add_", lambda a, b: a + b)

    def sub_(self, other: Any, alpha: Any = 1) -> Tensor:
        return self._inplace_binary(other, "sub_", lambda a, b: a - b * alpha)

    def mul_(self, other: Any) -> Tensor:
        return self._inplace_binary(other, "mul_", lambda a, b: a * b)

    def div_(self, other: Any) -> Tensor:
        return self._inplace_binary(other, "div_", lambda a, b: a / b)

    def clamp_(self, min: Any = None, max: Any = None) -> Tensor:
        return self._inplace_binary(None, "clamp_", lambda a, _: a.clamp(min, max))

    def copy_(self, src: Any) -> Tensor:
        """Copy ``src`` (broadcast, cast, possibly from another device) into this tensor."""
        self._check_inplace("copy_")
        if not isinstance(src, Tensor):
            src = Tensor(src, dtype=self.dtype, device=self._device)
        if src._device is not self._device:
            src = src.to(self._device)
        try:
            src_b = src.expand(*self.shape) if src.shape != self.shape else src
        except (RuntimeError, ValueError):
            raise RuntimeError(f"copy_: source of shape {tuple(src.shape)} cannot be "
                               f"broadcast to destination shape {tuple(self.shape)}") from None
        if autograd.is_grad_enabled() and src._requires_grad:
            return self._inplace_from(src_b.to(self.dtype), "copy_")
        self._device.xp.copyto(self.data, src_b.data, casting="unsafe")
        self._bump()
        if autograd.is_grad_enabled() and self.grad_fn is not None:
            self.grad_fn, self._requires_grad = None, False  # now a constant
        return self

    def fill_(self, value: Any) -> Tensor:
        self._check_inplace("fill_")
        self.data[...] = value.item() if isinstance(value, Tensor) else value
        self._bump()
        if autograd.is_grad_enabled() and self.grad_fn is not None:
            self.grad_fn, self._requires_grad = None, False
        return self

    def zero_(self) -> Tensor:
        return self.fill_(0)

    def uniform_(self, a: float = 0.0, b: float = 1.0) -> Tensor:
        from .random import uniform_array

        with autograd.no_grad():
            self.copy_(Tensor._make(uniform_array(self.shape, a, b, self.dtype, self._device),
                                    self._device))
        return self

    def normal_(self, mean: float = 0.0, std: float = 1.0) -> Tensor:
        from .random import normal_array

        with autograd.no_grad():
            self.copy_(Tensor._make(normal_array(self.shape, mean, std, self.dtype,
                                                 self._device), self._device))
        return self

    def __setitem__(self, index: Any, value: Any) -> None:
        from .ops.index import setitem

        setitem(self, index, value)


autograd._Tensor = Tensor


def parse_to_args(args: tuple, kwargs: dict, op: str) -> tuple[Device | None, Any]:
    """The arguments of ``to`` (Tensor's and Module's): ``to(device)``, ``to(dtype)``,
    ``to(device, dtype)``, ``to(tensor)`` and the keywords ``device``, ``dtype``,
    ``non_blocking`` (accepted, ignored: copies are synchronous)."""
    device = kwargs.pop("device", None)
    dtype = kwargs.pop("dtype", None)
    kwargs.pop("non_blocking", None)
    if kwargs:
        raise TypeError(f"{op}: unexpected arguments {sorted(kwargs)}")
    for a in args:
        if isinstance(a, Tensor):
            device, dtype = a.device, a.dtype
        elif isinstance(a, Device) or (isinstance(a, str) and a.split(":")[0] in
                                       ("cpu", "cuda", "emu")):
            device = a
        elif a is not None:
            dtype = a
    return (None if device is None else Device(device),
            None if dtype is None else to_dtype(dtype))


def tensor_from_array(arr: Any) -> Tensor:
    """Wrap an existing NumPy/CuPy array without copying."""
    return Tensor._make(arr, device_of_array(arr))

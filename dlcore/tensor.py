"""Tensor: a thin handle on one NumPy or CuPy array plus the fields autograd needs.

Operators and methods are written here as one-line delegations to :mod:`dlcore.ops` (so IDEs,
type checkers and ``help()`` see them); everything else here is about the handle itself
(metadata, conversion, autograd fields, in-place writes and their guards).

(``_bool``, ``_int`` and ``_float`` name the builtins in annotations: inside the class body
``bool``, ``int`` and ``float`` are the conversion methods.)
"""

from __future__ import annotations

from builtins import bool as _bool
from builtins import float as _float
from builtins import int as _int
from collections.abc import Sequence
from typing import Any
import weakref

import numpy as np

from . import autograd, random
from .device import capturing as _capturing
from .device import check_not_capturing as _check_not_capturing
from .device import Device, as_device, device_of_array
from .dtypes import BF16_WORDS, bfloat16, is_floating, to_dtype


class memory_format:  # noqa: N801 - PyTorch's name (torch.memory_format)
    """How a tensor's elements are laid out in memory, PyTorch's three values:
    ``dlcore.contiguous_format`` (row-major in the shape's order), ``dlcore.channels_last``
    (a 4-D (N, C, H, W) tensor stored as N, H, W, C: the layout the CPU convolution's GEMMs
    read and write without a transposing copy) and ``dlcore.preserve_format``. The shape and
    every result stay the same; only strides (``Tensor.stride()``) and speed differ."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"dlcore.{self.name}"


contiguous_format = memory_format("contiguous_format")
channels_last = memory_format("channels_last")
preserve_format = memory_format("preserve_format")


def is_channels_last(arr: Any) -> _bool:
    """Whether a 4-D array's strides are exactly those of an (N, H, W, C) row-major buffer
    seen as (N, C, H, W), size-1 dimensions included. This is the strict test the CPU kernels
    use to choose their output layout: a (N, 1, H, W) array made by ``contiguous(
    memory_format=channels_last)`` passes it, one from a plain ``zeros(N, 1, H, W)`` does
    not, although both layouts hold the elements in the same order."""
    if getattr(arr, "ndim", 0) != 4:
        return False
    n, c, h, w = arr.shape
    i = arr.itemsize
    return tuple(arr.strides) == (h * w * c * i, i, w * c * i, c * i)


def _dense_in_order(shape: Sequence[_int], strides: Sequence[_int], itemsize: _int,
                    order: Sequence[_int]) -> _bool:
    """PyTorch's contiguity rule: walking dims from innermost (``order``) each stride is
    the product of the sizes inside it; size-1 dimensions may have any stride."""
    expected = itemsize
    for d in order:
        if shape[d] != 1:
            if strides[d] != expected:
                return False
            expected *= shape[d]
    return True


def channels_last_array(xp: Any, arr: Any) -> Any:
    """``arr`` (N, C, H, W) copied into channels-last strides (itself when it has them)."""
    if is_channels_last(arr):
        return arr
    n, c, h, w = arr.shape
    # NOTE: a fresh buffer, not ascontiguousarray: for C == 1 (or H == W == 1) the transposed
    # view is already "contiguous" to NumPy and would come back with its old strides
    out = xp.empty((n, h, w, c), dtype=arr.dtype)
    out[...] = arr.transpose(0, 2, 3, 1)
    return out.transpose(0, 3, 1, 2)


_CPU = Device("cpu")


class Tensor:
    """An n-dimensional array on a device, with optional gradient tracking.

    ``Tensor(data, dtype=None, device=None, requires_grad=False)`` copies ``data``
    (like ``dlcore.tensor``); ops build Tensors through the cheap ``Tensor._make``.
    """

    __slots__ = ("_data", "_device", "_requires_grad", "_grad", "_grad_slot", "grad_fn",
                 "_output_nr", "_accum", "_version", "_retains_grad", "_view", "_views",
                 "__weakref__")
    __array_priority__ = 1000  # numpy_array * tensor -> Tensor.__rmul__

    _data: Any  # the NumPy or CuPy array (public, read-only: ``array``)
    _device: Device
    _requires_grad: _bool
    _grad: Tensor | None  # .grad (a property: assigning it must reach _grad_slot)
    # An optimizer's place for this leaf's gradient in its flat gradient buffer, or None
    # (see dlcore/optim/optimizer.py): autograd writes a new gradient there.
    _grad_slot: Any
    grad_fn: Any  # the autograd.Function that produced this tensor, None for a leaf
    _output_nr: _int  # which output of grad_fn this is
    _accum: Any  # a leaf's AccumulateGrad node, made on first use
    _version: list[_int]  # in-place write counter, one list shared by a base and its views
    _retains_grad: _bool
    # A view for autograd: (root base, replay, writable). replay(root) rebuilds this view with
    # differentiable view ops, so a write through the view can rewrite the root's graph and
    # the root's other views can follow it (PyTorch's CopySlices and view replay).
    _view: tuple[Tensor, Any, _bool] | None
    _views: list[Any] | None  # on a root: weak references to its views

    def __init__(self, data: Any, dtype: Any = None, device: Any = None,
                 requires_grad: _bool = False) -> None:
        dev = as_device(device)
        if isinstance(data, Tensor):
            data = data._data
        self._init_leaf(dev.asarray(data, None if dtype is None else to_dtype(dtype),
                                    copy=True), dev, [0], requires_grad)

    def _init_leaf(self, data: Any, device: Device, version: list[_int],
                   requires_grad: _bool) -> None:
        """Set every field of a new leaf (for ``__init__`` and subclasses such as
        ``nn.Parameter``; ``_make`` sets the same fields inline, on the hot path of every op)."""
        self._data = data
        self._device = device
        self._requires_grad = False
        self._grad = None
        self._grad_slot = None
        self.grad_fn = None
        self._output_nr = 0
        self._accum = None
        self._version = version
        self._retains_grad = False
        self._view = None
        self._views = None
        if requires_grad:
            self.requires_grad_(True)

    def _share_leaf(self, other: Tensor, requires_grad: _bool) -> None:
        """Become a new leaf holding ``other``'s array, device and version counter (no copy),
        as ``nn.Parameter(t)`` does."""
        self._init_leaf(other._data, other._device, other._version, requires_grad)

    @classmethod
    def _make(cls, data: Any, device: Device, grad_fn: Any = None, output_nr: _int = 0,
              version: list | None = None) -> Tensor:
        t = object.__new__(cls)
        t._data = data
        t._device = device
        t._requires_grad = grad_fn is not None
        t._grad = None
        t._grad_slot = None
        t.grad_fn = grad_fn
        t._output_nr = output_nr
        t._accum = None
        t._version = [0] if version is None else version
        t._retains_grad = False
        t._view = None
        t._views = None
        return t

    # ---- metadata -------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self._data.shape

    def size(self, dim: _int | None = None) -> Any:
        return self._data.shape if dim is None else self._data.shape[dim]

    @property
    def dtype(self) -> np.dtype:
        # NOTE: on cuda a bfloat16 tensor holds uint16 words (CuPy has no bfloat16); uint16 is
        # no tensor dtype of its own, so those words always mean bfloat16.
        dt = self._data.dtype
        return bfloat16 if dt == BF16_WORDS else dt

    @property
    def device(self) -> Device:
        return self._device

    @property
    def ndim(self) -> _int:
        return self._data.ndim

    def dim(self) -> _int:
        return self._data.ndim

    def stride(self, dim: _int | None = None) -> Any:
        """Strides in elements (PyTorch's unit; NumPy's ``strides`` are in bytes)."""
        st = tuple(s // self._data.itemsize for s in self._data.strides)
        return st if dim is None else st[dim]

    def numel(self) -> _int:
        return int(self._data.size)

    def element_size(self) -> _int:
        return self._data.dtype.itemsize

    @property
    def is_cuda(self) -> _bool:
        return self._device.is_cuda

    def is_floating_point(self) -> _bool:
        return is_floating(self.dtype)

    def __len__(self) -> _int:
        if self._data.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self._data.shape[0]

    # ---- autograd fields ------------------------------------------------------------
    @property
    def requires_grad(self) -> _bool:
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value: _bool) -> None:
        self.requires_grad_(value)

    def requires_grad_(self, requires_grad: _bool = True) -> Tensor:
        if requires_grad and not is_floating(self.dtype):
            raise RuntimeError(f"requires_grad_: only floating point tensors can require "
                               f"gradients, got dtype {self.dtype}")
        if self.grad_fn is not None and not requires_grad:
            raise RuntimeError("requires_grad_: you can only change requires_grad of leaf "
                               "tensors; use detach() for a non-leaf")
        self._requires_grad = bool(requires_grad)
        return self

    @property
    def grad(self) -> Tensor | None:
        return self._grad

    @grad.setter
    def grad(self, value: Tensor | None) -> None:
        self._grad = value
        # NOTE: an optimizer counts the parameters whose .grad is the view of their gradient
        # slot, so that a step need not check each one; any assignment may end that, so the
        # slot is told (autograd fills a slot through the slot itself, not through here).
        if self._grad_slot is not None:
            self._grad_slot.release()

    @property
    def is_leaf(self) -> _bool:
        return self.grad_fn is None

    def retain_grad(self) -> None:
        """Keep ``.grad`` for this non-leaf tensor after backward."""
        if self.grad_fn is None:
            return
        if not self._retains_grad:
            self._retains_grad = True
            node = autograd.RetainGrad.hook(self)
            self.grad_fn, self._output_nr = node, 0

    def _edge(self) -> tuple[Any, int]:
        if self.grad_fn is not None:
            return (self.grad_fn, self._output_nr)
        if self._accum is None:
            self._accum = autograd.AccumulateGrad(self)
        return (self._accum, 0)

    def backward(self, gradient: Any = None, retain_graph: _bool | None = None,
                 create_graph: _bool = False) -> None:
        autograd.backward(self, gradient, retain_graph, create_graph)

    def detach(self) -> Tensor:
        """The same data (shared, like PyTorch), cut off from the graph."""
        return Tensor._make(self._data, self._device, version=self._version)

    # ---- the storage ------------------------------------------------------------------
    @property
    def array(self) -> Any:
        """The NumPy (``cpu``, ``emu``) or CuPy (``cuda``) array holding the values, shared,
        not copied: dlcore's door to the array world (``.numpy()`` copies from a GPU)."""
        return self._data

    @property
    def data(self) -> Tensor:
        """PyTorch's ``.data``: a tensor sharing this one's storage, detached from the graph
        and invisible to autograd's in-place checks (``p.data.normal_(0, 0.02)``,
        ``p.data.copy_(w)``). Unlike ``detach()`` its writes bump no version counter shared
        with this tensor, as in PyTorch; that is what makes it unsafe under autograd."""
        return Tensor._make(self._data, self._device)

    @data.setter
    def data(self, value: Tensor) -> None:
        """``t.data = other``: ``t`` holds ``other``'s storage from now on (same device and
        dtype, any shape, as PyTorch allows)."""
        if not isinstance(value, Tensor):
            raise TypeError(f"data: expected a Tensor, got {type(value).__name__}")
        if value._device is not self._device or value._data.dtype != self._data.dtype:
            raise RuntimeError(f"data: a tensor of dtype {value.dtype} on {value.device} cannot "
                               f"replace the data of a tensor of dtype {self.dtype} on "
                               f"{self.device}")
        self._data = value._data

    def detach_(self) -> Tensor:
        self.grad_fn = None
        self._requires_grad = False
        return self

    # ---- conversion -----------------------------------------------------------------
    def numpy(self) -> np.ndarray:
        """A NumPy array with the data: shared on ``cpu``/``emu``, a host copy on ``cuda``.
        (PyTorch refuses ``.numpy()`` on GPU tensors; copying is what users then do.)"""
        if _capturing:
            _check_not_capturing(self._device, "Tensor.numpy")
        return self._device.to_host(self._data)

    def item(self) -> Any:
        if _capturing:
            _check_not_capturing(self._device, "Tensor.item")
        if self._data.size != 1:
            raise RuntimeError(f"item: a tensor with {self._data.size} elements cannot be "
                               "converted to a Python scalar")
        return self._data.reshape(()).item() if isinstance(self._data, np.ndarray) else \
            self.numpy().reshape(()).item()

    def tolist(self) -> Any:
        return self.numpy().tolist()

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        arr = self.numpy()
        return arr if dtype is None else arr.astype(dtype, copy=False)

    def __dlpack__(self, *args: Any, **kwargs: Any) -> Any:
        return self._data.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self) -> Any:
        return self._data.__dlpack_device__()

    def to(self, *args: Any, **kwargs: Any) -> Tensor:
        """``t.to(device)``, ``t.to(dtype)``, ``t.to(device, dtype)``, ``t.to(other)``;
        differentiable; returns ``self`` when nothing changes."""
        copy = kwargs.pop("copy", False)
        fmt = kwargs.pop("memory_format", preserve_format)
        device, dtype = parse_to_args(args, kwargs, "to")
        out = ops.shape.to_device_dtype(self, device, dtype)
        if fmt is not preserve_format:
            formatted = ops.contiguous(out, fmt)
            if formatted is not out:
                return formatted
        return out.clone() if copy and out is self else out

    def set_(self, source: Tensor) -> Tensor:
        """Hold ``source``'s array on ``source``'s device from now on (PyTorch's ``set_``; what
        ``Module.to`` does to parameters so they stay the same objects). Not recorded by
        autograd; a leaf's gradient node is rebuilt when the device changes."""
        if source._device is not self._device:
            self._accum = None  # its node would report the old device
        self._data, self._device = source._data, source._device
        return self

    def cpu(self) -> Tensor:
        return self.to("cpu")

    def cuda(self, device: _int | None = None) -> Tensor:
        return self.to(Device("cuda", device))

    def type(self, dtype: Any = None) -> Any:
        return str(self.dtype) if dtype is None else self.to(dtype)

    def float(self) -> Tensor:
        return self.to(np.float32)

    def double(self) -> Tensor:
        return self.to(np.float64)

    def half(self) -> Tensor:
        return self.to(np.float16)

    def bfloat16(self) -> Tensor:
        return self.to(bfloat16)

    def long(self) -> Tensor:
        return self.to(np.int64)

    def int(self) -> Tensor:
        return self.to(np.int32)

    def bool(self) -> Tensor:
        return self.to(np.bool_)

    def __bool__(self) -> _bool:
        if self._data.size != 1:
            raise RuntimeError(f"bool: the truth value of a tensor with {self._data.size} "
                               "elements is ambiguous")
        return bool(self.item())

    def __float__(self) -> _float:
        return float(self.item())

    def __int__(self) -> _int:
        return int(self.item())

    def __index__(self) -> _int:
        if self._data.dtype.kind not in "iu" or self._data.size != 1:
            raise TypeError("only integer tensors of a single element can be an index")
        return int(self.item())

    __hash__ = object.__hash__

    def __iter__(self) -> Any:
        if self._data.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(self._data.shape[0]))

    def __format__(self, spec: str) -> str:
        """A one-element tensor formats as its value (``f"{loss:.3f}"``), as in PyTorch."""
        if self._data.size == 1 and self._data.ndim == 0:
            return format(self.item(), spec)
        return object.__format__(self, spec) if spec else repr(self)

    def __repr__(self) -> str:
        arr = self.numpy()
        if arr.dtype == bfloat16:  # ml_dtypes' scalars ignore array2string's precision
            arr = arr.astype(np.float32)
        body = np.array2string(arr, separator=", ", precision=4,
                               prefix="tensor(")
        extra = []
        if self._device is not _CPU:
            extra.append(f"device='{self._device}'")
        dt = self.dtype
        if dt != np.float32 and dt != np.int64 and dt != np.bool_:
            extra.append(f"dtype=dlcore.{dt}")
        if self.grad_fn is not None:
            extra.append(f"grad_fn={self.grad_fn!r}")
        elif self._requires_grad:
            extra.append("requires_grad=True")
        return "tensor(" + ", ".join([body] + extra) + ")"

    # ---- operators (each delegates to dlcore.ops) ------------------------------------------
    def __add__(self, other: Any) -> Tensor:
        return ops.add(self, other)

    def __radd__(self, other: Any) -> Tensor:
        return ops.add(self, other)

    def __sub__(self, other: Any) -> Tensor:
        return ops.sub(self, other)

    def __rsub__(self, other: Any) -> Tensor:
        return ops.sub(other, self)

    def __mul__(self, other: Any) -> Tensor:
        return ops.mul(self, other)

    def __rmul__(self, other: Any) -> Tensor:
        return ops.mul(self, other)

    def __truediv__(self, other: Any) -> Tensor:
        return ops.div(self, other)

    def __rtruediv__(self, other: Any) -> Tensor:
        return ops.div(other, self)

    def __pow__(self, exponent: Any) -> Tensor:
        return ops.pow(self, exponent)

    def __rpow__(self, base: Any) -> Tensor:
        return ops.pow(base, self)

    def __matmul__(self, other: Tensor) -> Tensor:
        return ops.matmul(self, other)

    def __rmatmul__(self, other: Any) -> Tensor:
        return ops.matmul(other, self)

    def __floordiv__(self, other: Any) -> Tensor:
        return ops.floor_divide(self, other)

    def __rfloordiv__(self, other: Any) -> Tensor:
        return ops.floor_divide(other, self)

    def __mod__(self, other: Any) -> Tensor:
        return ops.remainder(self, other)

    def __rmod__(self, other: Any) -> Tensor:
        return ops.remainder(other, self)

    def __neg__(self) -> Tensor:
        return ops.neg(self)

    def __abs__(self) -> Tensor:
        return ops.abs(self)

    # NOTE: comparisons return boolean Tensors, as in PyTorch and NumPy, not Python bools.
    def __eq__(self, other: Any) -> Tensor:  # type: ignore[override]
        return ops.eq(self, other)

    def __ne__(self, other: Any) -> Tensor:  # type: ignore[override]
        return ops.ne(self, other)

    def __lt__(self, other: Any) -> Tensor:
        return ops.lt(self, other)

    def __le__(self, other: Any) -> Tensor:
        return ops.le(self, other)

    def __gt__(self, other: Any) -> Tensor:
        return ops.gt(self, other)

    def __ge__(self, other: Any) -> Tensor:
        return ops.ge(self, other)

    def __invert__(self) -> Tensor:
        return ops.logical_not(self)

    def __and__(self, other: Tensor) -> Tensor:
        return ops.logical_and(self, other)

    def __or__(self, other: Tensor) -> Tensor:
        return ops.logical_or(self, other)

    def __getitem__(self, index: Any) -> Tensor:
        return ops.getitem(self, index)

    def __setitem__(self, index: Any, value: Any) -> None:
        ops.setitem(self, index, value)

    def __iadd__(self, other: Any) -> Tensor:
        return self.add_(other)

    def __isub__(self, other: Any) -> Tensor:
        return self.sub_(other)

    def __imul__(self, other: Any) -> Tensor:
        return self.mul_(other)

    def __itruediv__(self, other: Any) -> Tensor:
        return self.div_(other)

    # ---- arithmetic and elementwise functions ----------------------------------------------
    def add(self, other: Any, alpha: Any = 1) -> Tensor:
        return ops.add(self, other, alpha)

    def sub(self, other: Any, alpha: Any = 1) -> Tensor:
        return ops.sub(self, other, alpha)

    subtract = sub

    def mul(self, other: Any) -> Tensor:
        return ops.mul(self, other)

    multiply = mul

    def div(self, other: Any) -> Tensor:
        return ops.div(self, other)

    divide = div

    def pow(self, exponent: Any) -> Tensor:
        return ops.pow(self, exponent)

    def matmul(self, other: Tensor) -> Tensor:
        return ops.matmul(self, other)

    def mm(self, mat2: Tensor) -> Tensor:
        return ops.mm(self, mat2)

    def bmm(self, mat2: Tensor) -> Tensor:
        return ops.bmm(self, mat2)

    def maximum(self, other: Tensor) -> Tensor:
        return ops.maximum(self, other)

    def minimum(self, other: Tensor) -> Tensor:
        return ops.minimum(self, other)

    def exp(self) -> Tensor:
        return ops.exp(self)

    def log(self) -> Tensor:
        return ops.log(self)

    def log1p(self) -> Tensor:
        return ops.log1p(self)

    def sqrt(self) -> Tensor:
        return ops.sqrt(self)

    def rsqrt(self) -> Tensor:
        return ops.rsqrt(self)

    def abs(self) -> Tensor:
        return ops.abs(self)

    def sign(self) -> Tensor:
        return ops.sign(self)

    def sin(self) -> Tensor:
        return ops.sin(self)

    def cos(self) -> Tensor:
        return ops.cos(self)

    def tanh(self) -> Tensor:
        return ops.tanh(self)

    def sigmoid(self) -> Tensor:
        return ops.sigmoid(self)

    def relu(self) -> Tensor:
        return ops.relu(self)

    def leaky_relu(self, negative_slope: _float = 0.01) -> Tensor:
        return ops.leaky_relu(self, negative_slope)

    def gelu(self, approximate: str = "none") -> Tensor:
        return ops.gelu(self, approximate)

    def softplus(self, beta: _float = 1.0, threshold: _float = 20.0) -> Tensor:
        return ops.softplus(self, beta, threshold)

    def neg(self) -> Tensor:
        return ops.neg(self)

    def clamp(self, min: Any = None, max: Any = None) -> Tensor:
        return ops.clamp(self, min, max)

    clip = clamp

    def where(self, condition: Tensor, other: Any) -> Tensor:
        return ops.where(condition, self, other)

    def eq(self, other: Any) -> Tensor:
        return ops.eq(self, other)

    def ne(self, other: Any) -> Tensor:
        return ops.ne(self, other)

    def lt(self, other: Any) -> Tensor:
        return ops.lt(self, other)

    def le(self, other: Any) -> Tensor:
        return ops.le(self, other)

    def gt(self, other: Any) -> Tensor:
        return ops.gt(self, other)

    def ge(self, other: Any) -> Tensor:
        return ops.ge(self, other)

    def isnan(self) -> Tensor:
        return ops.isnan(self)

    def isfinite(self) -> Tensor:
        return ops.isfinite(self)

    def isinf(self) -> Tensor:
        return ops.isinf(self)

    def floor_divide(self, other: Any) -> Tensor:
        return ops.floor_divide(self, other)

    def remainder(self, other: Any) -> Tensor:
        return ops.remainder(self, other)

    def all(self, dim: _int | None = None, keepdim: _bool = False) -> Tensor:
        return ops.all(self, dim, keepdim)

    def any(self, dim: _int | None = None, keepdim: _bool = False) -> Tensor:
        return ops.any(self, dim, keepdim)

    def norm(self, p: Any = "fro", dim: Any = None, keepdim: _bool = False) -> Tensor:
        """PyTorch's ``Tensor.norm``: the Frobenius/Euclidean norm by default, or the
        ``p``-norm of the elements (over ``dim``); ``"nuc"``: the nuclear norm of a matrix."""
        if p == "nuc":
            return ops.linalg.matrix_norm(self, "nuc", (-2, -1) if dim is None else dim, keepdim)
        return ops.linalg.vector_norm(self, 2 if p == "fro" else p, dim, keepdim)

    def sort(self, dim: _int = -1, descending: _bool = False) -> Any:
        return ops.sort(self, dim, descending)

    def argsort(self, dim: _int = -1, descending: _bool = False) -> Tensor:
        return ops.argsort(self, dim, descending)

    def topk(self, k: _int, dim: _int = -1, largest: _bool = True, sorted: _bool = True) -> Any:
        return ops.topk(self, k, dim, largest, sorted)

    def tril(self, diagonal: _int = 0) -> Tensor:
        return ops.tril(self, diagonal)

    def triu(self, diagonal: _int = 0) -> Tensor:
        return ops.triu(self, diagonal)

    def logical_not(self) -> Tensor:
        return ops.logical_not(self)

    # ---- reductions ------------------------------------------------------------------------
    def sum(self, dim: Any = None, keepdim: _bool = False, dtype: Any = None) -> Tensor:
        return ops.sum(self, dim, keepdim, dtype)

    def mean(self, dim: Any = None, keepdim: _bool = False, dtype: Any = None) -> Tensor:
        return ops.mean(self, dim, keepdim, dtype)

    def prod(self, dim: _int | None = None, keepdim: _bool = False, dtype: Any = None) -> Tensor:
        return ops.prod(self, dim, keepdim, dtype)

    def max(self, dim: Any = None, keepdim: _bool = False) -> Any:
        """``t.max()`` -> a 0-d tensor; ``t.max(dim)`` -> (values, indices)."""
        return ops.max(self, dim, keepdim)

    def min(self, dim: Any = None, keepdim: _bool = False) -> Any:
        """``t.min()`` -> a 0-d tensor; ``t.min(dim)`` -> (values, indices)."""
        return ops.min(self, dim, keepdim)

    def amax(self, dim: Any = (), keepdim: _bool = False) -> Tensor:
        return ops.amax(self, dim, keepdim)

    def amin(self, dim: Any = (), keepdim: _bool = False) -> Tensor:
        return ops.amin(self, dim, keepdim)

    def argmax(self, dim: _int | None = None, keepdim: _bool = False) -> Tensor:
        return ops.argmax(self, dim, keepdim)

    def argmin(self, dim: _int | None = None, keepdim: _bool = False) -> Tensor:
        return ops.argmin(self, dim, keepdim)

    def var(self, dim: Any = None, unbiased: _bool | None = None, keepdim: _bool = False,
            correction: _float | None = None) -> Tensor:
        return ops.var(self, dim, unbiased, keepdim, correction)

    def std(self, dim: Any = None, unbiased: _bool | None = None, keepdim: _bool = False,
            correction: _float | None = None) -> Tensor:
        return ops.std(self, dim, unbiased, keepdim, correction)

    def logsumexp(self, dim: Any, keepdim: _bool = False) -> Tensor:
        return ops.logsumexp(self, dim, keepdim)

    def softmax(self, dim: _int, dtype: Any = None) -> Tensor:
        return ops.softmax(self, dim, dtype)

    def log_softmax(self, dim: _int, dtype: Any = None) -> Tensor:
        return ops.log_softmax(self, dim, dtype)

    # ---- shape and layout ------------------------------------------------------------------
    def reshape(self, *shape: Any) -> Tensor:
        return ops.reshape(self, *shape)

    def view(self, *shape: Any) -> Tensor:
        return ops.view(self, *shape)

    def view_as(self, other: Tensor) -> Tensor:
        return ops.reshape(self, *other.shape)

    reshape_as = view_as

    def flatten(self, start_dim: _int = 0, end_dim: _int = -1) -> Tensor:
        return ops.flatten(self, start_dim, end_dim)

    def unflatten(self, dim: _int, sizes: Sequence[_int]) -> Tensor:
        return ops.unflatten(self, dim, sizes)

    def squeeze(self, dim: Any = None) -> Tensor:
        return ops.squeeze(self, dim)

    def unsqueeze(self, dim: _int) -> Tensor:
        return ops.unsqueeze(self, dim)

    def transpose(self, dim0: _int, dim1: _int) -> Tensor:
        return ops.transpose(self, dim0, dim1)

    def t(self) -> Tensor:
        """The transpose of a 2-D tensor (a 0-D or 1-D tensor is returned as is)."""
        return ops.transpose(self, 0, 1) if self.ndim == 2 else self

    @property
    def T(self) -> Tensor:
        return ops.permute(self, *reversed(range(self.ndim)))

    @property
    def mT(self) -> Tensor:
        return ops.transpose(self, -2, -1)

    def permute(self, *dims: Any) -> Tensor:
        return ops.permute(self, *dims)

    def expand(self, *sizes: Any) -> Tensor:
        return ops.expand(self, *sizes)

    def expand_as(self, other: Tensor) -> Tensor:
        return ops.expand(self, *other.shape)

    def repeat(self, *sizes: Any) -> Tensor:
        return ops.repeat(self, *sizes)

    def split(self, split_size_or_sections: Any, dim: _int = 0) -> tuple[Tensor, ...]:
        return ops.split(self, split_size_or_sections, dim)

    def chunk(self, chunks: _int, dim: _int = 0) -> tuple[Tensor, ...]:
        return ops.chunk(self, chunks, dim)

    def unbind(self, dim: _int = 0) -> tuple[Tensor, ...]:
        return ops.unbind(self, dim)

    def flip(self, dims: Any) -> Tensor:
        return ops.flip(self, dims)

    def narrow(self, dim: _int, start: _int, length: _int) -> Tensor:
        return ops.narrow(self, dim, start, length)

    def contiguous(self, memory_format: memory_format = contiguous_format) -> Tensor:
        """``self`` when already laid out in ``memory_format``, else a differentiable copy
        that is; ``channels_last`` needs a 4-D tensor."""
        return ops.contiguous(self, memory_format)

    def is_contiguous(self, memory_format: memory_format = contiguous_format) -> _bool:
        """PyTorch's test: dense in the format's dimension order, size-1 dimensions
        ignored."""
        a = self._data
        if memory_format is channels_last:
            return a.ndim == 4 and _dense_in_order(a.shape, a.strides, a.itemsize,
                                                   (1, 3, 2, 0))
        if memory_format is not contiguous_format:
            raise ValueError(f"is_contiguous: memory_format must be dlcore.contiguous_format "
                             f"or dlcore.channels_last, got {memory_format!r}")
        return _bool(a.flags.c_contiguous)

    # ---- new tensors like this one (its dtype and device unless given) --------------------
    def new_tensor(self, data: Any, dtype: Any = None, device: Any = None,
                   requires_grad: _bool = False) -> Tensor:
        return Tensor(data, dtype=self.dtype if dtype is None else dtype,
                      device=self._device if device is None else device,
                      requires_grad=requires_grad)

    def new_full(self, size: Sequence[_int], fill_value: Any, dtype: Any = None,
                 device: Any = None, requires_grad: _bool = False) -> Tensor:
        return creation.full(size, fill_value, dtype=self.dtype if dtype is None else dtype,
                             device=self._device if device is None else device,
                             requires_grad=requires_grad)

    def new_zeros(self, *size: Any, dtype: Any = None, device: Any = None,
                  requires_grad: _bool = False) -> Tensor:
        return creation.zeros(*size, dtype=self.dtype if dtype is None else dtype,
                              device=self._device if device is None else device,
                              requires_grad=requires_grad)

    def new_ones(self, *size: Any, dtype: Any = None, device: Any = None,
                 requires_grad: _bool = False) -> Tensor:
        return creation.ones(*size, dtype=self.dtype if dtype is None else dtype,
                             device=self._device if device is None else device,
                             requires_grad=requires_grad)

    def new_empty(self, *size: Any, dtype: Any = None, device: Any = None,
                  requires_grad: _bool = False) -> Tensor:
        return creation.empty(*size, dtype=self.dtype if dtype is None else dtype,
                              device=self._device if device is None else device,
                              requires_grad=requires_grad)

    def clone(self) -> Tensor:
        return ops.clone(self)

    # ---- indexing --------------------------------------------------------------------------
    def gather(self, dim: _int, index: Tensor) -> Tensor:
        return ops.gather(self, dim, index)

    def scatter_add(self, dim: _int, index: Tensor, src: Tensor) -> Tensor:
        return ops.scatter_add(self, dim, index, src)

    def scatter_add_(self, dim: _int, index: Tensor, src: Tensor) -> Tensor:
        return self.copy_(ops.scatter_add(self, dim, index, src))

    def index_select(self, dim: _int, index: Tensor) -> Tensor:
        return ops.index_select(self, dim, index)

    def masked_fill(self, mask: Tensor, value: Any) -> Tensor:
        return ops.masked_fill(self, mask, value)

    def masked_fill_(self, mask: Tensor, value: Any) -> Tensor:
        return self.copy_(ops.masked_fill(self, mask, value))

    def multinomial(self, num_samples: _int, replacement: _bool = False) -> Tensor:
        return creation.multinomial(self, num_samples, replacement)

    def type_as(self, other: Tensor) -> Tensor:
        return self.to(other.dtype)

    # ---- in-place -------------------------------------------------------------------
    def _check_inplace(self, op: str) -> None:
        if self._requires_grad and self.grad_fn is None and autograd.is_grad_enabled():
            raise RuntimeError(f"{op}: a leaf tensor that requires grad (shape "
                               f"{tuple(self.shape)}) is being used in an in-place operation; "
                               "wrap it in dlcore.no_grad() (as optimizers do)")
        if self._view is not None:
            root, _, writable = self._view
            if not writable:
                raise RuntimeError(f"{op}: in-place write into an expanded tensor (shape "
                                   f"{tuple(self.shape)}, from shape {tuple(root.shape)}): "
                                   "several of its elements are one memory location; clone() "
                                   "it first")
            if root._requires_grad and root.grad_fn is None and autograd.is_grad_enabled():
                raise RuntimeError(f"{op}: a view of a leaf tensor that requires grad (view "
                                   f"shape {tuple(self.shape)}, leaf shape "
                                   f"{tuple(root.shape)}) is being used in an in-place "
                                   "operation; wrap it in dlcore.no_grad()")

    def _bump(self) -> None:
        self._version[0] += 1

    def _write(self, src: Any, casting: str) -> None:
        """``self._data[...] = src``: every raw in-place write goes through here, so that a
        CUDA graph capture on emu records it (dlcore.graphs)."""
        cap = autograd._capture
        if cap is not None and cap.recording(self._device):
            cap.write(self._data, src, casting)
        else:
            self._device.xp.copyto(self._data, src, casting=casting)

    def _inplace_from(self, result: Tensor, op: str) -> Tensor:
        """Write ``result`` into this tensor's storage and take over its graph node."""
        if result._device is not self._device:
            raise RuntimeError(f"{op}: expected a tensor on {self._device}, got {result._device}")
        if result.shape != self.shape:
            raise RuntimeError(f"{op}: result of shape {tuple(result.shape)} cannot be written "
                               f"in place into a tensor of shape {tuple(self.shape)}")
        self._write(result._data, "unsafe")
        self._bump()
        if result.grad_fn is not None and autograd.is_grad_enabled():
            if result.dtype != self.dtype:
                result = result.to(self.dtype)
            if self._view is None:
                self._adopt_graph(result)
                self._replay_views()
            else:  # the write reached the root's storage: rewrite the root's graph too
                root, replay, _ = self._view
                root._adopt_graph(ops.shape.write_through_view(root._snapshot(copy=False),
                                                               result, replay))
                root._replay_views()  # this view among them
        return self

    def _adopt_graph(self, other: Tensor) -> None:
        """Take over ``other``'s place in the graph (this tensor now stands for its value)."""
        self.grad_fn, self._output_nr = other.grad_fn, other._output_nr
        self._requires_grad = other._requires_grad

    def _replay_views(self) -> None:
        """After this root's graph changed, point each of its live views at the new graph."""
        if not self._views:
            return
        live = []
        for ref in self._views:
            view = ref()
            if view is None or view._view is None:
                continue
            live.append(ref)
            view._adopt_graph(view._view[1](self))
        self._views = live

    def _snapshot(self, copy: _bool) -> Tensor:
        """A Tensor standing for this one's current value and graph position before an
        in-place write: same node, leaf accumulator and requires_grad; its own copy of the
        data when ``copy`` (the write would change what an op saved), else shared."""
        snap = Tensor._make(self._data.copy() if copy else self._data, self._device,
                            self.grad_fn, self._output_nr)
        snap._requires_grad = self._requires_grad
        snap._accum = self._accum
        return snap

    def _share_version(self, base: Tensor, replay: Any = None,
                       writable: _bool = True) -> Tensor:
        """Make this tensor (a view of ``base``) share ``base``'s version counter, so an
        in-place write through either is seen by autograd's guards on both. With ``replay``
        (a function rebuilding this view from ``base`` with differentiable view ops) it is
        also a view for autograd: a write through it rewrites the root's graph, and it
        follows in-place changes of the root (``writable=False``: an expanded view, whose
        writes are refused)."""
        self._version = base._version
        if replay is None:
            return self
        if base._view is not None:  # a view of a view: keep the root, compose the replays
            root, first, base_writable = base._view
            self._view = (root, lambda t: replay(first(t)), writable and base_writable)
        else:
            root = base
            self._view = (base, replay, writable)
        views = root._views
        if views is None:
            root._views = [weakref.ref(self)]
        else:
            if len(views) >= 32 and (len(views) & (len(views) - 1)) == 0:  # powers of 2
                views[:] = [r for r in views if r() is not None]
            views.append(weakref.ref(self))
        return self

    def _inplace_binary(self, other: Any, op: str, fn: Any) -> Tensor:
        self._check_inplace(op)
        if autograd.is_grad_enabled() and (self._requires_grad or (
                isinstance(other, Tensor) and other._requires_grad)):
            # NOTE: the out-of-place op may save `self` for backward; give it a snapshot,
            # since the storage is overwritten next.
            return self._inplace_from(fn(self._snapshot(copy=True), other), op)
        result = fn(self, other)
        self._write(result._data if isinstance(result, Tensor) else result, "same_kind")
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
        if autograd.is_grad_enabled() and self.grad_fn is not None:
            # PyTorch's copy_ is differentiable: a non-leaf stays in the graph (its earlier
            # history gets a zero gradient) instead of silently becoming a constant
            return self._inplace_from(ops.index.overwrite(self._snapshot(copy=False),
                                                          src_b._data), "copy_")
        self._write(src_b._data, "unsafe")
        self._bump()
        return self

    def fill_(self, value: Any) -> Tensor:
        """Set every element to ``value``; on a non-leaf this stays a differentiable
        in-place op (a zero gradient to the tensor's earlier history), as in PyTorch."""
        self._check_inplace("fill_")
        value = value.item() if isinstance(value, Tensor) else value
        if autograd.is_grad_enabled() and self.grad_fn is not None:
            return self._inplace_from(ops.index.overwrite(self._snapshot(copy=False), value),
                                      "fill_")
        self._write(value, "unsafe")
        self._bump()
        return self

    def zero_(self) -> Tensor:
        return self.fill_(0)

    def uniform_(self, a: _float = 0.0, b: _float = 1.0) -> Tensor:
        with autograd.no_grad():
            self.copy_(Tensor._make(random.uniform_array(self.shape, a, b, self.dtype,
                                                         self._device), self._device))
        return self

    def normal_(self, mean: _float = 0.0, std: _float = 1.0) -> Tensor:
        with autograd.no_grad():
            self.copy_(Tensor._make(random.normal_array(self.shape, mean, std, self.dtype,
                                                 self._device), self._device))
        return self



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


# NOTE: the ops and creation build Tensors, so they import this module; Tensor's methods call
# them at run time through these module-level imports, which must come after the class.
from . import creation, ops  # noqa: E402


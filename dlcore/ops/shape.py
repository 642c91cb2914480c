"""Shape and layout ops: casts and device moves, reshape/view, squeeze/unsqueeze, transpose,
permute, expand, repeat, cat/stack/split/chunk, pad, flip, clone.

View-producing ops share the input's version counter, so an in-place write through a view
is seen by the autograd guard of the base (and the other way round), as in PyTorch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..autograd import Function, no_grad
from ..device import Device
from ..dtypes import BF16_WORDS, bfloat16, is_floating, promote
from ..tensor import (Tensor, channels_last, channels_last_array, contiguous_format,
                      is_channels_last, preserve_format)
from ._util import cast, normalize_dim, sum_to


class ToDeviceDtype(Function):
    def forward(self, x: Any, device: Device | None, dtype: np.dtype | None) -> Any:
        src_dtype = x.dtype if x.dtype != BF16_WORDS else bfloat16  # cuda's bfloat16 words
        self.src_device, self.src_dtype = self.device, src_dtype
        if device is not None and device is not self.device:
            x = device.move(x, self.device)
            self.device = device  # outputs are labelled with the device forward produced
        if dtype is not None and dtype != src_dtype:
            x = self.device.astype(x, dtype)
        return x

    def backward(self, g: Tensor) -> tuple:
        return (to_device_dtype(g, self.src_device, self.src_dtype),)


def to_device_dtype(x: Tensor, device: Device | None, dtype: np.dtype | None) -> Tensor:
    if (device is None or device is x.device) and (dtype is None or dtype == x.dtype):
        return x
    if dtype is not None and not is_floating(dtype) and x.requires_grad:
        # casting to a non-float type ends differentiation
        with no_grad():
            return ToDeviceDtype.apply(x, device=device, dtype=dtype)
    return ToDeviceDtype.apply(x, device=device, dtype=dtype)


def _view_of(out: Tensor, base: Tensor, replay: Any, writable: bool = True) -> Tensor:
    """Mark ``out`` as a view of ``base``: ``replay(base)`` rebuilds it with differentiable
    view ops (see ``Tensor._share_version``)."""
    return out._share_version(base, replay, writable)


class WriteThroughView(Function):
    """The root of a view after an in-place write into the view (PyTorch's CopySlices): its
    values are already in place (shared storage); the graph says that the view's region now
    comes from ``new`` and the rest from the root's earlier history."""

    def forward(self, base: Any, new: Any, replay: Any) -> Any:
        self.replay, self.shape = replay, base.shape
        return base

    def backward(self, g: Tensor) -> tuple:
        keep = None
        if self.needs_input_grad[0]:
            mask = self.device.xp.ones(self.shape, dtype=g.dtype)
            with no_grad():  # zero the view's region of the mask through the same view
                self.replay(Tensor._make(mask, self.device))._data[...] = 0
            keep = g * Tensor._make(mask, self.device)
        return keep, (self.replay(g) if self.needs_input_grad[1] else None)


def write_through_view(base: Tensor, new: Tensor, replay: Any) -> Tensor:
    """``base`` (a snapshot of a view's root) after ``new`` was written into the view that
    ``replay`` rebuilds from it: a node whose output the root adopts."""
    return WriteThroughView.apply(base, new, replay=replay)


def _shares_memory(a: Any, b: Any, xp: Any) -> bool:
    """Whether array ``a`` is (part of) ``b``'s memory rather than a copy (bounds only)."""
    return a.size == 0 or bool(xp.may_share_memory(a, b))


class Reshape(Function):
    def forward(self, x: Any, shape: tuple) -> Any:
        self.in_shape = x.shape
        return x.reshape(shape)

    def backward(self, g: Tensor) -> tuple:
        return (g.reshape(*self.in_shape),)


def _shape_arg(shape: Sequence[Any]) -> tuple:
    if len(shape) == 1 and isinstance(shape[0], list | tuple):
        shape = shape[0]
    return tuple(int(s) for s in shape)


def _checked_shape(input: Tensor, shape: tuple, op: str) -> None:
    n = input._data.size
    known = int(math.prod([s for s in shape if s != -1])) if shape else 1
    if shape.count(-1) > 1 or (-1 not in shape and known != n) or (
            -1 in shape and (known == 0 or n % known)):
        raise RuntimeError(f"{op}: shape {shape} is invalid for input of shape "
                           f"{tuple(input.shape)} ({n} elements)")


def reshape(input: Tensor, *shape: Any) -> Tensor:
    """A view of ``input`` with another shape where its strides allow one, else a copy
    (PyTorch's rule).

    >>> dlcore.arange(6).reshape(2, 3).shape
    (2, 3)"""
    shape = _shape_arg(shape)
    if shape == input._data.shape:
        return input
    _checked_shape(input, shape, "reshape")
    out = Reshape.apply(input, shape=shape)
    if not _shares_memory(out._data, input._data, input.device.xp):
        return out  # a copy: writes to it do not reach input
    return _view_of(out, input, lambda t: Reshape.apply(t, shape=shape))


def view(input: Tensor, *shape: Any) -> Tensor:
    """A view of ``input`` with another shape, sharing its memory; raises where the strides
    allow none (a transposed tensor, say), as PyTorch does: use reshape() or contiguous().

    >>> dlcore.arange(6).view(3, 2).shape
    (3, 2)"""
    shape = _shape_arg(shape)
    _checked_shape(input, shape, "view")
    out = reshape(input, *shape)
    if out is not input and not _shares_memory(out._data, input._data, input.device.xp):
        raise RuntimeError(f"view: size {shape} is not compatible with the input's size and "
                           f"stride (shape {tuple(input.shape)}, strides "
                           f"{tuple(input._data.strides)}: a dimension spans non-contiguous "
                           "memory); use .reshape(...) instead, or .contiguous() first")
    return out


def flatten(input: Tensor, start_dim: int = 0, end_dim: int = -1) -> Tensor:
    if input.ndim == 0:
        return reshape(input, 1)
    s = normalize_dim(start_dim, input.ndim, "flatten")
    e = normalize_dim(end_dim, input.ndim, "flatten")
    if s > e:
        raise RuntimeError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim}")
    shp = input.shape
    return reshape(input, *shp[:s], int(math.prod(shp[s:e + 1])), *shp[e + 1:])


def unflatten(input: Tensor, dim: int, sizes: Sequence[int]) -> Tensor:
    d = normalize_dim(dim, input.ndim, "unflatten")
    shp = input.shape
    return reshape(input, *shp[:d], *sizes, *shp[d + 1:])


def squeeze(input: Tensor, dim: Any = None) -> Tensor:
    shp = input.shape
    if dim is None:
        new = tuple(s for s in shp if s != 1)
    else:
        given = (dim,) if isinstance(dim, int) else tuple(dim)
        dims = {normalize_dim(d, input.ndim, "squeeze") for d in given}
        new = tuple(s for i, s in enumerate(shp) if not (i in dims and s == 1))
    return reshape(input, *new)


def unsqueeze(input: Tensor, dim: int) -> Tensor:
    d = normalize_dim(dim, input.ndim + 1, "unsqueeze")
    shp = input.shape
    return reshape(input, *shp[:d], 1, *shp[d:])


class Permute(Function):
    def forward(self, x: Any, dims: tuple) -> Any:
        self.dims = dims
        return x.transpose(dims)

    def backward(self, g: Tensor) -> tuple:
        return (permute(g, *np.argsort(self.dims).tolist()),)


def permute(input: Tensor, *dims: Any) -> Tensor:
    dims = _shape_arg(dims)
    if len(dims) != input.ndim:
        raise RuntimeError(f"permute: number of dims {len(dims)} does not match the tensor's "
                           f"{input.ndim} dims (shape {tuple(input.shape)})")
    nd = tuple(normalize_dim(d, input.ndim, "permute") for d in dims)
    if sorted(nd) != list(range(input.ndim)):
        raise RuntimeError(f"permute: dims {dims} is not a permutation")
    if nd == tuple(range(input.ndim)):
        return input
    return _view_of(Permute.apply(input, dims=nd), input, lambda t: Permute.apply(t, dims=nd))


def transpose(input: Tensor, dim0: int, dim1: int) -> Tensor:
    n = input.ndim
    if n < 2 and dim0 in (0, -1) and dim1 in (0, -1):
        return input
    d0, d1 = normalize_dim(dim0, n, "transpose"), normalize_dim(dim1, n, "transpose")
    dims = list(range(n))
    dims[d0], dims[d1] = dims[d1], dims[d0]
    return permute(input, *dims)


class Expand(Function):
    def forward(self, x: Any, shape: tuple) -> Any:
        self.in_shape = x.shape
        return self.device.xp.broadcast_to(x, shape)

    def backward(self, g: Tensor) -> tuple:
        return (sum_to(g, self.in_shape),)


def expand(input: Tensor, *sizes: Any) -> Tensor:
    sizes = _shape_arg(sizes)
    shp = input.shape
    if len(sizes) < len(shp):
        raise RuntimeError(f"expand: the number of sizes {len(sizes)} must be at least the "
                           f"tensor's dims {len(shp)} (shape {tuple(shp)})")
    lead = len(sizes) - len(shp)
    target = []
    for i, s in enumerate(sizes):
        cur = shp[i - lead] if i >= lead else None
        if s == -1:
            if cur is None:
                raise RuntimeError("expand: -1 is not allowed for a new leading dim")
            s = cur
        elif cur is not None and cur != 1 and cur != s:
            raise RuntimeError(f"expand: the expanded size {s} must match the existing size "
                               f"{cur} at dim {i} (shape {tuple(shp)} -> {sizes})")
        target.append(s)
    target_t = tuple(target)
    if target_t == shp:
        return input
    return _view_of(Expand.apply(input, shape=target_t), input,
                    lambda t: Expand.apply(t, shape=target_t), writable=False)


def broadcast_to(input: Tensor, shape: Sequence[int]) -> Tensor:
    return expand(input, *shape)


def repeat(input: Tensor, *sizes: Any) -> Tensor:
    """Tile the tensor ``sizes[i]`` times along dim i (PyTorch's ``repeat``, NumPy's tile);
    composed of expand + reshape so the gradient is a sum over the copies."""
    sizes = _shape_arg(sizes)
    if len(sizes) < input.ndim:
        raise RuntimeError(f"repeat: number of repeat dims {len(sizes)} is less than the "
                           f"tensor's dims {input.ndim}")
    if any(r < 0 for r in sizes):
        raise RuntimeError(f"repeat: repeat counts must be non-negative, got {sizes}")
    x = reshape(input, *((1,) * (len(sizes) - input.ndim) + input.shape))
    inter, final = [], []
    for r, s in zip(sizes, x.shape):
        inter += [r, s]
        final.append(r * s)
    x = reshape(x, *[v for s in x.shape for v in (1, s)])
    return reshape(expand(x, *inter).contiguous(), *final)


class Contiguous(Function):
    def forward(self, x: Any, channels_last: bool = False) -> Any:
        xp = self.device.xp
        return channels_last_array(xp, x) if channels_last else xp.ascontiguousarray(x)

    def backward(self, g: Tensor) -> tuple:
        return (g,)


def contiguous(input: Tensor, memory_format: Any = contiguous_format) -> Tensor:
    """``input`` when it is laid out in ``memory_format`` already, else a copy that is
    (differentiable; the gradient passes through unchanged)."""
    if memory_format is channels_last:
        if input.ndim != 4:
            raise RuntimeError(f"contiguous: memory_format=dlcore.channels_last needs a 4-D "
                               f"(N, C, H, W) tensor, got shape {tuple(input.shape)}")
        if is_channels_last(input._data):
            return input
        return Contiguous.apply(input, channels_last=True)
    if memory_format is not contiguous_format and memory_format is not preserve_format:
        raise ValueError(f"contiguous: memory_format must be dlcore.contiguous_format or "
                         f"dlcore.channels_last, got {memory_format!r}")
    if memory_format is preserve_format or input._data.flags.c_contiguous:
        return input
    return Contiguous.apply(input)


class Clone(Function):
    def forward(self, x: Any) -> Any:
        return x.copy()

    def backward(self, g: Tensor) -> tuple:
        return (g,)


def clone(input: Tensor) -> Tensor:
    return Clone.apply(input)


class Cat(Function):
    def forward(self, *xs: Any, dim: int) -> Any:
        self.dim = dim
        self.sizes = [x.shape[dim] for x in xs]
        return self.device.xp.concatenate(xs, axis=dim)

    def backward(self, g: Tensor) -> tuple:
        parts = split(g, self.sizes, self.dim)
        return tuple(p if need else None for p, need in zip(parts, self.needs_input_grad))


def cat(tensors: Sequence[Tensor], dim: int = 0) -> Tensor:
    """Concatenate along an existing dim; dtypes are promoted as for binary ops."""
    ts = list(tensors)
    if not ts:
        raise ValueError("cat: expected a non-empty sequence of tensors")
    dt = ts[0].dtype
    for t in ts[1:]:
        dt = promote(dt, t.dtype)
    ts = [cast(t, dt) for t in ts]
    nd = ts[0].ndim
    d = normalize_dim(dim, nd, "cat")
    for i, t in enumerate(ts):
        if t.ndim != nd or t.shape[:d] + t.shape[d + 1:] != ts[0].shape[:d] + ts[0].shape[d + 1:]:
            raise RuntimeError(f"cat: sizes of tensors must match except in dim {d}: tensor 0 "
                               f"has shape {tuple(ts[0].shape)}, tensor {i} has shape "
                               f"{tuple(t.shape)}")
    if len(ts) == 1:
        return ts[0]
    return Cat.apply(*ts, dim=d)


def stack(tensors: Sequence[Tensor], dim: int = 0) -> Tensor:
    ts = list(tensors)
    if not ts:
        raise ValueError("stack: expected a non-empty sequence of tensors")
    for i, t in enumerate(ts):
        if t.shape != ts[0].shape:
            raise RuntimeError(f"stack: expects each tensor to be equal size, but got "
                               f"{tuple(ts[0].shape)} at entry 0 and {tuple(t.shape)} at "
                               f"entry {i}")
    d = normalize_dim(dim, ts[0].ndim + 1, "stack")
    return cat([unsqueeze(t, d) for t in ts], d)


class Slice(Function):
    """Basic (view) indexing with a tuple of slices/ints/None/Ellipsis."""

    def forward(self, x: Any, index: Any) -> Any:
        self.in_shape, self.index = x.shape, index
        out = x[index]
        if isinstance(out, np.generic):
            # NOTE: NumPy returns a scalar copy when every dim is indexed by an int; with an
            # Ellipsis it returns a 0-d view, so t[0].mul_(2) reaches t as in PyTorch
            out = x[tuple(index) + (Ellipsis,)]
        return out

    def backward(self, g: Tensor) -> tuple:
        return (SliceBackward.apply(g, shape=self.in_shape, index=self.index),)


def _slice_replay(index: Any) -> Any:
    return lambda t: Slice.apply(t, index=index)


class SliceBackward(Function):
    def forward(self, g: Any, shape: tuple, index: Any) -> Any:
        self.index = index
        out = self.device.xp.zeros(shape, dtype=g.dtype)
        out[index] = g
        return out

    def backward(self, gg: Tensor) -> tuple:
        return (Slice.apply(gg, index=self.index),)


def split(tensor: Tensor, split_size_or_sections: Any, dim: int = 0) -> tuple[Tensor, ...]:
    d = normalize_dim(dim, tensor.ndim, "split")
    n = tensor.shape[d]
    if isinstance(split_size_or_sections, int):
        step = split_size_or_sections
        if step <= 0:
            raise ValueError(f"split: split_size must be positive, got {step}")
        sizes = [min(step, n - i) for i in range(0, n, step)] or [0]
    else:
        sizes = list(split_size_or_sections)
        if sum(sizes) != n:
            raise RuntimeError(f"split: sections {sizes} do not sum to the size {n} of dim {d} "
                               f"(shape {tuple(tensor.shape)})")
    out, start = [], 0
    for s in sizes:
        index = (slice(None),) * d + (slice(start, start + s),)
        out.append(_view_of(Slice.apply(tensor, index=index), tensor, _slice_replay(index)))
        start += s
    return tuple(out)


def chunk(input: Tensor, chunks: int, dim: int = 0) -> tuple[Tensor, ...]:
    if chunks <= 0:
        raise ValueError(f"chunk: chunks must be positive, got {chunks}")
    n = input.shape[normalize_dim(dim, input.ndim, "chunk")]
    if n == 0:  # PyTorch: ``chunks`` empty pieces
        return split(input, [0] * chunks, dim)
    return split(input, -(-n // chunks), dim)


def unbind(input: Tensor, dim: int = 0) -> tuple[Tensor, ...]:
    if input.shape[normalize_dim(dim, input.ndim, "unbind")] == 0:
        return ()  # PyTorch: no slices of an empty dim
    return tuple(squeeze(t, dim) for t in split(input, 1, dim))


class Pad(Function):
    def forward(self, x: Any, widths: tuple, mode: str, value: float) -> Any:
        self.widths = widths
        xp = self.device.xp
        # negative pads crop: apply positive pads with np.pad, then slice
        pos = tuple((max(a, 0), max(b, 0)) for a, b in widths)
        if mode == "constant":
            y = xp.pad(x, pos, mode="constant", constant_values=value)
        else:
            y = xp.pad(x, pos, mode={"reflect": "reflect", "replicate": "edge",
                                     "circular": "wrap"}[mode])
        self.mode = mode
        return y[self._crop(y.shape)]

    def _crop(self, shape: tuple) -> tuple:
        return tuple(slice(-min(a, 0), s + min(b, 0)) for (a, b), s in zip(self.widths, shape))

    def backward(self, g: Tensor) -> tuple:
        if self.mode != "constant":
            raise RuntimeError(f"pad: backward for mode {self.mode!r} is not supported; "
                               "use mode='constant'")
        # inverse: pad by the negated widths
        return (Pad.apply(g, widths=tuple((-a, -b) for a, b in self.widths), mode="constant",
                          value=0.0),)


def pad(input: Tensor, pad: Sequence[int], mode: str = "constant",
        value: float = 0.0) -> Tensor:
    """PyTorch's ``F.pad``: ``pad`` lists (before, after) pairs starting from the LAST dim."""
    if len(pad) % 2 or len(pad) // 2 > input.ndim:
        raise ValueError(f"pad: padding length {len(pad)} must be even and at most twice the "
                         f"number of dims ({input.ndim}, shape {tuple(input.shape)})")
    if mode not in ("constant", "reflect", "replicate", "circular"):
        raise ValueError(f"pad: unknown mode {mode!r}")
    widths = [(0, 0)] * input.ndim
    for i in range(len(pad) // 2):
        widths[input.ndim - 1 - i] = (int(pad[2 * i]), int(pad[2 * i + 1]))
    return Pad.apply(input, widths=tuple(widths), mode=mode, value=value)


class Flip(Function):
    def forward(self, x: Any, dims: tuple) -> Any:
        self.dims = dims
        # NOTE: a copy, as PyTorch's flip: NumPy's flip is a view, which would let writes to
        # the result change the input behind autograd's back
        return self.device.xp.ascontiguousarray(self.device.xp.flip(x, axis=dims))

    def backward(self, g: Tensor) -> tuple:
        return (Flip.apply(g, dims=self.dims),)


def flip(input: Tensor, dims: Any) -> Tensor:
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    nd = tuple(normalize_dim(d, input.ndim, "flip") for d in dims)
    return Flip.apply(input, dims=nd)


def narrow(input: Tensor, dim: int, start: int, length: int) -> Tensor:
    """The ``length`` entries of ``dim`` from ``start`` on, a view (PyTorch's ``narrow``).

    >>> dlcore.arange(5).narrow(0, 1, 3).tolist()
    [1, 2, 3]
    """
    d = normalize_dim(dim, input.ndim, "narrow")
    size = input.shape[d]
    begin = start + size if start < 0 else start
    if not 0 <= begin <= size or length < 0 or begin + length > size:
        raise IndexError(f"narrow: start {start} + length {length} is out of range for dim "
                         f"{dim} of size {size} (shape {tuple(input.shape)})")
    index = (slice(None),) * d + (slice(begin, begin + length),)
    return _view_of(Slice.apply(input, index=index), input, _slice_replay(index))


"""Indexing: ``t[...]``, ``t[...] = v``, gather, scatter_add, index_select, masked_fill.

Basic indexing (ints, slices, None, Ellipsis) gives views; advanced indexing (integer
tensors, boolean masks) copies, and its gradient accumulates with ``xp.add.at`` so repeated
indices each contribute.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import autograd
from ..autograd import Function
from ..device import host_checks
from ..tensor import Tensor
from ._util import as_tensor_like, normalize_dim, promote_pair, sum_to
from .elementwise import where
from .shape import Slice, _slice_replay, _view_of, pad


def _convert_index(index: Any, t: Tensor) -> tuple[Any, bool]:
    """Raw index for the array module, and whether it is basic (view) indexing."""
    items = index if isinstance(index, tuple) else (index,)
    out, basic = [], True
    for it in items:
        if isinstance(it, Tensor):
            if it.device is not t.device:
                raise RuntimeError(f"index: indices on {it.device} for a tensor on "
                                   f"{t.device}")
            if it._data.dtype.kind not in "biu":
                raise IndexError(f"index: tensors used as indices must be integer or bool, "
                                 f"got {it.dtype}")
            out.append(it._data)
            basic = False
        elif isinstance(it, list | np.ndarray):
            arr = np.asarray(it)
            out.append(t.device.asarray(arr))
            basic = False
        elif isinstance(it, bool):
            out.append(it)
            basic = False
        else:
            out.append(it)
    return tuple(out), basic


class IndexAdvanced(Function):
    def forward(self, x: Any, index: Any) -> Any:
        self.in_shape, self.index = x.shape, index
        return x[index]

    def backward(self, g: Tensor) -> tuple:
        return (IndexAdd.apply(g, shape=self.in_shape, index=self.index),)


class IndexAdd(Function):
    """zeros(shape) with ``g`` added at ``index`` (repeated indices accumulate)."""

    def forward(self, g: Any, shape: tuple, index: Any) -> Any:
        self.index = index
        xp = self.device.xp
        out = xp.zeros(shape, dtype=g.dtype)
        xp.add.at(out, index, g)
        return out

    def backward(self, gg: Tensor) -> tuple:
        return (IndexAdvanced.apply(gg, index=self.index),)


def getitem(t: Tensor, index: Any) -> Tensor:
    raw, basic = _convert_index(index, t)
    if basic:
        try:
            return _view_of(Slice.apply(t, index=raw), t, _slice_replay(raw))
        except IndexError as exc:
            raise IndexError(f"index: {exc} (tensor shape {tuple(t.shape)})") from None
    try:
        return IndexAdvanced.apply(t, index=raw)
    except IndexError as exc:
        raise IndexError(f"index: {exc} (tensor shape {tuple(t.shape)})") from None


class Overwrite(Function):
    """``x`` replaced by constant ``values`` (broadcast, cast to x's dtype): the differentiable
    core of ``fill_``, ``zero_`` and ``copy_`` from a constant on a non-leaf, whose earlier
    history then gets a zero gradient, as in PyTorch."""

    def forward(self, x: Any, values: Any) -> Any:
        out = self.device.xp.empty_like(x)
        out[...] = values
        return out

    def backward(self, g: Tensor) -> tuple:
        return (Tensor._make(self.device.xp.zeros_like(g._data), self.device),)


def overwrite(t: Tensor, values: Any) -> Tensor:
    """A tensor shaped and typed like ``t`` holding ``values``, differentiable (zero) in t."""
    return Overwrite.apply(t, values=values)


class IndexPut(Function):
    """``x`` with ``x[index] = v`` (out of place); the base of ``t[index] = v``."""

    def forward(self, x: Any, v: Any, index: Any) -> Any:
        self.index, self.v_shape = index, v.shape
        out = x.copy()
        out[index] = v
        return out

    def backward(self, g: Tensor) -> tuple:
        nx, nv = self.needs_input_grad
        gx = gv = None
        if nx:
            mask = self.device.xp.ones(g.shape, dtype=g._data.dtype)
            mask[self.index] = 0
            gx = g * Tensor._make(mask, self.device)
        if nv:
            sel = Slice.apply(g, index=self.index)
            gv = sum_to(sel, self.v_shape) if sel.shape != self.v_shape else sel
        return gx, gv


def setitem(t: Tensor, index: Any, value: Any) -> None:
    t._check_inplace("setitem")
    raw, _ = _convert_index(index, t)
    if isinstance(value, Tensor):
        if value.device is not t.device:
            value = value.to(t.device)
    else:
        value = as_tensor_like(np.asarray(value, dtype=t.dtype), t)
    if autograd.is_grad_enabled() and (t.requires_grad or value.requires_grad):
        value = value.to(t.dtype)
        # IndexPut writes into a copy of its input, so the snapshot may share the data
        t._inplace_from(IndexPut.apply(t._snapshot(copy=False), value, index=raw), "setitem")
        return
    try:
        t._data[raw] = value._data
    except (ValueError, IndexError) as exc:
        raise RuntimeError(f"setitem: {exc} (tensor shape {tuple(t.shape)}, value shape "
                           f"{tuple(value.shape)})") from None
    t._bump()


def _check_index_tensor(index: Tensor, op: str) -> None:
    if not isinstance(index, Tensor) or index._data.dtype.kind not in "iu":
        raise TypeError(f"{op}: index must be an integer tensor")


class Gather(Function):
    def forward(self, x: Any, index: Any, dim: int) -> Any:
        self.in_shape, self.dim, self.index = x.shape, dim, index
        return self.device.xp.take_along_axis(x, index, axis=dim)

    def backward(self, g: Tensor) -> tuple:
        zeros = Tensor._make(self.device.xp.zeros(self.in_shape, g._data.dtype), self.device)
        return (scatter_add(zeros, self.dim, Tensor._make(self.index, self.device), g),)


def gather(input: Tensor, dim: int, index: Tensor) -> Tensor:
    """``out[i][j] = input[index[i][j]][j]`` for dim 0, and so on (PyTorch's gather)."""
    _check_index_tensor(index, "gather")
    d = normalize_dim(dim, input.ndim, "gather")
    if index.ndim != input.ndim:
        raise RuntimeError(f"gather: index has {index.ndim} dims but input has {input.ndim} "
                           f"(shapes {tuple(index.shape)} and {tuple(input.shape)})")
    for i, (si, sx) in enumerate(zip(index.shape, input.shape)):
        if i != d and si > sx:
            raise RuntimeError(f"gather: index shape {tuple(index.shape)} exceeds input shape "
                               f"{tuple(input.shape)} at dim {i}")
    idx = index._data
    if idx.shape[:d] + idx.shape[d + 1:] != input.shape[:d] + input.shape[d + 1:]:
        # take_along_axis needs full-size other dims: work on the slice the index covers
        sl = tuple(slice(0, s) if i != d else slice(None) for i, s in enumerate(idx.shape))
        input = getitem(input, sl)
    if idx.size and host_checks(input.device) and (int(idx.max()) >= input.shape[d]
                                                   or int(idx.min()) < 0):
        raise IndexError(f"gather: index out of range for dim {d} of size {input.shape[d]}")
    return Gather.apply(input, index=idx, dim=d)


class ScatterAdd(Function):
    def forward(self, x: Any, src: Any, index: Any, dim: int) -> Any:
        xp = self.device.xp
        self.dim, self.index, self.src_shape = dim, index, src.shape
        out = x.copy()
        # an open grid over every dim, with the index array replacing dim `dim`
        nd = index.ndim
        grids = [xp.arange(n).reshape((1,) * i + (n,) + (1,) * (nd - i - 1))
                 for i, n in enumerate(index.shape)]
        grids[dim] = index
        src_sl = src[tuple(slice(0, s) for s in index.shape)]
        xp.add.at(out, tuple(grids), src_sl)
        return out

    def backward(self, g: Tensor) -> tuple:
        nx, ns = self.needs_input_grad
        gsrc = None
        if ns:
            gsrc = gather(g, self.dim, Tensor._make(self.index, self.device))
            if gsrc.shape != self.src_shape:
                gsrc = pad_to(gsrc, self.src_shape)
        return (g if nx else None, gsrc)


def pad_to(t: Tensor, shape: tuple) -> Tensor:
    widths: list[int] = []
    for s, target in zip(reversed(t.shape), reversed(shape)):
        widths += [0, target - s]
    return pad(t, widths)


def scatter_add(input: Tensor, dim: int, index: Tensor, src: Tensor) -> Tensor:
    """Out-of-place ``input.scatter_add(dim, index, src)``: repeated indices accumulate."""
    _check_index_tensor(index, "scatter_add")
    d = normalize_dim(dim, input.ndim, "scatter_add")
    if index.ndim != input.ndim or src.ndim != input.ndim:
        raise RuntimeError(f"scatter_add: input, index and src must have the same number of "
                           f"dims (shapes {tuple(input.shape)}, {tuple(index.shape)}, "
                           f"{tuple(src.shape)})")
    for i, (si, ss, sx) in enumerate(zip(index.shape, src.shape, input.shape)):
        if si > ss or (i != d and si > sx):
            raise RuntimeError(f"scatter_add: index shape {tuple(index.shape)} must not exceed "
                               f"src {tuple(src.shape)} or input {tuple(input.shape)}")
    input, src = promote_pair(input, src)
    if index.device is not input.device:
        raise RuntimeError(f"scatter_add: index on {index.device}, input on {input.device}")
    return ScatterAdd.apply(input, src, index=index._data, dim=d)


def index_select(input: Tensor, dim: int, index: Tensor) -> Tensor:
    _check_index_tensor(index, "index_select")
    if index.ndim > 1:
        raise IndexError(f"index_select: index must be 0-D or 1-D, got shape "
                         f"{tuple(index.shape)}")
    d = normalize_dim(dim, input.ndim, "index_select")
    return getitem(input, (slice(None),) * d + (index.reshape(-1),))


def masked_fill(input: Tensor, mask: Tensor, value: Any) -> Tensor:
    """``value`` where ``mask`` is True (mask broadcasts), differentiable w.r.t. input."""
    if not isinstance(mask, Tensor) or mask.dtype != np.bool_:
        raise TypeError("masked_fill: mask must be a bool tensor")
    try:
        np.broadcast_shapes(tuple(mask.shape), tuple(input.shape))
    except ValueError:
        raise RuntimeError(f"masked_fill: mask of shape {tuple(mask.shape)} does not broadcast "
                           f"to the input's shape {tuple(input.shape)}") from None
    if isinstance(value, Tensor):
        value = value.to(input.dtype)
    else:
        value = Tensor._make(input.device.xp.asarray(value, dtype=input.dtype), input.device)
    return where(mask, value, input)

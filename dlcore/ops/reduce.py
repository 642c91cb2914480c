"""Reductions over dims: sum, mean, prod, max/min (with indices), amax/amin, arg*, var, std,
logsumexp, softmax and log_softmax. ``dim`` is an int, a tuple of ints or None (all)."""

from __future__ import annotations

import math
import warnings
from collections import namedtuple
from typing import Any

import numpy as np

from ..autograd import Function, device_work
from ..device import host_checks
from ..dtypes import get_default_dtype, is_floating, to_dtype
from ..tensor import Tensor
from ._util import (cast, float32_op, warn_user, narrow, normalize_dim, normalize_dims,
                    reject_bfloat16_words, sum_to, widen)
from .elementwise import maximum, minimum
from .index import scatter_add

values_indices = namedtuple("values_indices", ["values", "indices"])


class ExpandBack(Function):
    """Reshape a reduced tensor to keepdim form and broadcast it over the input's shape,
    in one node (the backward of every reduction)."""

    def forward(self, g: Any, kshape: tuple, shape: tuple) -> Any:
        self.g_shape, self.kshape = g.shape, kshape
        return self.device.xp.broadcast_to(g.reshape(kshape), shape)

    def backward(self, gg: Tensor) -> tuple:
        return (sum_to(gg, self.kshape).reshape(*self.g_shape),)


def _expand_back(g: Tensor, in_shape: tuple, dims: tuple | None, keepdim: bool) -> Tensor:
    """Broadcast a reduced gradient back over the reduced dims of the input."""
    if dims is None:
        kshape = (1,) * len(in_shape)
    else:
        kshape = tuple(1 if i in dims else s for i, s in enumerate(in_shape))
    if g._data.shape == in_shape:
        return g
    return ExpandBack.apply(g, kshape=kshape, shape=in_shape)


class Sum(Function):
    def forward(self, x: Any, dims: tuple | None, keepdim: bool) -> Any:
        self.in_shape, self.dims, self.keepdim = x.shape, dims, keepdim
        return narrow(widen(x).sum(axis=dims, keepdims=keepdim), x.dtype)

    def backward(self, g: Tensor) -> tuple:
        return (_expand_back(g, self.in_shape, self.dims, self.keepdim),)


class Mean(Function):
    def forward(self, x: Any, dims: tuple | None, keepdim: bool) -> Any:
        self.in_shape, self.dims, self.keepdim = x.shape, dims, keepdim
        n = x.size if dims is None else int(math.prod([x.shape[d] for d in dims]))
        self.n = n
        return narrow(widen(x).mean(axis=dims, keepdims=keepdim), x.dtype)

    def backward(self, g: Tensor) -> tuple:
        return (_expand_back(g / self.n, self.in_shape, self.dims, self.keepdim),)


class Prod(Function):
    save_inputs = True
    save_output = True

    def forward(self, x: Any, dim: int | None, keepdim: bool) -> Any:
        self.dim, self.keepdim = dim, keepdim
        return narrow(widen(x).prod(axis=dim, keepdims=keepdim), x.dtype)

    def backward(self, g: Tensor) -> tuple:
        (x,) = self.saved_tensors
        dims = None if self.dim is None else (self.dim,)
        ge = _expand_back(g, x.shape, dims, self.keepdim)
        # the quotient when no factor is zero; the zero-safe products inside a graph capture
        # (the host cannot look at x there)
        if host_checks(self.device) and not bool((x._data == 0).any()):
            out = _expand_back(self.output(), x.shape, dims, self.keepdim)
            return (ge * out / x,)
        # with zeros: product of the others = exclusive cumprod from both sides
        xp = self.device.xp
        xd = x._data
        ax = -1 if self.dim is None else self.dim
        flat = xd.reshape(-1) if self.dim is None else xd
        ones_shape = list(flat.shape)
        ones_shape[ax] = 1
        one = xp.ones(ones_shape, dtype=xd.dtype)
        left = xp.cumprod(xp.concatenate([one, flat], axis=ax), axis=ax)
        rev = xp.flip(flat, axis=ax)
        right = xp.flip(xp.cumprod(xp.concatenate([one, rev], axis=ax), axis=ax), axis=ax)
        n = flat.shape[ax]
        others = (xp.take(left, xp.arange(n), axis=ax)
                  * xp.take(right, xp.arange(1, n + 1), axis=ax))
        others = others.reshape(xd.shape)
        return (ge * Tensor._make(others, self.device),)


class MaxMinDim(Function):
    """max/min over one dim with indices; the gradient goes to the returned index."""

    differentiable_outputs = (0,)

    def forward(self, x: Any, dim: int, keepdim: bool, is_max: bool) -> Any:
        xp = self.device.xp
        idx = (xp.argmax if is_max else xp.argmin)(x, axis=dim)
        idx_k = xp.expand_dims(idx, dim)
        vals = xp.take_along_axis(x, idx_k, axis=dim)
        self.in_shape, self.dim, self.keepdim, self.idx = x.shape, dim, keepdim, idx_k
        if not keepdim:
            vals = vals.squeeze(dim)
        else:
            idx = idx_k
        return vals, idx.astype(np.int64, copy=False)

    def backward(self, g: Tensor, _gi: Any = None) -> tuple:
        if not self.keepdim:
            g = g.unsqueeze(self.dim)
        zeros = Tensor._make(self.device.xp.zeros(self.in_shape, dtype=g._data.dtype),
                             self.device)
        idx = Tensor._make(self.idx, self.device)
        return (scatter_add(zeros, self.dim, idx, g),)


class AMaxMin(Function):
    """amax/amin (and full max/min): ties share the gradient evenly."""

    save_inputs = True
    save_output = True

    def forward(self, x: Any, dims: tuple | None, keepdim: bool, is_max: bool) -> Any:
        self.dims, self.keepdim = dims, keepdim
        return (x.max if is_max else x.min)(axis=dims, keepdims=keepdim)

    def backward(self, g: Tensor) -> tuple:
        (x,) = self.saved_tensors
        out = _expand_back(self.output(), x.shape, self.dims, self.keepdim)
        mask = (x == out).to(g.dtype)
        ge = _expand_back(g, x.shape, self.dims, self.keepdim)
        wide = g.dtype.itemsize == 2 and is_floating(g.dtype)  # count ties in float32:
        m = mask.to(np.float32) if wide else mask  # 257 bfloat16 ones sum to 256
        count = m.sum(dim=self.dims, keepdim=True) if self.dims is not None else m.sum()
        if wide:  # PyTorch: g / count in float32, rounded once
            return (((ge * mask).to(np.float32) / count).to(g.dtype),)
        return (ge * mask / count,)


class Var(Function):
    save_inputs = True

    def forward(self, x: Any, dims: tuple | None, correction: float, keepdim: bool) -> Any:
        self.dims, self.keepdim, self.correction = dims, keepdim, correction
        n = x.size if dims is None else int(math.prod([x.shape[d] for d in dims]))
        self.n = n
        if n - correction > 0:
            return narrow(widen(x).var(axis=dims, ddof=correction, keepdims=keepdim), x.dtype)
        # PyTorch's warning on every device (NumPy warns, CuPy does not: seen on an H200),
        # and NumPy's own RuntimeWarning silenced so the user sees this one once
        warn_user("var(): degrees of freedom is <= 0. Correction should be strictly less "
                  "than the reduction factor (input numel divided by output numel).")
        with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return narrow(widen(x).var(axis=dims, ddof=correction, keepdims=keepdim), x.dtype)

    def backward(self, g: Tensor) -> tuple:
        (x,) = self.saved_tensors
        mean = x.mean(dim=self.dims, keepdim=True) if self.dims is not None else x.mean()
        ge = _expand_back(g, x.shape, self.dims, self.keepdim)
        # NOTE: no builtin max/min/sum in this module (they are the ops). No degrees of
        # freedom left gives nan, like the forward.
        dof = self.n - self.correction
        return (ge * (x - mean) * (2.0 / dof if dof > 0 else float("nan")),)


class LogSumExp(Function):
    save_inputs = True
    save_output = True

    def forward(self, x: Any, dims: tuple, keepdim: bool) -> Any:
        xp = self.device.xp
        self.dims, self.keepdim = dims, keepdim
        dtype, x = x.dtype, widen(x)
        m = x.max(axis=dims, keepdims=True)
        m = xp.where(xp.isfinite(m), m, 0)
        out = xp.log(xp.exp(x - m).sum(axis=dims, keepdims=True)) + m
        return narrow(out if keepdim else out.squeeze(dims), dtype)

    def backward(self, g: Tensor) -> tuple:
        (x,) = self.saved_tensors
        out = _expand_back(self.output(), x.shape, self.dims, self.keepdim)
        ge = _expand_back(g, x.shape, self.dims, self.keepdim)
        return (ge * (x - out).exp(),)


class Softmax(Function):
    save_output = True

    def forward(self, x: Any, dim: int) -> Any:
        xp = self.device.xp
        self.dim = dim
        dtype, x = x.dtype, widen(x)
        e = xp.exp(x - x.max(axis=dim, keepdims=True))
        e /= e.sum(axis=dim, keepdims=True)
        return narrow(e, dtype)

    def backward(self, g: Tensor) -> tuple:
        y = self.output()
        gy = g * y
        return (gy - y * gy.sum(dim=self.dim, keepdim=True),)


class LogSoftmax(Function):
    save_output = True

    def forward(self, x: Any, dim: int) -> Any:
        xp = self.device.xp
        self.dim = dim
        dtype, x = x.dtype, widen(x)
        s = x - x.max(axis=dim, keepdims=True)
        return narrow(s - xp.log(xp.exp(s).sum(axis=dim, keepdims=True)), dtype)

    def backward(self, g: Tensor) -> tuple:
        y = self.output()
        return (g - y.exp() * g.sum(dim=self.dim, keepdim=True),)


def _float_for_mean(x: Tensor, op: str, dtype: Any = None) -> Tensor:
    if dtype is not None:
        return cast(x, to_dtype(dtype))
    if not is_floating(x._data.dtype):
        raise RuntimeError(f"{op}: could not infer output dtype; input dtype {x.dtype} is not "
                           "floating point (pass dtype=)")
    return x


@float32_op
def sum(input: Tensor, dim: Any = None, keepdim: bool = False,
        dtype: Any = None) -> Tensor:
    """>>> dlcore.tensor([[1, 2], [3, 4]]).sum(dim=0).tolist()
    [4, 6]"""
    if dtype is None:
        reject_bfloat16_words("sum", input)
    if dtype is not None:
        input = cast(input, to_dtype(dtype))
    elif input._data.dtype.kind in "biu":
        input = cast(input, np.dtype(np.int64))  # PyTorch sums integers in int64
    dims = normalize_dims(dim, input.ndim, "sum")
    return Sum.apply(input, dims=dims, keepdim=keepdim)


@float32_op
def mean(input: Tensor, dim: Any = None, keepdim: bool = False,
         dtype: Any = None) -> Tensor:
    if dtype is None:
        reject_bfloat16_words("mean", input)
    x = _float_for_mean(input, "mean", dtype)
    return Mean.apply(x, dims=normalize_dims(dim, x.ndim, "mean"), keepdim=keepdim)


@float32_op
def prod(input: Tensor, dim: int | None = None, keepdim: bool = False,
         dtype: Any = None) -> Tensor:
    if dtype is None:
        reject_bfloat16_words("prod", input)
    if dtype is not None:
        input = cast(input, to_dtype(dtype))
    d = None if dim is None else normalize_dim(dim, input.ndim, "prod")
    return Prod.apply(input, dim=d, keepdim=keepdim)


def _max_min(input: Tensor, dim: Any, keepdim: bool, is_max: bool, op: str) -> Any:
    if input._data.size == 0:
        raise RuntimeError(f"{op}: cannot reduce an empty tensor of shape {tuple(input.shape)}")
    if dim is None:
        return AMaxMin.apply(input, dims=None, keepdim=False, is_max=is_max)
    if isinstance(dim, Tensor):  # max(a, b) spelled as a.max(b)
        return maximum(input, dim) if is_max else minimum(input, dim)
    d = normalize_dim(dim, input.ndim, op)
    if input.ndim == 0:
        return values_indices(input, Tensor._make(input.device.xp.zeros((), np.int64),
                                                  input.device))
    vals, idx = MaxMinDim.apply(input, dim=d, keepdim=keepdim, is_max=is_max)
    return values_indices(vals, idx)


def max(input: Tensor, dim: Any = None, keepdim: bool = False) -> Any:
    """``max(x)`` -> scalar tensor; ``max(x, dim)`` -> (values, indices)."""
    return _max_min(input, dim, keepdim, True, "max")


def min(input: Tensor, dim: Any = None, keepdim: bool = False) -> Any:
    return _max_min(input, dim, keepdim, False, "min")


def amax(input: Tensor, dim: Any = (), keepdim: bool = False) -> Tensor:
    dims = normalize_dims(dim, input.ndim, "amax") if dim != () else None
    return AMaxMin.apply(input, dims=dims, keepdim=keepdim, is_max=True)


def amin(input: Tensor, dim: Any = (), keepdim: bool = False) -> Tensor:
    dims = normalize_dims(dim, input.ndim, "amin") if dim != () else None
    return AMaxMin.apply(input, dims=dims, keepdim=keepdim, is_max=False)


def _arg(input: Tensor, dim: int | None, keepdim: bool, fn: str) -> Tensor:
    return Tensor._make(device_work(input.device, lambda: _arg_array(input, dim, keepdim, fn)),
                        input.device)


def _arg_array(input: Tensor, dim: int | None, keepdim: bool, fn: str) -> Any:
    xp = input.device.xp
    if dim is None:
        out = getattr(xp, fn)(input._data.reshape(-1))
        if keepdim:
            out = xp.asarray(out).reshape((1,) * input.ndim)
    else:
        d = normalize_dim(dim, input.ndim, fn)
        out = getattr(xp, fn)(input._data, axis=d, keepdims=keepdim) if input.ndim else \
            xp.zeros((), np.int64)
    return xp.asarray(out).astype(np.int64, copy=False)


def argmax(input: Tensor, dim: int | None = None, keepdim: bool = False) -> Tensor:
    return _arg(input, dim, keepdim, "argmax")


def argmin(input: Tensor, dim: int | None = None, keepdim: bool = False) -> Tensor:
    return _arg(input, dim, keepdim, "argmin")


@float32_op
def var(input: Tensor, dim: Any = None, unbiased: bool | None = None,
        keepdim: bool = False, correction: float | None = None) -> Tensor:
    """Variance; unbiased (``correction=1``) by default, as in PyTorch."""
    reject_bfloat16_words("var", input)
    if correction is None:
        correction = 0 if unbiased is False else 1
    x = _float_for_mean(input, "var")
    return Var.apply(x, dims=normalize_dims(dim, x.ndim, "var"), correction=correction,
                     keepdim=keepdim)


@float32_op
def std(input: Tensor, dim: Any = None, unbiased: bool | None = None,
        keepdim: bool = False, correction: float | None = None) -> Tensor:
    return var(input, dim, unbiased, keepdim, correction).sqrt()


@float32_op
def logsumexp(input: Tensor, dim: Any, keepdim: bool = False) -> Tensor:
    reject_bfloat16_words("logsumexp", input)
    x = _float_for_mean(input, "logsumexp") if is_floating(input._data.dtype) else \
        cast(input, get_default_dtype())
    dims = normalize_dims(dim, x.ndim, "logsumexp")
    if dims is None:
        dims = tuple(range(x.ndim))
    return LogSumExp.apply(x, dims=dims, keepdim=keepdim)


@float32_op
def softmax(input: Tensor, dim: int, dtype: Any = None) -> Tensor:
    if dtype is None:
        reject_bfloat16_words("softmax", input)
    x = cast(input, to_dtype(dtype)) if dtype is not None else input
    return Softmax.apply(x, dim=normalize_dim(dim, x.ndim, "softmax"))


@float32_op
def log_softmax(input: Tensor, dim: int, dtype: Any = None) -> Tensor:
    if dtype is None:
        reject_bfloat16_words("log_softmax", input)
    x = cast(input, to_dtype(dtype)) if dtype is not None else input
    return LogSoftmax.apply(x, dim=normalize_dim(dim, x.ndim, "log_softmax"))

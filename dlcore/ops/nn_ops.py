"""Fused neural-network ops: linear, normalisation with affine, embedding, elu, silu.

Each is one Function instead of a chain of small ones: the forward does its arithmetic on
raw arrays in one pass, and the backward is the analytic gradient written with dlcore ops,
so second derivatives still work. Public, validated wrappers live in
:mod:`dlcore.nn.functional`; these classes assume valid input.

Shape letters: N batch, C channels, G groups, D embedding/feature width.
"""

from __future__ import annotations

from typing import Any

from ..autograd import Function, is_grad_enabled
from ..tensor import Tensor
from ._util import gemm, sum_to
from .elementwise import where


class LinearFunction(Function):
    """``y = x @ w.T (+ b)`` for x of shape (..., in), w (out, in), b (out,)."""

    save_inputs = True

    def forward(self, x: Any, w: Any, b: Any = None) -> Any:
        y = gemm(x, w.T, "linear")
        if b is not None:
            y += b
        return y

    def backward(self, g: Tensor) -> tuple:
        x, w = self.saved_tensors[:2]
        need = self.needs_input_grad
        gx = g @ w if need[0] else None
        gw = None
        if need[1]:
            gw = g.reshape(-1, g.shape[-1]).mT @ x.reshape(-1, x.shape[-1])
        if len(need) == 2:
            return gx, gw
        gb = g.reshape(-1, g.shape[-1]).sum(0) if need[2] else None
        return gx, gw, gb


class NormAffine(Function):
    """``y = (x - mean) / sqrt(var + eps) * w + b`` with biased statistics over ``dims``
    of x; w and b (each optional) are already shaped to broadcast against x.

    Outputs ``(y, mean, var)``; mean and var (keepdim shapes) are not differentiable and
    serve batch norm's running statistics. One pass in the forward (no intermediate graph
    nodes), and in the backward the classic closed form
    ``gx = invstd * (gxhat - mean(gxhat) - xhat * mean(gxhat * xhat))``.
    """

    save_inputs = True
    differentiable_outputs = (0,)

    def forward(self, x: Any, *params: Any, dims: tuple[int, ...], eps: float,
                has_weight: bool, has_bias: bool) -> tuple:
        xp = self.device.xp
        self.dims, self.eps, self.has_weight, self.has_bias = dims, eps, has_weight, has_bias
        mean = x.mean(axis=dims, keepdims=True)
        y = x - mean
        var = (y * y).mean(axis=dims, keepdims=True)
        invstd = 1.0 / xp.sqrt(var + x.dtype.type(eps))
        self.mean, self.invstd = mean, invstd
        y *= invstd
        if has_weight:
            y *= params[0]
        if has_bias:
            y += params[-1]
        return y, mean, var

    def backward(self, g: Tensor, *_: Any) -> tuple:
        saved = self.saved_tensors
        x = saved[0]
        w = saved[1] if self.has_weight else None
        dims = self.dims
        if is_grad_enabled():
            # create_graph: xhat and invstd must be functions of x for second derivatives
            xc = x - x.mean(dim=dims, keepdim=True)
            invstd = ((xc * xc).mean(dim=dims, keepdim=True) + self.eps).rsqrt()
            xhat = xc * invstd
        else:
            invstd = Tensor._make(self.invstd, self.device)
            xhat = Tensor._make((x._data - self.mean) * self.invstd, self.device)
        need = self.needs_input_grad
        grads: list[Tensor | None] = [None] * len(need)
        if need[0]:
            gxhat = g * w if w is not None else g
            grads[0] = invstd * (gxhat - gxhat.mean(dim=dims, keepdim=True)
                                 - xhat * (gxhat * xhat).mean(dim=dims, keepdim=True))
        if self.has_weight and need[1]:
            grads[1] = sum_to(g * xhat, saved[1].shape)
        if self.has_bias and need[-1]:
            grads[-1] = sum_to(g, saved[-1].shape)
        return tuple(grads)


class EmbeddingFunction(Function):
    """Rows of ``weight`` (num_embeddings, D) picked by an integer index array; the
    ``padding_idx`` row gets no gradient."""

    def forward(self, weight: Any, indices: Any, padding_idx: int | None) -> Any:
        self.indices, self.padding_idx, self.num = indices, padding_idx, weight.shape[0]
        return self.device.xp.take(weight, indices, axis=0)

    def backward(self, g: Tensor) -> tuple:
        return (EmbeddingBackward.apply(g, indices=self.indices, num=self.num,
                                        padding_idx=self.padding_idx),)


class EmbeddingBackward(Function):
    """Scatter-add of output rows into a (num, D) gradient (repeated indices accumulate),
    the padding row zeroed. Linear in ``g``; its own backward gathers rows again."""

    def forward(self, g: Any, indices: Any, num: int, padding_idx: int | None) -> Any:
        xp = self.device.xp
        self.indices, self.padding_idx = indices, padding_idx
        d = g.shape[-1]
        out = xp.zeros((num, d), dtype=g.dtype)
        xp.add.at(out, indices.reshape(-1), g.reshape(-1, d))
        if padding_idx is not None:
            out[padding_idx] = 0
        return out

    def backward(self, gg: Tensor) -> tuple:
        if self.padding_idx is not None:
            keep = self.device.xp.ones((gg.shape[0], 1), dtype=gg.dtype)
            keep[self.padding_idx] = 0
            gg = gg * Tensor._make(keep, self.device)
        return (EmbeddingFunction.apply(gg, indices=self.indices, padding_idx=None),)


class Elu(Function):
    """``x`` for x > 0, ``alpha * (exp(x) - 1)`` otherwise."""

    save_inputs = True

    def forward(self, x: Any, alpha: float) -> Any:
        xp = self.device.xp
        self.alpha = alpha
        neg = xp.expm1(xp.minimum(x, 0)) * x.dtype.type(alpha)
        return xp.where(x > 0, x, neg)

    def backward(self, g: Tensor) -> tuple:
        (x,) = self.saved_tensors
        slope = where(x > 0, 1.0, x.clamp(max=0).exp() * self.alpha)
        return (g * slope,)


class Silu(Function):
    """``x * sigmoid(x)`` (swish)."""

    save_inputs = True

    def forward(self, x: Any) -> Any:
        xp = self.device.xp
        half = x.dtype.type(0.5)
        return x * ((xp.tanh(x * half) + 1) * half)  # exact sigmoid, never overflows

    def backward(self, g: Tensor) -> tuple:
        (x,) = self.saved_tensors
        s = x.sigmoid()
        return (g * (s * (1 + x * (1 - s))),)

"""Attention: :func:`scaled_dot_product_attention` (re-exported by
:mod:`dlcore.nn.functional`) and :class:`MultiheadAttention`, with PyTorch's semantics and
parameter names, so ``torch.nn.MultiheadAttention`` state_dicts load unchanged.

Both are compositions of differentiable ops (matmul, softmax, masked_fill, dropout, linear);
no kernel of their own. Shape letters: N batch, H heads, L target length, S source length,
E embedding (per head in ``scaled_dot_product_attention``).
"""

from __future__ import annotations

import math
from typing import Any

from ..creation import empty, ones, zeros
from ..device import Device
from ..dtypes import DTypeLike
from ..ops import cat
from ..tensor import Tensor
from . import functional as F  # NOTE: functional re-exports sdpa from here; F is used only
from . import init             # at call time, so the cycle is harmless (as in dropout.py)
from .linear import Linear
from .module import Module
from .parameter import Parameter

_NEG_INF = float("-inf")


def _safe_softmax(scores: Tensor) -> Tensor:
    """Softmax over the last dim, with rows that are masked out whole (all ``-inf``) giving
    zeros instead of NaN, as PyTorch's math backend does."""
    dead = (scores == _NEG_INF).all(-1, keepdim=True)
    return F.softmax(scores.masked_fill(dead, 0.0), dim=-1).masked_fill(dead, 0.0)


def _repeat_heads(t: Tensor, groups: int) -> Tensor:
    """(..., Hk, S, E) -> (..., Hk * groups, S, E), each head repeated ``groups`` times in a
    row (``repeat_interleave`` on dim -3, as grouped-query attention needs)."""
    if groups == 1:
        return t
    shape = tuple(t.shape)
    expanded = t.unsqueeze(-3).expand(*shape[:-2], groups, *shape[-2:])
    return expanded.reshape(*shape[:-3], shape[-3] * groups, *shape[-2:])


def scaled_dot_product_attention(query: Tensor, key: Tensor, value: Tensor,
                                 attn_mask: Tensor | None = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: float | None = None,
                                 enable_gqa: bool = False) -> Tensor:
    """``softmax(query @ key.T * scale + mask) @ value`` over the last two dims, with
    PyTorch's semantics: query (..., L, E), key (..., S, E), value (..., S, Ev) give
    (..., L, Ev); leading dims broadcast. ``attn_mask`` broadcasts to (..., L, S): a bool
    mask says which positions take part (True = attend), a float mask is added to the
    scores. ``is_causal`` masks out the strict upper triangle of the (L, S) score matrix
    (aligned to the upper left, as PyTorch) and excludes ``attn_mask``. ``scale`` defaults to
    ``1/sqrt(E)``; ``dropout_p`` drops attention weights (always applied when > 0, as in
    PyTorch: pass ``p if self.training else 0.0``). ``enable_gqa`` lets key and value have
    fewer heads (dim -3) than query, each shared by ``Hq // Hk`` query heads. Rows whose
    every position is masked give zeros.

    >>> q = dlcore.ones(2, 4, 3, 8)
    >>> scaled_dot_product_attention(q, q, q, is_causal=True).shape
    (2, 4, 3, 8)
    """
    if query.ndim < 2 or key.ndim < 2 or value.ndim < 2:
        raise ValueError(f"scaled_dot_product_attention: query, key and value need at least "
                         f"2 dims, got shapes {tuple(query.shape)}, {tuple(key.shape)}, "
                         f"{tuple(value.shape)}")
    if query.shape[-1] != key.shape[-1] or key.shape[-2] != value.shape[-2]:
        raise ValueError(f"scaled_dot_product_attention: query (..., L, E), key (..., S, E) "
                         f"and value (..., S, Ev) do not match: {tuple(query.shape)}, "
                         f"{tuple(key.shape)}, {tuple(value.shape)}")
    if not 0.0 <= dropout_p <= 1.0:
        raise ValueError(f"scaled_dot_product_attention: dropout_p has to be between 0 and 1, "
                         f"but got {dropout_p}")
    if is_causal and attn_mask is not None:
        raise RuntimeError("scaled_dot_product_attention: explicit attn_mask should not be set "
                           "when is_causal=True (as in PyTorch)")
    if enable_gqa and query.ndim >= 3:
        hq, hk, hv = query.shape[-3], key.shape[-3], value.shape[-3]
        if hq % hk or hq % hv:
            raise ValueError(f"scaled_dot_product_attention: with enable_gqa the query heads "
                             f"({hq}) must be a multiple of the key ({hk}) and value ({hv}) "
                             f"heads")
        key, value = _repeat_heads(key, hq // hk), _repeat_heads(value, hq // hv)
    L, S = query.shape[-2], key.shape[-2]
    factor = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    scores = (query @ key.transpose(-2, -1)) * factor
    masked = is_causal
    if is_causal:
        allowed = ones(L, S, dtype="bool", device=query.device).tril()
        scores = scores.masked_fill(~allowed, _NEG_INF)
    elif attn_mask is not None:
        if attn_mask.dtype.kind == "b":
            masked = True
            scores = scores.masked_fill(~attn_mask, _NEG_INF)
        else:
            masked = True  # a float mask may hold -inf too
            scores = scores + attn_mask
    weights = _safe_softmax(scores) if masked else F.softmax(scores, dim=-1)
    if dropout_p > 0.0:
        weights = F.dropout(weights, dropout_p, training=True)
    return weights @ value


def _float_mask(mask: Tensor | None, dtype: DTypeLike, name: str) -> Tensor | None:
    """PyTorch's ``_canonical_mask``: a bool mask (True = masked out) becomes an additive
    float mask (-inf where True, 0 elsewhere); a float mask is kept."""
    if mask is None:
        return None
    if mask.dtype.kind == "b":
        return zeros(*mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, _NEG_INF)
    if mask.dtype.kind != "f":
        raise TypeError(f"MultiheadAttention: only bool and floating types of {name} are "
                        f"supported, got {mask.dtype}")
    return mask


class MultiheadAttention(Module):
    """Multi-head attention (Vaswani et al.) with PyTorch's parameters: ``in_proj_weight``
    (3E, E) and ``in_proj_bias`` (3E), or ``q_proj_weight``/``k_proj_weight``/
    ``v_proj_weight`` when ``kdim``/``vdim`` differ from ``embed_dim``; ``out_proj`` a Linear;
    ``bias_k``/``bias_v`` (1, 1, E) with ``add_bias_kv``. Initialised as PyTorch does
    (xavier_uniform on the input projections, zero biases, xavier_normal on bias_k/bias_v).

    ``forward(query, key, value, key_padding_mask, need_weights, attn_mask,
    average_attn_weights, is_causal)`` takes (L, N, E) inputs, or (N, L, E) with
    ``batch_first``, or unbatched (L, E), and returns ``(output, weights)``: weights are
    (N, L, S) averaged over heads, (N, H, L, S) with ``average_attn_weights=False``, None with
    ``need_weights=False``. Masks follow PyTorch: in ``key_padding_mask`` (N, S) and
    ``attn_mask`` (L, S) or (N*H, L, S) a bool True means *not* allowed to attend; float masks
    are added to the scores. ``is_causal`` is a hint that ``attn_mask`` is the causal mask
    (which must still be given, as in PyTorch).

    >>> mha = MultiheadAttention(8, 2, batch_first=True)
    >>> out, w = mha(dlcore.ones(3, 5, 8), dlcore.ones(3, 6, 8), dlcore.ones(3, 6, 8))
    >>> out.shape, w.shape
    ((3, 5, 8), (3, 5, 6))
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False,
                 kdim: int | None = None, vdim: int | None = None, batch_first: bool = False,
                 device: str | Device | None = None, dtype: DTypeLike = None) -> None:
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0:
            raise ValueError(f"MultiheadAttention: embed_dim and num_heads must be greater "
                             f"than 0, got embed_dim={embed_dim} and num_heads={num_heads}")
        if embed_dim % num_heads:
            raise ValueError(f"MultiheadAttention: embed_dim ({embed_dim}) must be divisible "
                             f"by num_heads ({num_heads})")
        self.embed_dim, self.num_heads, self.dropout = embed_dim, num_heads, dropout
        self.kdim = embed_dim if kdim is None else kdim
        self.vdim = embed_dim if vdim is None else vdim
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        self.batch_first, self.head_dim = batch_first, embed_dim // num_heads
        self.add_zero_attn = add_zero_attn
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        if self._qkv_same_embed_dim:
            self.in_proj_weight = Parameter(empty(3 * embed_dim, embed_dim, **kw))
            self.register_parameter("q_proj_weight", None)
            self.register_parameter("k_proj_weight", None)
            self.register_parameter("v_proj_weight", None)
        else:
            self.q_proj_weight = Parameter(empty(embed_dim, embed_dim, **kw))
            self.k_proj_weight = Parameter(empty(embed_dim, self.kdim, **kw))
            self.v_proj_weight = Parameter(empty(embed_dim, self.vdim, **kw))
            self.register_parameter("in_proj_weight", None)
        if bias:
            self.in_proj_bias = Parameter(empty(3 * embed_dim, **kw))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = Linear(embed_dim, embed_dim, bias=bias, **kw)
        if add_bias_kv:
            self.bias_k = Parameter(empty(1, 1, embed_dim, **kw))
            self.bias_v = Parameter(empty(1, 1, embed_dim, **kw))
        else:
            self.register_parameter("bias_k", None)
            self.register_parameter("bias_v", None)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        if self._qkv_same_embed_dim:
            init.xavier_uniform_(self.in_proj_weight)
        else:
            init.xavier_uniform_(self.q_proj_weight)
            init.xavier_uniform_(self.k_proj_weight)
            init.xavier_uniform_(self.v_proj_weight)
        if self.in_proj_bias is not None:
            init.zeros_(self.in_proj_bias)
            init.zeros_(self.out_proj.bias)
        if self.bias_k is not None:
            init.xavier_normal_(self.bias_k)
            init.xavier_normal_(self.bias_v)

    def _project(self, query: Tensor, key: Tensor,
                 value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        E, b = self.embed_dim, self.in_proj_bias
        bq, bk, bv = (None, None, None) if b is None else (b[:E], b[E:2 * E], b[2 * E:])
        if self._qkv_same_embed_dim:
            w = self.in_proj_weight
            wq, wk, wv = w[:E], w[E:2 * E], w[2 * E:]
        else:
            wq, wk, wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        return F.linear(query, wq, bq), F.linear(key, wk, bk), F.linear(value, wv, bv)

    def forward(self, query: Tensor, key: Tensor, value: Tensor,
                key_padding_mask: Tensor | None = None, need_weights: bool = True,
                attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        if is_causal and attn_mask is None:
            raise RuntimeError("MultiheadAttention: need attn_mask if specifying the "
                               "is_causal hint (as in PyTorch)")
        batched = query.ndim == 3
        if query.ndim not in (2, 3) or key.ndim != query.ndim or value.ndim != query.ndim:
            raise ValueError(f"MultiheadAttention: query, key and value must all be 3-D "
                             f"(batched) or 2-D (unbatched), got shapes {tuple(query.shape)}, "
                             f"{tuple(key.shape)}, {tuple(value.shape)}")
        if not batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        L, N, E = query.shape
        if E != self.embed_dim:
            raise ValueError(f"MultiheadAttention: was expecting embedding dimension of "
                             f"{self.embed_dim}, but got {E}")
        if key.shape[:2] != value.shape[:2]:
            raise ValueError(f"MultiheadAttention: key shape {tuple(key.shape)} does not match "
                             f"value shape {tuple(value.shape)}")
        H, D = self.num_heads, self.head_dim
        mask = _float_mask(attn_mask, query.dtype, "attn_mask")
        pad = _float_mask(key_padding_mask, query.dtype, "key_padding_mask")
        if mask is not None and mask.ndim == 2:
            mask = mask.unsqueeze(0)
        q, k, v = self._project(query, key, value)
        if self.bias_k is not None and self.bias_v is not None:  # one more key: the bias
            k = cat([k, self.bias_k.expand(1, N, E)], dim=0)
            v = cat([v, self.bias_v.expand(1, N, E)], dim=0)
            mask = None if mask is None else _pad_last(mask)
            pad = None if pad is None else _pad_last(pad)
        # (L, N, E) -> (N, H, L, D)
        q = q.reshape(L, N, H, D).permute(1, 2, 0, 3)
        k = k.reshape(k.shape[0], N, H, D).permute(1, 2, 0, 3)
        v = v.reshape(v.shape[0], N, H, D).permute(1, 2, 0, 3)
        if self.add_zero_attn:  # one more key and value, all zeros
            k = cat([k, zeros(N, H, 1, D, dtype=k.dtype, device=k.device)], dim=2)
            v = cat([v, zeros(N, H, 1, D, dtype=v.dtype, device=v.device)], dim=2)
            mask = None if mask is None else _pad_last(mask)
            pad = None if pad is None else _pad_last(pad)
        S = k.shape[2]
        bias = None
        if mask is not None:
            if mask.shape[0] not in (1, N * H) or tuple(mask.shape[1:]) != (L, S):
                raise ValueError(f"MultiheadAttention: attn_mask should have shape (L, S) or "
                                 f"(N*num_heads, L, S) = ({N * H}, {L}, {S}), got "
                                 f"{tuple(attn_mask.shape) if attn_mask is not None else ()}")
            bias = mask.reshape(-1, H, L, S) if mask.shape[0] == N * H else mask.unsqueeze(0)
        if pad is not None:
            if tuple(pad.shape) != (N, S):
                raise ValueError(f"MultiheadAttention: expecting key_padding_mask shape of "
                                 f"({N}, {S}), but got {tuple(pad.shape)}")
            pad = pad.reshape(N, 1, 1, S)
            bias = pad if bias is None else bias + pad
        p = self.dropout if self.training else 0.0
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(D))
        weights = F.softmax(scores, dim=-1) if bias is None else _safe_softmax(scores + bias)
        if p > 0.0:  # the weights returned are the dropped ones, as in PyTorch
            weights = F.dropout(weights, p, training=True)
        out = (weights @ v).permute(2, 0, 1, 3).reshape(L, N, E)  # (L, N, E)
        out = self.out_proj(out)
        if self.batch_first and batched:
            out = out.transpose(0, 1)
        elif not batched:
            out = out.squeeze(1)
        if not need_weights:
            return out, None
        if average_attn_weights:
            weights = weights.mean(dim=1)
        return out, weights if batched else weights.squeeze(0)

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
                f"dropout={self.dropout}, batch_first={self.batch_first}")


def _pad_last(mask: Tensor) -> Tensor:
    """Append one zero (not masked) column to an additive float mask."""
    shape = (*mask.shape[:-1], 1)
    return cat([mask, zeros(*shape, dtype=mask.dtype, device=mask.device)], dim=-1)

"""Differentiable operations, one Function class per op, grouped by family."""

from .elementwise import (abs, add, clamp, cos, div, eq, exp, ge, gelu, gt, isfinite, isnan,
                          le, leaky_relu, log, log1p, logical_and, logical_not, logical_or, lt,
                          maximum, minimum, mul, ne, neg, pow, relu, rsqrt, sigmoid, sign, sin,
                          softplus, sqrt, sub, tanh, where)
from .index import gather, getitem, index_select, masked_fill, scatter_add, setitem
from .einsum import einsum
from .linalg import bmm, matmul, mm
from .logic import all, any, isinf, tril, triu
from .ordering import argsort, sort, topk
from .reduce import (amax, amin, argmax, argmin, log_softmax, logsumexp, max, mean, min, prod,
                     softmax, std, sum, var)
from .rounding import floor_divide, remainder
from .shape import (broadcast_to, cat, chunk, clone, contiguous, expand, flatten, flip, narrow,
                    pad, permute, repeat, reshape, split, squeeze, stack, transpose, unbind,
                    unflatten, unsqueeze, view)

__all__ = [n for n in dir() if not n.startswith("_")]

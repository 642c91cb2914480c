"""Testing helpers for users and for dlcore's own suite: numerical gradient checks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import autograd
from .tensor import Tensor
from .dtypes import is_floating


def _outputs(fn: Callable, inputs: Sequence[Any]) -> list[Tensor]:
    out = fn(*inputs)
    outs = out if isinstance(out, tuple | list) else (out,)
    return [o for o in outs if isinstance(o, Tensor) and is_floating(o.dtype)]


def numerical_jacobian_vjp(fn: Callable, inputs: Sequence[Any], weights: list[np.ndarray],
                           eps: float) -> list[np.ndarray | None]:
    """Central differences of ``sum_k <weights_k, out_k>`` with respect to each float input
    that requires grad. Inputs are perturbed in place, one element at a time."""
    grads: list[np.ndarray | None] = []
    for x in inputs:
        if not (isinstance(x, Tensor) and x.requires_grad):
            grads.append(None)
            continue
        g = np.zeros(x.shape, dtype=np.float64)
        # NOTE: indexed in place, whatever the strides: reshape(-1) of a transposed or
        # channels-last array is a copy, and perturbing a copy would measure nothing
        data = x._data
        for i in np.ndindex(*x.shape):
            orig = data[i].item()
            vals = []
            for delta in (eps, -eps):
                data[i] = orig + delta
                with autograd.no_grad():
                    outs = _outputs(fn, inputs)
                vals.append(sum(float((np.asarray(o.numpy(), np.float64) * w).sum())
                                for o, w in zip(outs, weights)))
            data[i] = orig
            g[i] = (vals[0] - vals[1]) / (2 * eps)
        grads.append(g)
    return grads


def gradcheck(fn: Callable, inputs: Sequence[Any] | Tensor, eps: float = 1e-6,
              atol: float = 1e-5, rtol: float = 1e-3, raise_exception: bool = True,
              seed: int = 0) -> bool:
    """Compare analytic gradients (autograd) with central differences.

    Inputs that require grad must be float64 (float32 differences are too coarse). A random
    projection of the outputs is differentiated, so one backward checks a whole
    vector-Jacobian product per input; mismatches name the input, the index and both values.

    >>> x = dlcore.randn(3, dtype=dlcore.float64, requires_grad=True)
    >>> gradcheck(lambda t: (t * t).sin(), [x])
    True
    """
    if isinstance(inputs, Tensor):
        inputs = [inputs]
    inputs = list(inputs)
    for i, x in enumerate(inputs):
        if isinstance(x, Tensor) and x.requires_grad and x.dtype != np.float64:
            raise ValueError(f"gradcheck: input {i} requires grad but has dtype {x.dtype}; use "
                             "float64")
    rng = np.random.default_rng(seed)
    outs = _outputs(fn, inputs)
    if not outs:
        raise ValueError("gradcheck: fn returned no floating point tensor")
    weights = [rng.standard_normal(o.shape) for o in outs]
    diff_inputs = [x for x in inputs if isinstance(x, Tensor) and x.requires_grad]
    live = [(o, w) for o, w in zip(outs, weights) if o.requires_grad]
    if live:
        analytic = autograd.grad([o for o, _ in live],
                                 diff_inputs,
                                 [Tensor._make(o.device.xp.asarray(w, dtype=o.dtype), o.device)
                                  for o, w in live], allow_unused=True)
    else:
        analytic = (None,) * len(diff_inputs)
    numeric = [g for g in numerical_jacobian_vjp(fn, inputs, weights, eps) if g is not None]
    for k, (a, n) in enumerate(zip(analytic, numeric)):
        a_np = np.zeros_like(n) if a is None else np.asarray(a.numpy(), np.float64)
        if a_np.shape != n.shape:
            msg = f"gradcheck: input {k}: gradient shape {a_np.shape} != input shape {n.shape}"
            if raise_exception:
                raise AssertionError(msg)
            return False
        bad = ~np.isclose(a_np, n, rtol=rtol, atol=atol)
        if bad.any():
            idx = np.argwhere(bad)[:5]
            rows = ", ".join(f"{tuple(int(v) for v in i)}: analytic {a_np[tuple(i)]:.6g} vs "
                             f"numeric {n[tuple(i)]:.6g}" for i in idx)
            msg = (f"gradcheck: input {k} (shape {n.shape}): {int(bad.sum())} of {n.size} "
                   f"gradient entries differ: {rows}")
            if raise_exception:
                raise AssertionError(msg)
            return False
    return True


def gradgradcheck(fn: Callable, inputs: Sequence[Tensor], eps: float = 1e-6,
                  atol: float = 1e-5, rtol: float = 1e-3, seed: int = 1) -> bool:
    """Check second derivatives: gradcheck of the (create_graph) gradient function."""
    inputs = list(inputs)
    rng = np.random.default_rng(seed)
    with autograd.no_grad():
        outs = _outputs(fn, inputs)
    ws = [Tensor._make(o.device.xp.asarray(rng.standard_normal(o.shape), dtype=o.dtype),
                       o.device) for o in outs]

    def first_grad(*xs: Any) -> tuple:
        with autograd.enable_grad():  # the numeric pass runs under no_grad
            o = _outputs(fn, xs)
            d = [x for x in xs if isinstance(x, Tensor) and x.requires_grad]
            gs = autograd.grad(o, d, ws, create_graph=True, allow_unused=True)
        return tuple(g if g is not None else x * 0 for g, x in zip(gs, d))

    return gradcheck(first_grad, inputs, eps=eps, atol=atol, rtol=rtol, seed=seed)

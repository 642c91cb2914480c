"""What the attribution methods share: checking inputs and baselines, and the score of each
example's target class (the quantity every method explains).

Shape letters: N examples; K outputs per example (classes).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..autograd import enable_grad, grad
from ..nn import Module
from ..tensor import Tensor

Target = int | Any  # an int, a sequence or Tensor of N class indices, or None


def check_input(op: str, model: Any, inputs: Any) -> Tensor:
    """``inputs`` detached from any graph (attribution never changes the caller's tensors)."""
    if not callable(model):
        raise TypeError(f"{op}: model must be a Module or a callable, got "
                        f"{type(model).__name__}")
    if not isinstance(inputs, Tensor) or inputs.ndim < 1:
        raise TypeError(f"{op}: inputs must be a Tensor of shape (N, ...), got "
                        f"{type(inputs).__name__}"
                        + (f" of shape {tuple(inputs.shape)}" if isinstance(inputs, Tensor)
                           else ""))
    if not inputs.is_floating_point():
        raise TypeError(f"{op}: inputs must be floating point, got dtype {inputs.dtype}")
    return inputs.detach()


def targets(op: str, target: Target, n: int) -> np.ndarray | None:
    """The class index of each of the ``n`` examples (None: the model gives one score each)."""
    if target is None:
        return None
    if isinstance(target, Tensor):
        target = target.numpy()
    t = np.asarray(target)
    if t.dtype.kind not in "iu":
        raise TypeError(f"{op}: target must be an int or integer class indices, got dtype "
                        f"{t.dtype}")
    if t.ndim == 0:
        return np.full(n, int(t), dtype=np.int64)
    if t.shape != (n,):
        raise ValueError(f"{op}: target must be an int or hold one class index per example "
                         f"({n}), got shape {t.shape}")
    return t.astype(np.int64)


def scores(op: str, output: Any, target: np.ndarray | None) -> Tensor:
    """``output[i, target[i]]`` for each example i, as an (N,) Tensor in the graph."""
    if not isinstance(output, Tensor):
        raise TypeError(f"{op}: the model must return a Tensor, got {type(output).__name__}")
    n = output.shape[0]
    flat = output.reshape(n, -1)
    if target is None:
        if flat.shape[1] != 1:
            raise ValueError(f"{op}: the model gives {flat.shape[1]} outputs per example "
                             f"(shape {tuple(output.shape)}): say which to explain with "
                             "target=")
        return flat.reshape(n)
    if len(target) != n:  # a tiled target always matches; a model changing N does not
        raise ValueError(f"{op}: the model returned {n} rows for {len(target)} examples")
    k = flat.shape[1]
    if target.min() < 0 or target.max() >= k:
        raise ValueError(f"{op}: target {target.tolist()} out of range for {k} outputs per "
                         "example")
    xp = output.device.xp
    mask = xp.zeros(flat.shape, dtype=flat.dtype)
    mask[xp.arange(n), xp.asarray(target)] = 1
    return (flat * Tensor._make(mask, output.device)).sum(1)


def input_gradients(op: str, model: Any, x: Tensor, target: np.ndarray | None) -> Tensor:
    """d score_i / d x_i for each example (the examples are independent of each other)."""
    x = x.detach().requires_grad_()
    with enable_grad():
        s = scores(op, model(x), target)
        (g,) = grad(s.sum(), x)
    assert g is not None  # x is used: the scores are computed from it
    return g


def broadcast_baselines(op: str, baselines: Any, x: Tensor) -> Tensor:
    """``baselines`` (None: zeros; a number; a Tensor broadcastable to ``x``) as x's shape."""
    if baselines is None:
        baselines = 0.0
    if isinstance(baselines, int | float):
        return Tensor._make(x.device.xp.full(x.shape, baselines, dtype=x.dtype), x.device)
    if not isinstance(baselines, Tensor):
        raise TypeError(f"{op}: baselines must be None, a number or a Tensor, got "
                        f"{type(baselines).__name__}")
    try:
        data = x.device.xp.broadcast_to(baselines.detach().to(x.device)._data, x.shape)
    except ValueError:
        raise ValueError(f"{op}: baselines of shape {tuple(baselines.shape)} do not broadcast "
                         f"to the inputs' {tuple(x.shape)}") from None
    return Tensor._make(data.astype(x.dtype, copy=True), x.device)


def last_conv(model: Module) -> Module:
    """The last Conv2d of ``model`` (Grad-CAM's usual layer)."""
    from ..nn import Conv2d

    convs = [m for m in model.modules() if isinstance(m, Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no Conv2d layer: pass layer=")
    return convs[-1]

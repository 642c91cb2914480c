"""Occlusion (Zeiler and Fergus, 2014), as Captum's ``Occlusion``: slide a window over each
example's input, replace what it covers by the baseline, and attribute the drop of the
``target`` score to the covered elements; an element's attribution is the mean drop over the
windows that cover it (0 where none does). Shape letters: N examples, P window positions.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..autograd import no_grad
from ..tensor import Tensor
from ._common import Target, broadcast_baselines, check_input, scores, targets


def _per_dim(op: str, name: str, value: int | Sequence[int], dims: int) -> tuple[int, ...]:
    values = (value,) * dims if isinstance(value, int) else tuple(value)
    if len(values) != dims or not all(isinstance(v, int) and v >= 1 for v in values):
        raise ValueError(f"{op}: {name} must be an int >= 1 or {dims} of them (one per "
                         f"windowed dim), got {value!r}")
    return values


def occlusion(model: Any, inputs: Tensor, target: Target, window: Sequence[int],
              stride: int | Sequence[int] = 1, baselines: Any = 0,
              perturbations_per_eval: int = 1) -> Tensor:
    """Occlusion attributions, the inputs' shape. ``window`` is the window's shape over the
    last ``len(window)`` dims of an example (the dims before them are covered whole: a
    ``(2, 2)`` window on ``(C, H, W)`` hides all channels of a 2x2 patch); ``stride`` its
    step per windowed dim; ``baselines`` what replaces the covered values (a number, or a
    Tensor broadcastable to the inputs); ``perturbations_per_eval`` window positions run
    through the model per call, (P' * N, ...).

    >>> net = dlcore.models.LeNet().eval()
    >>> occlusion(net, dlcore.randn(2, 1, 8, 8), 3, window=(2, 2), stride=2).shape
    (2, 1, 8, 8)
    """
    op = "occlusion"
    x = check_input(op, model, inputs)
    shape = tuple(x.shape[1:])
    dims = len(tuple(window))
    if not 1 <= dims <= len(shape):
        raise ValueError(f"{op}: window must cover 1 to {len(shape)} dims of an example of "
                         f"shape {shape}, got {window!r}")
    win = _per_dim(op, "window", window, dims)
    steps = _per_dim(op, "stride", stride, dims)
    lead = len(shape) - dims
    if any(w > s for w, s in zip(win, shape[lead:])):
        raise ValueError(f"{op}: window {win} is larger than the example's {shape[lead:]}")
    if not isinstance(perturbations_per_eval, int) or perturbations_per_eval < 1:
        raise ValueError(f"{op}: perturbations_per_eval must be an int >= 1, got "
                         f"{perturbations_per_eval!r}")
    n = x.shape[0]
    t = targets(op, target, n)
    xp, dev = x.device.xp, x.device
    base = broadcast_baselines(op, baselines, x)._data
    starts = [range(0, s - w + 1, k) for s, w, k in zip(shape[lead:], win, steps)]
    positions = list(itertools.product(*starts))
    total = xp.zeros(x.shape, dtype=x.dtype)
    covered = xp.zeros(shape, dtype=x.dtype)
    with no_grad():
        reference = scores(op, model(x), t)._data  # (N,)
        for first in range(0, len(positions), perturbations_per_eval):
            chunk = positions[first:first + perturbations_per_eval]
            masks = []
            for pos in chunk:
                mask = xp.zeros(shape, dtype=x.dtype)
                mask[(Ellipsis,) + tuple(slice(p, p + w) for p, w in zip(pos, win))] = 1
                masks.append(mask)
            hidden = xp.concatenate([x._data * (1 - m) + base * m for m in masks])
            tiled = None if t is None else np.tile(t, len(chunk))
            s = scores(op, model(Tensor._make(hidden, dev)), tiled)._data.reshape(len(chunk), n)
            for mask, drop in zip(masks, reference - s):
                total += drop.reshape((n,) + (1,) * len(shape)) * mask
                covered += mask
    return Tensor._make(xp.where(covered > 0, total / xp.maximum(covered, 1), 0), dev)

"""Gradient clipping (``torch.nn.utils.clip_grad_norm_`` / ``clip_grad_value_``).

Both work in place on the raw gradient arrays with no device synchronisation: the scale
factor stays an on-device 0-d array, and gradients are always multiplied by it (by 1.0
when the norm is small), exactly as PyTorch does for the same reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from ..autograd import device_work
from ..device import check_not_capturing
from ..ops._util import device_matmul
from ..tensor import Tensor

__all__ = ["clip_grad_norm_", "clip_grad_value_"]


def _grads(parameters: Tensor | Iterable[Tensor]) -> list[Tensor]:
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    return [p.grad for p in params if p.grad is not None]


def _norm(xp: Any, g: Any, norm_type: float) -> Any:
    if norm_type == np.inf:
        return xp.abs(g).max() if g.size else xp.zeros((), g.dtype)
    if norm_type == 2.0:
        flat = g.reshape(-1)
        if xp is np:
            return xp.sqrt(xp.dot(flat, flat))
        # cuda: a 1 x 1 GEMM through dlcore.cuda_blas, which CUDA graphs capture (CuPy's dot
        # calls cuBLAS through its own wrapper, which refuses capture)
        return xp.sqrt(device_matmul(xp, flat[None, :], flat[:, None])[0, 0])
    if norm_type == 0.0:
        return (g != 0).sum().astype(g.dtype)
    return (xp.abs(g) ** norm_type).sum() ** (1.0 / norm_type)


def clip_grad_norm_(parameters: Tensor | Iterable[Tensor], max_norm: float,
                    norm_type: float = 2.0, error_if_nonfinite: bool = False,
                    foreach: bool | None = None) -> Tensor:
    """Scale all gradients together so their joint ``norm_type``-norm is at most
    ``max_norm``; returns the norm before clipping (a 0-d Tensor). ``foreach`` is accepted
    for PyTorch compatibility.

    >>> total = clip_grad_norm_(model.parameters(), max_norm=1.0)  # doctest: +SKIP
    """
    grads = _grads(parameters)
    norm_type = float(norm_type)
    if not grads:
        return Tensor(0.0)
    device = grads[0].device
    xp = device.xp
    if error_if_nonfinite:
        check_not_capturing(device, "clip_grad_norm_(error_if_nonfinite=True)")

    def clip() -> Any:
        by_device: dict[Any, list[Any]] = {}
        for g in grads:
            by_device.setdefault(g.device, []).append(_norm(g.device.xp, g._data, norm_type))
        totals = []
        for dev, norms in by_device.items():
            total = _norm(dev.xp, dev.xp.stack(norms), norm_type)
            totals.append(total if dev is device else xp.asarray(float(total)))
        total = totals[0] if len(totals) == 1 else _norm(xp, xp.stack(totals), norm_type)
        if error_if_nonfinite and not bool(xp.isfinite(total)):
            raise RuntimeError(f"clip_grad_norm_: the total norm of order {norm_type} for "
                               "gradients from `parameters` is non-finite, so it cannot be "
                               "clipped; to scale the gradients by the non-finite norm "
                               "anyway, set error_if_nonfinite=False")
        coef = xp.minimum(max_norm / (total + 1e-6), 1.0)
        for g in grads:
            gxp = g.device.xp
            scale = coef if g.device is device else gxp.asarray(float(coef))
            gxp.multiply(g._data, scale.astype(g.dtype), out=g._data)
        return xp.asarray(total)

    total = device_work(device, clip, [g._data for g in grads])
    for g in grads:
        g._bump()
    return Tensor._make(total, device)


def clip_grad_value_(parameters: Tensor | Iterable[Tensor], clip_value: float,
                     foreach: bool | None = None) -> None:
    """Clamp every gradient element to ``[-clip_value, clip_value]`` in place. ``foreach``
    is accepted for PyTorch compatibility."""
    clip_value = float(clip_value)
    for g in _grads(parameters):
        def clamp(g: Tensor = g) -> None:
            g.device.xp.clip(g._data, -clip_value, clip_value, out=g._data)
        device_work(g.device, clamp, [g._data])
        g._bump()

"""Gradient clipping against NumPy references."""

from __future__ import annotations

import numpy as np
import pytest

import dlcore
from dlcore.nn.parameter import Parameter
from dlcore.nn.utils import clip_grad_norm_, clip_grad_value_


def _params(device: str, grads: list[np.ndarray]) -> list[Parameter]:
    params = []
    for g in grads:
        p = Parameter(dlcore.zeros(*g.shape, dtype=dlcore.float64, device=device))
        p.grad = dlcore.tensor(g, device=device)
        params.append(p)
    return params


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, float("inf")])
@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clip_grad_norm(device, norm_type, max_norm):
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal((3, 4)), rng.standard_normal(5)]
    params = _params(device, grads)
    params.append(Parameter(dlcore.zeros(2, dtype=dlcore.float64, device=device)))  # no grad
    flat = np.concatenate([g.ravel() for g in grads])
    total = np.abs(flat).max() if norm_type == float("inf") else \
        (np.abs(flat) ** norm_type).sum() ** (1 / norm_type)
    out = clip_grad_norm_(params, max_norm, norm_type=norm_type)
    np.testing.assert_allclose(out.item(), total, rtol=1e-12)
    scale = min(max_norm / (total + 1e-6), 1.0)
    for p, g in zip(params, grads):
        np.testing.assert_allclose(p.grad.numpy(), g * scale, rtol=1e-12)


def test_clip_grad_norm_nonfinite_and_empty():
    p = _params("cpu", [np.array([1.0, np.inf])])
    with pytest.raises(RuntimeError, match="non-finite"):
        clip_grad_norm_(p, 1.0, error_if_nonfinite=True)
    assert clip_grad_norm_([Parameter(dlcore.zeros(2))], 1.0).item() == 0.0
    single = _params("cpu", [np.array([3.0, 4.0])])[0]
    assert clip_grad_norm_(single, 1.0).item() == 5.0


def test_clip_grad_value(device):
    g = np.array([-3.0, -0.5, 0.2, 7.0])
    params = _params(device, [g])
    clip_grad_value_(params, 1.0)
    np.testing.assert_array_equal(params[0].grad.numpy(), np.clip(g, -1.0, 1.0))

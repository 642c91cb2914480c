"""Activation modules and functions: forward against NumPy formulas, float64 gradchecks."""

from __future__ import annotations

import math

import numpy as np
import pytest

import dlcore
import dlcore.nn as nn
import dlcore.nn.functional as F
from dlcore.testing import gradcheck, gradgradcheck


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def _softmax(x: np.ndarray, dim: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=dim, keepdims=True))
    return e / e.sum(axis=dim, keepdims=True)


def _gelu(x: np.ndarray) -> np.ndarray:
    return np.vectorize(lambda v: 0.5 * v * (1 + math.erf(v / math.sqrt(2))))(x)


CASES = [
    (nn.ReLU(), lambda x: np.maximum(x, 0)),
    (nn.LeakyReLU(0.2), lambda x: np.where(x > 0, x, 0.2 * x)),
    (nn.ELU(), lambda x: np.where(x > 0, x, np.expm1(x))),
    (nn.ELU(alpha=0.5), lambda x: np.where(x > 0, x, 0.5 * np.expm1(x))),
    (nn.GELU(), _gelu),
    (nn.SiLU(), lambda x: x * _sigmoid(x)),
    (nn.Tanh(), np.tanh),
    (nn.Sigmoid(), _sigmoid),
    (nn.Softplus(), lambda x: np.log1p(np.exp(x))),
    (nn.Softmax(dim=1), lambda x: _softmax(x, 1)),
    (nn.LogSoftmax(dim=0), lambda x: np.log(_softmax(x, 0))),
]


def _points(seed: int = 0) -> np.ndarray:
    """Values away from 0, where relu-like kinks would spoil finite differences."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.1, 3.0, (3, 4)) * rng.choice([-1.0, 1.0], (3, 4))


@pytest.mark.parametrize("module, ref", CASES, ids=[type(m).__name__ for m, _ in CASES])
def test_activation_forward_and_gradcheck(device: str, module: nn.Module, ref: object) -> None:
    x = _points()
    out = module(dlcore.tensor(x, device=device))
    assert out.device.type == device
    np.testing.assert_allclose(out.numpy(), ref(x), rtol=1e-6, atol=1e-7)
    xt = dlcore.tensor(x, device=device, requires_grad=True)
    assert gradcheck(module, [xt])
    x32 = module(dlcore.tensor(x, dtype=dlcore.float32, device=device))
    assert x32.dtype == np.float32


@pytest.mark.parametrize("fn", [F.elu, F.silu])
def test_new_activations_second_derivative(device: str, fn: object) -> None:
    xt = dlcore.tensor(_points(1), device=device, requires_grad=True)
    assert gradgradcheck(fn, [xt])


def test_elu_and_silu_extremes_are_finite() -> None:
    x = dlcore.tensor([-1000.0, -30.0, 0.0, 30.0, 1000.0])
    np.testing.assert_allclose(F.elu(x).numpy(), [-1.0, -1.0, 0.0, 30.0, 1000.0], rtol=1e-6)
    np.testing.assert_allclose(F.silu(x).numpy(), [0.0, 0.0, 0.0, 30.0, 1000.0], atol=1e-6)
    with pytest.raises(TypeError, match="elu: expected a floating point tensor"):
        F.elu(dlcore.tensor([1, 2]))


def test_softmax_implicit_dim_warns_like_pytorch() -> None:
    x = dlcore.randn(2, 3)
    with pytest.warns(UserWarning, match="implicit dimension"):
        out = nn.Softmax()(x)
    np.testing.assert_allclose(out.numpy(), _softmax(x.numpy(), 1), rtol=1e-6)


def test_activation_reprs() -> None:
    assert repr(nn.ReLU()) == "ReLU()"
    assert repr(nn.ReLU(inplace=True)) == "ReLU(inplace=True)"
    assert repr(nn.LeakyReLU()) == "LeakyReLU(negative_slope=0.01)"
    assert repr(nn.ELU()) == "ELU(alpha=1.0)"
    assert repr(nn.GELU()) == "GELU(approximate='none')"
    assert repr(nn.Softmax(dim=-1)) == "Softmax(dim=-1)"

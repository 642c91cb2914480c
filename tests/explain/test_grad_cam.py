"""Grad-CAM (dlcore/explain/layer.py) against its formula, computed by hand with NumPy."""

from __future__ import annotations

import numpy as np
import pytest

import dlcore
import dlcore.nn as nn
from dlcore.explain import grad_cam
from dlcore.nn import functional as F


def _model() -> nn.Sequential:
    """conv (1 -> 3 channels, 6x6) -> relu -> flatten -> linear to 4 classes."""
    dlcore.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(3 * 36, 4)).double()


def _by_hand(model: nn.Sequential, x: np.ndarray, target: list[int], relu: bool) -> np.ndarray:
    """A = conv(x); score = W[t] . relu(A).flatten() + b, so dscore/dA = W[t] * (A > 0);
    channel weights are its spatial mean; the map is relu(sum_c weight_c A_c)."""
    with dlcore.no_grad():
        a = model[0](dlcore.tensor(x)).numpy()  # (N, 3, 6, 6)
    w = model[3].weight.numpy().reshape(4, 3, 6, 6)
    grads = w[target] * (a > 0)
    weights = grads.mean(axis=(2, 3), keepdims=True)
    cam = (weights * a).sum(axis=1, keepdims=True)
    return np.maximum(cam, 0) if relu else cam


@pytest.mark.parametrize("relu", [True, False])
def test_grad_cam_is_its_formula(relu: bool) -> None:
    model = _model()
    x = np.random.default_rng(0).standard_normal((3, 1, 6, 6))
    target = [0, 3, 1]
    got = grad_cam(model, dlcore.tensor(x), dlcore.tensor(target), model[0],
                   relu_attributions=relu)
    expected = _by_hand(model, x, target, relu)
    assert got.shape == (3, 1, 6, 6)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-14)
    if not relu:
        assert (expected < 0).any()  # the case where the ReLU matters is exercised


def test_upsampling_is_bilinear_interpolation_to_the_input() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(2 * 9, 3)).double()
    x = dlcore.tensor(np.random.default_rng(1).standard_normal((2, 1, 6, 6)))
    small = grad_cam(model, x, 2, model[2])
    assert small.shape == (2, 1, 3, 3)
    big = grad_cam(model, x, 2, model[2], upsample_to_input=True)
    expected = F.interpolate(small, size=(6, 6), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(big.numpy(), expected.numpy(), rtol=1e-12)


def test_hooks_are_removed_and_frozen_models_work() -> None:
    model = _model().requires_grad_(False)
    x = dlcore.tensor(np.random.default_rng(2).standard_normal((1, 1, 6, 6)))
    grad_cam(model, x, 0, model[0])
    assert not model[0]._forward_hooks
    assert x.grad is None and not x.requires_grad  # the caller's input is left alone


def test_a_layer_outside_the_model_is_named() -> None:
    model = _model()
    with pytest.raises(ValueError, match="did not run in the model's forward"):
        grad_cam(model, dlcore.randn(1, 1, 6, 6).double(), 0, nn.ReLU())

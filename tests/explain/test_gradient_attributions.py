"""Saliency and integrated gradients (dlcore/explain/gradients.py) against closed forms, an
independent finite-difference quadrature and, where importable, Captum."""

from __future__ import annotations

import numpy as np
import pytest

import dlcore
import dlcore.nn as nn
from dlcore.explain import approximation, integrated_gradients, saliency
from dlcore.models import LeNet

METHODS = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right",
           "riemann_middle")


def _linear() -> nn.Linear:
    dlcore.manual_seed(0)
    return nn.Linear(5, 3).double()


def _x(*shape: int, seed: int = 1) -> dlcore.Tensor:
    return dlcore.tensor(np.random.default_rng(seed).standard_normal(shape))


def test_saliency_of_a_linear_model_is_the_weight_row() -> None:
    model, x = _linear(), _x(4, 5)
    w = model.weight.numpy()
    target = [0, 2, 1, 2]
    np.testing.assert_array_equal(saliency(model, x, target).numpy(), np.abs(w[target]))
    np.testing.assert_array_equal(saliency(model, x, dlcore.tensor(target), abs=False).numpy(),
                                  w[target])
    np.testing.assert_array_equal(saliency(model, x, 1, abs=False).numpy(),
                                  np.broadcast_to(w[1], (4, 5)))


@pytest.mark.parametrize("method", METHODS)
def test_integrated_gradients_of_a_linear_model_are_input_times_weight(method: str) -> None:
    model, x = _linear(), _x(4, 5)
    w = model.weight.numpy()
    base = _x(1, 5, seed=2)  # broadcast over the examples
    attr, delta = integrated_gradients(model, x, 2, baselines=base, n_steps=7, method=method,
                                       return_convergence_delta=True)
    np.testing.assert_allclose(attr.numpy(), (x.numpy() - base.numpy()) * w[2], rtol=1e-12,
                               atol=1e-12)
    np.testing.assert_allclose(delta.numpy(), 0, atol=1e-12)
    zero = integrated_gradients(model, x, 2, n_steps=7, method=method)  # baselines=None: 0
    np.testing.assert_allclose(zero.numpy(), x.numpy() * w[2], rtol=1e-12, atol=1e-12)


def test_quadrature_weights_sum_to_one_and_points_are_captums() -> None:
    for method in METHODS:
        alphas, steps = approximation(method, 10)
        assert len(alphas) == len(steps) == 10 and abs(sum(steps) - 1) < 1e-12
        assert all(0 <= a <= 1 for a in alphas)
    assert approximation("riemann_left", 4)[0] == [0, 0.25, 0.5, 0.75]
    assert approximation("riemann_right", 4)[0] == [0.25, 0.5, 0.75, 1]
    assert approximation("riemann_middle", 4)[0] == [0.125, 0.375, 0.625, 0.875]
    assert approximation("riemann_trapezoid", 3) == ([0, 0.5, 1], [0.25, 0.5, 0.25])
    with pytest.raises(ValueError, match="method must be one of"):
        approximation("simpson", 10)
    with pytest.raises(ValueError, match="n_steps must be an int >= 2"):
        approximation("riemann_trapezoid", 1)


def _cnn() -> LeNet:
    dlcore.manual_seed(0)
    return LeNet(channels=(4, 6), hidden=16, dropout=0.0).double().eval()


def test_integrated_gradients_on_a_cnn_match_finite_differences() -> None:
    """Independent of autograd: central differences of the forward give each gradient at
    the midpoint rule's points, all (step, pixel, +-) perturbations in one batch."""
    model, x = _cnn(), _x(2, 1, 8, 8)
    target = np.array([3, 7])
    n_steps, eps = 6, 1e-6
    xs = x.numpy()
    alphas = (np.arange(n_steps) + 0.5) / n_steps
    pixels = xs.shape[1] * 64
    expected = np.zeros_like(xs)
    for i in range(2):
        points = alphas[:, None] * xs[i].reshape(1, -1)  # (S, 64)
        bump = np.eye(pixels) * eps
        batch = np.concatenate([points[:, None] + bump, points[:, None] - bump], axis=1)
        with dlcore.no_grad():
            out = model(dlcore.tensor(batch.reshape(-1, 1, 8, 8))).numpy()[:, target[i]]
        out = out.reshape(n_steps, 2, pixels)
        grads = (out[:, 0] - out[:, 1]) / (2 * eps)  # (S, 64)
        expected[i] = (xs[i].reshape(-1) * grads.mean(0)).reshape(xs[i].shape)
    got = integrated_gradients(model, x, dlcore.tensor(target), n_steps=n_steps,
                               method="riemann_middle")
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-8)


def test_internal_batch_size_changes_nothing() -> None:
    model, x = _cnn(), _x(3, 1, 8, 8)
    whole = integrated_gradients(model, x, 5, n_steps=10)
    for size in (1, 3, 7, 100):  # below N: one point per call
        part = integrated_gradients(model, x, 5, n_steps=10, internal_batch_size=size)
        np.testing.assert_allclose(part.numpy(), whole.numpy(), rtol=1e-12, atol=1e-14)


def _smooth() -> nn.Module:
    dlcore.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Tanh(), nn.Flatten(),
                         nn.Linear(3 * 64, 4)).double()


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid"])
def test_completeness_delta_falls_as_steps_grow(method: str) -> None:
    """The attributions sum to score(x) - score(baseline) in the limit; measured on this
    smooth model (max |delta| over 3 examples): Gauss-Legendre 4/16/64 steps 1.4e-5/2.6e-16/
    3.6e-16 (float64 rounding), trapezoid 3.1e-3/1.2e-4/6.9e-6 (second order)."""
    model, x = _smooth(), _x(3, 1, 8, 8)
    deltas = [np.abs(integrated_gradients(model, x, 1, baselines=-0.5, n_steps=n,
                                          method=method,
                                          return_convergence_delta=True)[1].numpy()).max()
              for n in (4, 16, 64)]
    if method == "gausslegendre":
        assert deltas[0] > 1e-6 > 1e-12 > max(deltas[1:])
    else:
        assert deltas[0] > deltas[1] > deltas[2] and deltas[2] < 1e-4
        assert deltas[0] / deltas[1] > 8  # error ~ 1/n^2: 16x in theory for 4x the steps


def test_delta_on_the_relu_cnn_falls_too() -> None:
    model, x = _cnn(), _x(2, 1, 8, 8)
    deltas = [np.abs(integrated_gradients(model, x, 0, n_steps=n,
                                          return_convergence_delta=True)[1].numpy()).max()
              for n in (2, 200)]
    assert deltas[1] < deltas[0] / 10


def test_bad_arguments_are_named() -> None:
    model, x = _linear(), _x(4, 5)
    with pytest.raises(ValueError, match="target must be an int or hold one class index"):
        saliency(model, x, [0, 1])
    with pytest.raises(ValueError, match="out of range for 3 outputs"):
        saliency(model, x, 3)
    with pytest.raises(ValueError, match="say which to explain with target="):
        integrated_gradients(model, x)
    with pytest.raises(ValueError, match="do not broadcast"):
        integrated_gradients(model, x, 0, baselines=_x(2, 5))
    with pytest.raises(TypeError, match="inputs must be a Tensor"):
        saliency(model, x.numpy(), 0)


def test_a_single_output_model_needs_no_target() -> None:
    dlcore.manual_seed(0)
    model = nn.Linear(5, 1).double()
    x = _x(4, 5)
    attr = integrated_gradients(model, x, n_steps=3)
    np.testing.assert_allclose(attr.numpy(), x.numpy() * model.weight.numpy()[0], rtol=1e-12)


def test_integrated_gradients_agree_with_captum() -> None:
    captum_attr = pytest.importorskip("captum.attr")
    import torch

    ours = _smooth()
    theirs = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.Tanh(),
                                 torch.nn.Flatten(), torch.nn.Linear(3 * 64, 4)).double()
    with torch.no_grad():
        for (_, p), q in zip(ours.named_parameters(), theirs.parameters()):
            q.copy_(torch.from_numpy(p.numpy()))
    x = _x(3, 1, 8, 8)
    for method in ("gausslegendre", "riemann_trapezoid"):
        expected = captum_attr.IntegratedGradients(theirs).attribute(
            torch.from_numpy(x.numpy()), target=2, n_steps=20, method=method)
        got = integrated_gradients(ours, x, 2, n_steps=20, method=method)
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-10, atol=1e-12)

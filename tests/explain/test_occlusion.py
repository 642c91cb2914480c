"""Occlusion (dlcore/explain/perturbation.py) against the obvious slow loop."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import dlcore
import dlcore.nn as nn
from dlcore.explain import occlusion


def _model() -> nn.Sequential:
    dlcore.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.Flatten(),
                         nn.Linear(3 * 5 * 7, 4)).double()


def _slow(model: nn.Module, x: np.ndarray, target: list[int], window: tuple[int, ...],
          stride: tuple[int, ...], baseline: float) -> np.ndarray:
    """Each window position over the example's (C, H, W), one example at a time."""
    def score(i: int, image: np.ndarray) -> float:
        with dlcore.no_grad():
            return float(model(dlcore.tensor(image[None])).numpy()[0, target[i]])

    total, count = np.zeros_like(x), np.zeros(x.shape[1:])
    ranges = [range(0, d - w + 1, s) for d, w, s in zip(x.shape[1:], window, stride)]
    for i in range(len(x)):
        reference = score(i, x[i])
        for pos in itertools.product(*ranges):
            where = tuple(slice(p, p + w) for p, w in zip(pos, window))
            hidden = x[i].copy()
            hidden[where] = baseline
            total[i][where] += reference - score(i, hidden)
            if i == 0:
                count[where] += 1
    return np.where(count > 0, total / np.maximum(count, 1), 0)


@pytest.mark.parametrize("window, stride", [((1, 2, 2), (1, 1, 1)), ((2, 3, 2), (1, 2, 3)),
                                            ((2, 2, 2), (2, 2, 2))])
def test_occlusion_equals_the_slow_loop(window: tuple[int, ...],
                                        stride: tuple[int, ...]) -> None:
    model = _model()
    x = np.random.default_rng(0).standard_normal((2, 2, 5, 7))
    target = [1, 3]
    got = occlusion(model, dlcore.tensor(x), dlcore.tensor(target), window=window,
                    stride=stride, baselines=0.5, perturbations_per_eval=4)
    np.testing.assert_allclose(got.numpy(), _slow(model, x, target, window, stride, 0.5),
                               rtol=1e-10, atol=1e-12)


def test_a_window_over_the_last_dims_covers_the_leading_ones_whole() -> None:
    model = _model()
    x = dlcore.tensor(np.random.default_rng(1).standard_normal((2, 2, 5, 7)))
    short = occlusion(model, x, 0, window=(2, 2), stride=(1, 2))
    full = occlusion(model, x, 0, window=(2, 2, 2), stride=(1, 1, 2), perturbations_per_eval=3)
    np.testing.assert_allclose(short.numpy(), full.numpy(), rtol=1e-12)


def test_bad_windows_are_named() -> None:
    x = dlcore.randn(1, 2, 5, 7).double()
    with pytest.raises(ValueError, match="larger than the example's"):
        occlusion(_model(), x, 0, window=(6, 2))
    with pytest.raises(ValueError, match="stride must be an int >= 1"):
        occlusion(_model(), x, 0, window=(2, 2), stride=0)

"""nn.init: gains, fans, and the statistics of each initialiser."""

from __future__ import annotations

import math

import numpy as np
import pytest

import dlcore
import dlcore.nn as nn
from dlcore.nn import init


def test_calculate_gain() -> None:
    assert init.calculate_gain("linear") == 1.0 and init.calculate_gain("sigmoid") == 1.0
    assert init.calculate_gain("conv2d") == 1.0
    assert init.calculate_gain("tanh") == pytest.approx(5 / 3)
    assert init.calculate_gain("relu") == pytest.approx(math.sqrt(2))
    assert init.calculate_gain("leaky_relu") == pytest.approx(math.sqrt(2 / (1 + 0.01 ** 2)))
    assert init.calculate_gain("leaky_relu", math.sqrt(5)) == pytest.approx(math.sqrt(1 / 3))
    assert init.calculate_gain("selu") == 0.75
    with pytest.raises(ValueError, match="unsupported nonlinearity 'swish'"):
        init.calculate_gain("swish")


def test_fans() -> None:
    assert init._calculate_fan_in_and_fan_out(dlcore.empty(4, 3)) == (3, 4)
    assert init._calculate_fan_in_and_fan_out(dlcore.empty(8, 3, 5, 5)) == (75, 200)
    with pytest.raises(ValueError, match="fewer than 2 dims"):
        init._calculate_fan_in_and_fan_out(dlcore.empty(3))


def test_kaiming_and_xavier_statistics(device: str) -> None:
    dlcore.manual_seed(0)
    w = nn.Parameter(dlcore.empty(256, 64, 3, device=device))  # fan_in 192, fan_out 768
    init.kaiming_uniform_(w, a=0, nonlinearity="relu")
    bound = math.sqrt(2) * math.sqrt(3 / 192)
    a = w.numpy()
    assert a.max() <= bound and a.min() >= -bound and a.max() > 0.99 * bound
    init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")
    assert abs(w.numpy().std() - math.sqrt(2 / 768)) < 0.002
    init.xavier_uniform_(w, gain=2.0)
    bound = 2 * math.sqrt(6 / (192 + 768))
    assert np.abs(w.numpy()).max() <= bound and np.abs(w.numpy()).max() > 0.99 * bound
    init.xavier_normal_(w)
    assert abs(w.numpy().std() - math.sqrt(2 / 960)) < 0.002
    assert w.requires_grad and w.is_leaf and w.device.type == device


def test_fill_initialisers(device: str) -> None:
    w = dlcore.empty(3, 4, device=device, requires_grad=True)
    assert init.constant_(w, 0.5) is w and (w.numpy() == 0.5).all()
    assert not init.zeros_(w).numpy().any() and (init.ones_(w).numpy() == 1).all()
    np.testing.assert_array_equal(init.eye_(w).numpy(), np.eye(3, 4))
    init.uniform_(w, -2, -1)
    assert (w.numpy() >= -2).all() and (w.numpy() < -1).all()
    dlcore.manual_seed(3)
    first = init.normal_(w, 5.0, 0.1).numpy().copy()
    dlcore.manual_seed(3)
    np.testing.assert_array_equal(init.normal_(w, 5.0, 0.1).numpy(), first)
    with pytest.raises(ValueError, match="eye_: only 2-D"):
        init.eye_(dlcore.empty(2, 2, 2))


@pytest.mark.parametrize("shape", [(6, 4), (3, 8), (4, 2, 3)])
def test_orthogonal(device: str, shape: tuple) -> None:
    w = dlcore.empty(*shape, dtype=dlcore.float64, device=device)
    init.orthogonal_(w, gain=1.5)
    m = w.numpy().reshape(shape[0], -1) / 1.5
    small = min(m.shape)
    gram = m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T
    np.testing.assert_allclose(gram, np.eye(small), atol=1e-12)


def test_trunc_normal_stays_in_range(device: str) -> None:
    w = dlcore.empty(2000, device=device)
    init.trunc_normal_(w, std=0.02, a=-0.03, b=0.03)
    a = w.numpy()
    assert a.min() >= -0.03 and a.max() <= 0.03 and abs(a.mean()) < 0.002

"""``inplace=True`` activations write into their input, as PyTorch's do, and stay correct
under autograd (checked against the out-of-place results and gradients, and PyTorch's
refusals)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

import dlcore
import dlcore.nn.functional as F
from dlcore import nn

OPS: dict[str, Callable] = {
    "relu": lambda x, ip: F.relu(x, inplace=ip),
    "leaky_relu": lambda x, ip: F.leaky_relu(x, 0.1, inplace=ip),
    "elu": lambda x, ip: F.elu(x, 0.5, inplace=ip),
    "silu": lambda x, ip: F.silu(x, inplace=ip),
}


@pytest.mark.parametrize("name", OPS)
def test_inplace_writes_the_input_and_returns_it(device: str, name: str) -> None:
    a = np.array([[-2.0, -0.5, 0.0, 1.5]], dtype=np.float32)
    want = OPS[name](dlcore.tensor(a, device=device), False).numpy()
    x = dlcore.tensor(a, device=device)
    held = x.array
    out = OPS[name](x, True)
    assert out is x and x.array is held  # the same tensor and storage
    np.testing.assert_array_equal(x.numpy(), want)


@pytest.mark.parametrize("name", OPS)
def test_inplace_on_a_non_leaf_gives_the_out_of_place_gradient(device: str, name: str) -> None:
    a = np.array([[-2.0, -0.5, 0.25, 1.5]])
    w = dlcore.tensor(a, dtype=dlcore.float64, device=device, requires_grad=True)
    (OPS[name](w * 3.0, False) * dlcore.tensor(a, dtype=dlcore.float64, device=device)
     ).sum().backward()
    want = w.grad.numpy().copy()
    w.grad = None
    h = w * 3.0
    y = OPS[name](h, True)
    assert y is h
    (y * dlcore.tensor(a, dtype=dlcore.float64, device=device)).sum().backward()
    np.testing.assert_allclose(w.grad.numpy(), want, rtol=1e-12)


def test_inplace_on_a_leaf_that_requires_grad_raises() -> None:
    x = dlcore.ones(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf"):
        F.relu(x, inplace=True)


def test_modules_pass_inplace_through() -> None:
    x = dlcore.tensor([-1.0, 2.0])
    assert nn.ReLU(inplace=True)(x) is x and x.tolist() == [0.0, 2.0]
    y = dlcore.tensor([-1.0, 2.0])
    assert nn.ReLU()(y) is not y and y.tolist() == [-1.0, 2.0]
    dlcore.manual_seed(0)
    z = dlcore.ones(1000)
    assert nn.Dropout(0.5, inplace=True).train()(z) is z
    assert set(np.unique(z.numpy())) <= {0.0, 2.0} and 0.4 < (z.numpy() > 0).mean() < 0.6

"""Linear, Bilinear, Identity: forward against NumPy, float64 gradchecks, initialisation,
error messages."""

from __future__ import annotations

import math

import numpy as np
import pytest

import dlcore
import dlcore.nn as nn
import dlcore.nn.functional as F
from dlcore.testing import gradcheck, gradgradcheck


def _t(arr: np.ndarray, device: str, grad: bool = False) -> dlcore.Tensor:
    return dlcore.tensor(arr, device=device, requires_grad=grad)


@pytest.mark.parametrize("shape", [(5,), (4, 5), (2, 3, 5)])
def test_linear_forward_matches_numpy(device: str, shape: tuple) -> None:
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal(shape), rng.standard_normal((3, 5)), rng.standard_normal(3)
    out = F.linear(_t(x, device), _t(w, device), _t(b, device))
    assert out.device.type == device
    np.testing.assert_allclose(out.numpy(), x @ w.T + b, rtol=1e-12)
    np.testing.assert_allclose(F.linear(_t(x, device), _t(w, device)).numpy(), x @ w.T,
                               rtol=1e-12)


def test_linear_gradcheck(device: str) -> None:
    rng = np.random.default_rng(1)
    x = _t(rng.standard_normal((2, 3, 4)), device, True)
    w = _t(rng.standard_normal((3, 4)), device, True)
    b = _t(rng.standard_normal(3), device, True)
    assert gradcheck(F.linear, [x, w, b])
    assert gradcheck(F.linear, [x, w])
    assert gradgradcheck(F.linear, [x, w, b])


def test_linear_module(device: str) -> None:
    dlcore.manual_seed(0)
    lin = nn.Linear(50, 40, device=device, dtype=dlcore.float64)
    assert lin.weight.shape == (40, 50) and lin.bias.shape == (40,)
    assert lin.weight.dtype == np.float64 and lin.weight.device.type == device
    bound = 1 / math.sqrt(50)
    w = lin.weight.numpy()
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    assert np.abs(lin.bias.numpy()).max() <= bound
    assert abs(w.std() - bound / math.sqrt(3)) < 0.01  # U(-b, b) has std b/sqrt(3)
    x = dlcore.randn(3, 50, device=device, dtype=dlcore.float64)
    np.testing.assert_allclose(lin(x).numpy(), x.numpy() @ w.T + lin.bias.numpy(), rtol=1e-12)
    assert nn.Linear(2, 3, bias=False).bias is None
    dlcore.manual_seed(5)
    a = nn.Linear(3, 3).weight.numpy()
    dlcore.manual_seed(5)
    np.testing.assert_array_equal(nn.Linear(3, 3).weight.numpy(), a)


def test_linear_errors_name_shapes() -> None:
    lin = nn.Linear(5, 2)
    with pytest.raises(RuntimeError, match=r"linear: input has 7 features \(shape \(4, 7\)\) "
                                           r"but weight expects 5"):
        lin(dlcore.zeros(4, 7))
    with pytest.raises(RuntimeError, match="input dtype float64 does not match weight dtype "
                                           "float32"):
        lin(dlcore.zeros(4, 5, dtype=dlcore.float64))
    with pytest.raises(RuntimeError, match=r"bias must have shape \(2,\)"):
        F.linear(dlcore.zeros(1, 5), lin.weight, dlcore.zeros(3))


def test_bilinear_matches_loops_and_gradcheck(device: str) -> None:
    dlcore.manual_seed(0)
    bil = nn.Bilinear(3, 2, 4, device=device).double()
    rng = np.random.default_rng(2)
    x1, x2 = rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    w, b = bil.weight.numpy(), bil.bias.numpy()
    ref = np.array([[x1[n] @ w[o] @ x2[n] + b[o] for o in range(4)] for n in range(5)])
    np.testing.assert_allclose(bil(_t(x1, device), _t(x2, device)).numpy(), ref, rtol=1e-12)
    assert np.abs(w).max() <= 1 / math.sqrt(3)
    assert gradcheck(lambda a, c: bil(a, c), [_t(x1[:2], device, True), _t(x2[:2], device, True)])
    with pytest.raises(RuntimeError, match="bilinear: inputs of shapes"):
        bil(_t(x1, device), _t(x1, device))


def test_identity() -> None:
    x = dlcore.ones(2)
    assert nn.Identity(3, any_kw=1)(x) is x

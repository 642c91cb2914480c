"""Matrix norms (linalg.matrix_norm, linalg.norm with a pair of dims, linalg.svdvals)
against NumPy's linalg.norm / svd, with gradcheck in float64."""

from __future__ import annotations

import numpy as np
import pytest

import dlcore
from dlcore.testing import gradcheck

ORDS = ["fro", "nuc", 2, -2, 1, -1, np.inf, -np.inf]


@pytest.mark.parametrize("ord", ORDS, ids=str)
def test_matrix_norm_matches_numpy_and_gradcheck(device: str, ord: object) -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2, 4, 3))
    x = dlcore.tensor(a, device=device, requires_grad=True)
    got = dlcore.linalg.matrix_norm(x, ord=ord)
    want = np.linalg.norm(a, ord=ord, axis=(-2, -1))
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-12)
    assert gradcheck(lambda t: dlcore.linalg.matrix_norm(t, ord=ord), [x])


@pytest.mark.parametrize("ord", ORDS, ids=str)
def test_matrix_norm_other_dims_and_keepdim(ord: object) -> None:
    rng = np.random.default_rng(1)
    a = rng.standard_normal((3, 2, 5))
    got = dlcore.linalg.norm(dlcore.tensor(a), ord=ord, dim=(2, 0), keepdim=True)
    want = np.linalg.norm(a, ord=ord, axis=(2, 0), keepdims=True)
    assert got.shape == want.shape
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)


def test_norm_of_a_matrix_with_an_ord_is_a_matrix_norm() -> None:
    a = np.array([[1.0, -2.0], [3.0, 4.0]])
    assert dlcore.linalg.norm(dlcore.tensor(a), ord=1).item() == pytest.approx(6.0)
    assert dlcore.linalg.norm(dlcore.tensor(a)).item() == pytest.approx(np.sqrt(30.0))
    with pytest.raises(RuntimeError, match="is a matrix norm"):
        dlcore.linalg.norm(dlcore.tensor([1.0, 2.0]), ord="nuc")


def test_svdvals_descending_and_its_gradient() -> None:
    rng = np.random.default_rng(2)
    a = rng.standard_normal((5, 3))
    x = dlcore.tensor(a, requires_grad=True)
    np.testing.assert_allclose(dlcore.linalg.svdvals(x).detach().numpy(),
                               np.linalg.svd(a, compute_uv=False), rtol=1e-12)
    assert gradcheck(lambda t: dlcore.linalg.svdvals(t), [x])
    with pytest.raises(RuntimeError, match="double backward"):
        (g,) = dlcore.autograd.grad(dlcore.linalg.svdvals(x).sum(), [x], create_graph=True)


def test_matrix_norm_bad_input() -> None:
    with pytest.raises(RuntimeError, match="at least 2 dims"):
        dlcore.linalg.matrix_norm(dlcore.ones(3))
    with pytest.raises(RuntimeError, match="ord must be"):
        dlcore.linalg.matrix_norm(dlcore.ones(3, 3), ord=3)
    with pytest.raises(TypeError, match="float32 or float64"):
        dlcore.linalg.svdvals(dlcore.ones(3, 3, dtype=dlcore.float16))

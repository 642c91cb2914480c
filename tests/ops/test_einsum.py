"""einsum against NumPy's einsum (forward) and gradcheck (float64) on every device."""

from __future__ import annotations

import numpy as np
import pytest

import dlcore
from dlcore.testing import gradcheck

CASES = [
    ("ij,jk->ik", [(3, 4), (4, 5)]),
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 2)]),
    ("i,i->", [(5,), (5,)]),
    ("ij->ji", [(3, 4)]),
    ("ij->", [(3, 4)]),
    ("ij->i", [(3, 4)]),
    ("ij,j->i", [(3, 4), (4,)]),
    ("ij,jk", [(3, 4), (4, 2)]),  # implicit output: ik
    ("...ij,...jk->...ik", [(2, 3, 4), (2, 4, 5)]),
    ("bn,anm,bm->ba", [(2, 3), (4, 3, 5), (2, 5)]),  # bilinear
    ("i,j->ij", [(3,), (4,)]),
    ("bhqd,bhkd->bhqk", [(2, 2, 3, 4), (2, 2, 5, 4)]),  # attention scores
    ("ij,ij,ij->i", [(2, 3), (2, 3), (2, 3)]),
    ("...j,j", [(2, 3, 4), (4,)]),
]


@pytest.mark.parametrize("equation, shapes", CASES)
def test_einsum_matches_numpy_and_gradcheck(device: str, equation: str, shapes: list) -> None:
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s) for s in shapes]
    tensors = [dlcore.tensor(a, dtype=dlcore.float64, device=device, requires_grad=True)
               for a in arrays]
    got = dlcore.einsum(equation, *tensors)
    np.testing.assert_allclose(got.numpy(), np.einsum(equation, *arrays), rtol=1e-12,
                               atol=1e-12)
    assert gradcheck(lambda *ts: dlcore.einsum(equation, *ts), tensors)


def test_einsum_broadcasts_size_one_ellipsis_dims() -> None:
    a = dlcore.randn(1, 3, 4, dtype=dlcore.float64, requires_grad=True)
    b = dlcore.randn(5, 4, 2, dtype=dlcore.float64, requires_grad=True)
    got = dlcore.einsum("...ij,...jk->...ik", a, b)
    want = np.einsum("...ij,...jk->...ik", a.detach().numpy(), b.detach().numpy())
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-12)
    assert gradcheck(lambda x, y: dlcore.einsum("...ij,...jk->...ik", x, y), [a, b])


def test_einsum_float32_and_a_list_of_operands() -> None:
    a, b = dlcore.randn(3, 4), dlcore.randn(4, 2)
    np.testing.assert_allclose(dlcore.einsum("ij,jk->ik", [a, b]).numpy(),
                               (a @ b).numpy(), rtol=1e-5, atol=1e-6)


def test_einsum_diagonal_forward_works_backward_says_why() -> None:
    x = dlcore.randn(3, 3, requires_grad=True)
    np.testing.assert_allclose(dlcore.einsum("ii->i", x).detach().numpy(),
                               np.diag(x.detach().numpy()))
    with pytest.raises(RuntimeError, match="repeated within one operand"):
        dlcore.einsum("ii->", x).backward()


@pytest.mark.parametrize("equation, shapes, message", [
    ("ij,jk->ik", [(3, 4)], "names 2 operands, got 1"),
    ("ij->ik", [(3, 4)], "output subscript 'k'"),
    ("ij,jk->ik", [(3, 4), (5, 2)], "size 4 in one operand and 5"),
    ("ijk->i", [(3, 4)], "has 2 dims but subscripts 'ijk'"),
    ("i1->i", [(3, 4)], "invalid subscript '1'"),
])
def test_einsum_bad_input_names_the_problem(equation: str, shapes: list, message: str) -> None:
    with pytest.raises((ValueError, RuntimeError), match=message):
        dlcore.einsum(equation, *[dlcore.zeros(*s) for s in shapes])


def test_einsum_double_backward() -> None:
    from dlcore.testing import gradgradcheck

    a = dlcore.randn(3, 4, dtype=dlcore.float64, requires_grad=True)
    b = dlcore.randn(4, 2, dtype=dlcore.float64, requires_grad=True)
    assert gradgradcheck(lambda x, y: dlcore.einsum("ij,jk->ik", x, y) ** 2, [a, b])

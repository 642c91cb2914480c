"""``Tensor.data`` as PyTorch's: a tensor sharing the storage, detached and outside
autograd's in-place checks; ``t.data = other`` swaps the storage; ``Tensor.array`` is the
raw NumPy/CuPy array."""

from __future__ import annotations

import numpy as np
import pytest

import dlcore
from dlcore import nn


def test_data_shares_storage_and_is_detached(device: str) -> None:
    x = dlcore.tensor([1.0, 2.0, 3.0], device=device, requires_grad=True)
    d = x.data
    assert isinstance(d, dlcore.Tensor) and not d.requires_grad and d.grad_fn is None
    assert d.array is x.array
    d[0] = 5.0  # a write through .data reaches x, with no leaf-in-place error
    assert x.tolist()[0] == 5.0


def test_the_idioms_ported_programs_use(device: str) -> None:
    dlcore.manual_seed(0)
    m = nn.Linear(200, 100).to(device)
    m.weight.data.normal_(0.0, 0.02)  # DCGAN's init
    w = m.weight.numpy()
    assert abs(w.std() - 0.02) < 0.002 and abs(w.mean()) < 0.002
    m.bias.data.fill_(0.5)
    assert np.all(m.bias.numpy() == 0.5)
    before = m.weight.numpy().copy()
    m.weight.data.add_(1.0)
    np.testing.assert_allclose(m.weight.numpy(), before + 1.0, rtol=1e-6)
    snapshot = m.weight.data.clone()
    m.weight.data.copy_(dlcore.zeros(100, 200, device=device))
    assert np.all(m.weight.numpy() == 0) and np.all(snapshot.numpy() == before + 1.0)
    assert m.weight.requires_grad and m.weight.is_leaf  # still a trainable parameter


def test_writes_through_data_are_invisible_to_autograd(device: str) -> None:
    # PyTorch's documented hazard: .data writes skip the version check (detach() is the
    # safe way); the backward runs, with the changed saved output
    x = dlcore.tensor([0.0], device=device, requires_grad=True)
    y = x.sigmoid()
    y.data.add_(1.0)
    y.sum().backward()
    assert x.grad is not None
    z = x.sigmoid()
    z.detach().add_(1.0)  # the same write through detach() is caught
    with pytest.raises(RuntimeError, match="modified by an in-place operation"):
        z.sum().backward()


def test_assigning_data_swaps_the_storage() -> None:
    p = nn.Parameter(dlcore.zeros(2, 2))
    p.data = dlcore.ones(3)
    assert p.shape == (3,) and p.tolist() == [1.0, 1.0, 1.0] and p.requires_grad
    with pytest.raises(RuntimeError, match="cannot replace the data"):
        p.data = dlcore.ones(3, dtype=dlcore.float64)
    with pytest.raises(TypeError, match="expected a Tensor"):
        p.data = np.ones(3)  # type: ignore[assignment]

"""nn.functional helpers not covered by a layer: one_hot, normalize, pad, softmax."""

from __future__ import annotations

import numpy as np
import pytest

import dlcore
import dlcore.nn.functional as F
from dlcore.testing import gradcheck


def test_one_hot(device: str) -> None:
    idx = dlcore.tensor([[0, 2], [1, 2]], device=device)
    out = F.one_hot(idx)
    assert out.dtype == np.int64 and out.shape == (2, 2, 3) and out.device.type == device
    np.testing.assert_array_equal(out.numpy(), np.eye(3, dtype=np.int64)[idx.numpy()])
    assert F.one_hot(idx, 5).shape == (2, 2, 5)
    with pytest.raises(IndexError, match="one_hot: index 2 is out of range"):
        F.one_hot(idx, 2)


def test_normalize(device: str) -> None:
    x = np.random.default_rng(0).standard_normal((3, 4))
    out = F.normalize(dlcore.tensor(x, device=device))
    np.testing.assert_allclose(out.numpy(), x / np.linalg.norm(x, axis=1, keepdims=True),
                               rtol=1e-12)
    out1 = F.normalize(dlcore.tensor(x, device=device), p=1, dim=0)
    np.testing.assert_allclose(out1.numpy(), x / np.abs(x).sum(0), rtol=1e-12)
    assert gradcheck(F.normalize, [dlcore.tensor(x, device=device, requires_grad=True)])


def test_reexported_ops(device: str) -> None:
    x = dlcore.tensor([[1.0, 2.0]], device=device)
    assert F.pad(x, (1, 1)).numpy().tolist() == [[0.0, 1.0, 2.0, 0.0]]
    np.testing.assert_allclose(F.softmax(x, dim=1).numpy().sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(F.log_softmax(x, dim=-1).numpy(),
                               np.log(F.softmax(x, -1).numpy()), rtol=1e-6)
    assert F.relu(x * -1).numpy().tolist() == [[0.0, 0.0]]

"""Embedding: lookup, gradient accumulation for repeated indices, padding_idx, errors."""

from __future__ import annotations

import numpy as np
import pytest

import dlcore
import dlcore.nn as nn
import dlcore.nn.functional as F
from dlcore.testing import gradcheck, gradgradcheck


def test_embedding_forward_and_init(device: str) -> None:
    dlcore.manual_seed(0)
    emb = nn.Embedding(1000, 16, device=device)
    w = emb.weight.numpy()
    assert abs(w.mean()) < 0.02 and abs(w.std() - 1) < 0.02  # N(0, 1), as PyTorch
    idx = np.array([[1, 5, 5], [999, 0, 2]])
    out = emb(dlcore.tensor(idx, device=device))
    assert out.shape == (2, 3, 16) and out.device.type == device
    np.testing.assert_array_equal(out.numpy(), w[idx])


def test_embedding_grad_accumulates_and_padding_gets_none(device: str) -> None:
    emb = nn.Embedding(5, 3, padding_idx=1, device=device)
    assert not emb.weight.numpy()[1].any()
    idx = dlcore.tensor([[0, 1, 0], [4, 1, 2]], device=device)
    g = np.random.default_rng(0).standard_normal((2, 3, 3)).astype(np.float32)
    emb(idx).backward(dlcore.tensor(g, device=device))
    ref = np.zeros((5, 3), np.float32)
    for (i, j), k in np.ndenumerate(idx.numpy()):
        if k != 1:
            ref[k] += g[i, j]
    np.testing.assert_allclose(emb.weight.grad.numpy(), ref, rtol=1e-6)
    assert repr(emb) == "Embedding(5, 3, padding_idx=1)"
    assert nn.Embedding(5, 3, padding_idx=-1).padding_idx == 4


def test_embedding_gradcheck(device: str) -> None:
    w = dlcore.randn(6, 2, dtype=dlcore.float64, device=device, requires_grad=True)
    idx = dlcore.tensor([[0, 3, 3], [5, 2, 0]], device=device)
    assert gradcheck(lambda w_: F.embedding(idx, w_), [w])
    # (no plain gradcheck with padding: the padding row is used but gets no gradient by design)
    assert gradgradcheck(lambda w_: F.embedding(idx, w_, padding_idx=3) ** 2, [w])


def test_embedding_errors_name_the_op() -> None:
    emb = nn.Embedding(4, 2)
    with pytest.raises(IndexError, match="embedding: index 4 is out of range"):
        emb(dlcore.tensor([0, 4]))
    with pytest.raises(IndexError, match="embedding: index -1 is out of range"):
        emb(dlcore.tensor([-1]))
    with pytest.raises(TypeError, match="embedding: indices must be an integer tensor"):
        emb(dlcore.tensor([0.0]))
    with pytest.raises(ValueError, match="padding_idx 7 must be within num_embeddings 4"):
        nn.Embedding(4, 2, padding_idx=7)

"""Dropout: inverted scaling, train/eval, reproducibility from the device generator."""

from __future__ import annotations

import numpy as np
import pytest

import dlcore
import dlcore.nn as nn
import dlcore.nn.functional as F
from dlcore.testing import gradcheck


def test_dropout_statistics_and_scaling(device: str) -> None:
    dlcore.manual_seed(0)
    x = dlcore.ones(200, 100, device=device)
    out = nn.Dropout(0.3)(x).numpy()
    zeros = (out == 0).mean()
    assert abs(zeros - 0.3) < 0.01
    np.testing.assert_allclose(out[out != 0], 1 / 0.7, rtol=1e-6)
    assert abs(out.mean() - 1.0) < 0.02  # inverted dropout keeps the expectation


def test_dropout_eval_and_p0_are_identity(device: str) -> None:
    x = dlcore.randn(4, 5, device=device)
    drop = nn.Dropout(0.5).eval()
    assert drop(x) is x
    assert F.dropout(x, 0.0, True) is x
    assert F.dropout(x, 0.5, training=False) is x
    assert not F.dropout(x, 1.0).numpy().any()


def test_dropout_reproducible_with_manual_seed_and_same_on_cpu_emu() -> None:
    outs = []
    for dev in ("cpu", "emu", "cpu"):
        dlcore.manual_seed(42)
        outs.append(F.dropout(dlcore.ones(50, device=dev), 0.5).numpy())
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])
    assert F.dropout(dlcore.ones(50), 0.5).numpy().tolist() != outs[0].tolist()


def test_dropout_gradcheck_with_fixed_mask(device: str) -> None:
    x = dlcore.randn(4, 6, dtype=dlcore.float64, device=device, requires_grad=True)

    def fn(t: dlcore.Tensor) -> dlcore.Tensor:
        dlcore.manual_seed(3)  # same mask on every evaluation
        return F.dropout(t, 0.4)

    assert gradcheck(fn, [x])
    out = fn(x)
    out.backward(dlcore.ones_like(out))
    np.testing.assert_array_equal(x.grad.numpy() != 0, out.numpy() != 0)


def test_dropout_rejects_bad_p() -> None:
    with pytest.raises(ValueError, match="between 0 and 1, but got 1.5"):
        nn.Dropout(1.5)
    with pytest.raises(ValueError, match="dropout: probability"):
        F.dropout(dlcore.ones(2), -0.1)

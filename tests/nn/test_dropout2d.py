"""dropout2d / Dropout2d: whole channels zeroed or scaled by 1/(1-p), train/eval, edge
cases p=0 and p=1, PyTorch's treatment of 3-D inputs, reproducibility and errors."""

from __future__ import annotations

import numpy as np
import pytest

import dlcore
import dlcore.nn as nn
import dlcore.nn.functional as F
from dlcore.testing import gradcheck


def test_dropout2d_zeroes_whole_channels_and_scales(device: str) -> None:
    dlcore.manual_seed(0)
    out = nn.Dropout2d(0.3)(dlcore.ones(40, 50, 3, 4, device=device)).numpy()
    per_channel = out.reshape(40, 50, -1)
    zero = (per_channel == 0).all(axis=2)
    kept = np.isclose(per_channel, 1 / 0.7, rtol=1e-6).all(axis=2)
    assert (zero | kept).all()  # every channel is entirely dropped or entirely scaled
    assert abs(zero.mean() - 0.3) < 0.03
    assert abs(out.mean() - 1.0) < 0.05


def test_dropout2d_3d_input_is_channelwise_over_dim1_with_warning(device: str) -> None:
    dlcore.manual_seed(1)
    with pytest.warns(UserWarning, match="dropout2d: Received a 3D input"):
        out = F.dropout2d(dlcore.ones(30, 20, 5, device=device), 0.5).numpy()
    assert ((out == 0).all(axis=2) | (out == 2.0).all(axis=2)).all()
    assert 0 < (out == 0).mean() < 1


def test_dropout2d_eval_p0_and_p1(device: str) -> None:
    x = dlcore.randn(2, 3, 4, 4, device=device)
    assert nn.Dropout2d(0.5).eval()(x) is x
    assert F.dropout2d(x, 0.5, training=False) is x
    assert F.dropout2d(x, 0.0) is x
    dropped = F.dropout2d(x, 1.0)
    assert dropped.shape == x.shape and not dropped.numpy().any()


def test_dropout2d_gradient_is_the_mask(device: str) -> None:
    dlcore.manual_seed(2)
    x = dlcore.randn(3, 4, 2, 2, device=device, dtype=dlcore.float64, requires_grad=True)
    out = F.dropout2d(x, 0.5)
    out.sum().backward()
    mask = (out.detach().numpy() != 0) * 2.0
    np.testing.assert_allclose(x.grad.numpy(), mask)

    def fixed_mask(t: dlcore.Tensor) -> dlcore.Tensor:
        dlcore.manual_seed(3)
        return F.dropout2d(t, 0.4)
    assert gradcheck(fixed_mask, [x])


def test_dropout2d_reproducible_and_same_on_cpu_emu() -> None:
    outs = []
    for dev in ("cpu", "emu"):
        dlcore.manual_seed(7)
        outs.append(F.dropout2d(dlcore.ones(4, 8, 2, 2, device=dev), 0.5).numpy())
    np.testing.assert_array_equal(outs[0], outs[1])


def test_dropout2d_errors_and_repr() -> None:
    with pytest.raises(ValueError, match="dropout2d: dropout probability has to be between"):
        F.dropout2d(dlcore.ones(1, 2, 2, 2), 1.5)
    with pytest.raises(ValueError, match="Dropout2d: probability"):
        nn.Dropout2d(-0.1)
    with pytest.warns(UserWarning, match="Received a 1-D input"), \
            pytest.raises(RuntimeError, match="dropout2d: feature dropout requires at least 2"):
        F.dropout2d(dlcore.ones(3), 0.5)
    with pytest.raises(TypeError, match="dropout2d: expected a floating point tensor"):
        F.dropout2d(dlcore.ones(1, 2, 2, 2, dtype=dlcore.int64), 0.5)
    assert repr(nn.Dropout2d(0.2)) == "Dropout2d(p=0.2, inplace=False)"
    assert not isinstance(nn.Dropout2d(), nn.Dropout)

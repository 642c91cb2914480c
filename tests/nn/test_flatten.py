"""Flatten and Unflatten."""

from __future__ import annotations

import numpy as np
import pytest

import dlcore
import dlcore.nn as nn


def test_flatten_unflatten_round_trip(device: str) -> None:
    x = dlcore.arange(120, device=device).reshape(2, 3, 4, 5)
    flat = nn.Flatten()(x)
    assert flat.shape == (2, 60)
    np.testing.assert_array_equal(flat.numpy(), x.numpy().reshape(2, 60))
    assert nn.Flatten(0, 2)(x).shape == (24, 5)
    back = nn.Unflatten(1, (3, 4, 5))(flat)
    np.testing.assert_array_equal(back.numpy(), x.numpy())
    assert nn.Unflatten(-1, (-1, 5))(flat).shape == (2, 12, 5)
    with pytest.raises(RuntimeError, match=r"unflatten: cannot split dim 1 of input shape "
                                           r"\(2, 60\) into \(7, 8\)"):
        nn.Unflatten(1, (7, 8))(flat)
    assert repr(nn.Flatten()) == "Flatten(start_dim=1, end_dim=-1)"
    assert repr(nn.Unflatten(1, (3, 4))) == "Unflatten(dim=1, unflattened_size=(3, 4))"

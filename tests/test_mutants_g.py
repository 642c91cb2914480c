"""Behaviour pinned down for mutation-testing survivors of the second sample (seed 2) that
the other files leave: mixing tensors with NumPy arrays, and backward's error for an output
that does not require grad."""

from __future__ import annotations

import numpy as np
import pytest

import dlcore


def test_tensor_with_a_numpy_array_operand_on_either_side() -> None:
    """A non-scalar NumPy operand becomes a tensor like the other one and broadcasts (both
    orders), as NumPy would compute it."""
    x = dlcore.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    a = np.array([0.5, -1.0, 2.0])
    np.testing.assert_array_equal((x + a).numpy(), x.numpy() + a)
    np.testing.assert_array_equal((x * a).numpy(), x.numpy() * a)
    np.testing.assert_array_equal(dlcore.sub(a, x).numpy(), a - x.numpy())
    np.testing.assert_array_equal(dlcore.div(a, x).numpy(), a / x.numpy())


def test_backward_of_an_output_that_does_not_require_grad_names_its_shape() -> None:
    y = dlcore.ones(2, 3)
    with pytest.raises(RuntimeError, match=r"^backward: element of shape \(2, 3\) does not "
                                           r"require grad"):
        y.backward(dlcore.ones(2, 3))

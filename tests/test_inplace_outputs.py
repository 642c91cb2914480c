"""In-place changes of a tensor that autograd kept as an op's *output* are caught at backward,
as changes of saved inputs are (PyTorch's version counters). Before this was guarded,
``y = x.sigmoid(); y.add_(1); y.sum().backward()`` silently gave x.grad = -0.75 (true 0.25)."""

from __future__ import annotations

import numpy as np
import pytest
from op_check import check, on, rand

import dlcore
import dlcore.nn.functional as F
from dlcore.ops.rnn import rnn_layer

# ops whose backward reads their own output
OUTPUT_SAVERS = {
    "sigmoid": lambda x: x.sigmoid(),
    "exp": lambda x: x.exp(),
    "tanh": lambda x: x.tanh(),
    "sqrt": lambda x: x.abs().add(0.5).sqrt(),
    "softmax": lambda x: x.softmax(-1),
    "log_softmax": lambda x: x.log_softmax(-1),
    "logsumexp": lambda x: x.logsumexp(-1),
    "prod": lambda x: x.prod(-1),
    "rpow": lambda x: 2.0 ** x,
}
MUTATIONS = {
    "add_": lambda y: y.add_(1.0),
    "mul_": lambda y: y.mul_(2.0),
    "setitem": lambda y: y.__setitem__(0, 5.0),
    "through a view": lambda y: y.reshape(-1).add_(1.0),
    "through detach": lambda y: y.detach().mul_(3.0),
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
@pytest.mark.parametrize("op", list(OUTPUT_SAVERS))
def test_inplace_change_of_saved_output_raises(device: str, op: str, mutation: str) -> None:
    x = on(device, rand(2, 3, seed=1), requires_grad=True)
    y = OUTPUT_SAVERS[op](x)
    MUTATIONS[mutation](y)
    with pytest.raises(RuntimeError, match="modified by an in-place operation"):
        y.sum().backward()


def test_issue_example_raises_instead_of_wrong_gradient(device: str) -> None:
    x = on(device, np.zeros(1), requires_grad=True)
    y = x.sigmoid()
    y.add_(1)
    with pytest.raises(RuntimeError, match="Sigmoid.*output 0"):
        y.sum().backward()
    assert x.grad is None  # nothing was accumulated


def test_unmodified_output_and_clone_still_differentiate(device: str) -> None:
    x0 = rand(4, seed=2)
    x = on(device, x0, requires_grad=True)
    y = x.sigmoid()
    z = y.clone()
    z.add_(1)  # a copy: the sigmoid's output is untouched
    (z * z).sum().backward()
    s = 1 / (1 + np.exp(-x0))
    check(x.grad, 2 * (s + 1) * s * (1 - s))


def test_output_changed_after_a_consumer_used_it_raises(device: str) -> None:
    """y's consumer (a Mul) saved y too; PyTorch raises for the sigmoid's own saved output."""
    x = on(device, rand(3, seed=3), requires_grad=True)
    y = x.sigmoid()
    z = y * 2.0
    y.mul_(0.5)
    with pytest.raises(RuntimeError, match="Sigmoid"):
        z.sum().backward()


def test_inplace_on_a_pure_output_is_fine(device: str) -> None:
    """Ops that do not keep their output (here a sum of products) may have it changed."""
    x0 = rand(3, seed=4)
    x = on(device, x0, requires_grad=True)
    y = x * 3.0
    y.add_(1.0)
    y.sum().backward()
    check(x.grad, np.full(3, 3.0))


def test_rnn_layer_output_changed_in_place_raises(device: str) -> None:
    """The plain RNN's backward reads its output y (tanh' = 1 - y^2)."""
    T, N, I, H = 4, 2, 3, 5
    x = on(device, rand(T, N, I, seed=5), requires_grad=True)
    h0 = on(device, np.zeros((N, H)))
    w_ih = on(device, rand(H, I, seed=6) * 0.3, requires_grad=True)
    w_hh = on(device, rand(H, H, seed=7) * 0.3, requires_grad=True)
    y, h_n = rnn_layer(x, h0, None, w_ih, w_hh, None, None, "rnn_tanh")
    y.mul_(2.0)
    with pytest.raises(RuntimeError, match="RNNLayerFunction"):
        y.sum().backward()


def test_softmax_from_functional_guarded(device: str) -> None:
    x = on(device, rand(2, 4, seed=8), requires_grad=True)
    p = F.softmax(x, dim=1)
    p[:, 0] = 0.0
    with pytest.raises(RuntimeError, match="Softmax"):
        (p * dlcore.arange(4.0, device=device, dtype=p.dtype)).sum().backward()

"""Behaviour no test checked before (found by mutation testing: each of these mutants
survived the suite). Expected values are PyTorch 2.13's, written out."""

from __future__ import annotations

import numpy as np
import pytest
from op_check import check, on

import dlcore
import dlcore.nn as nn
from dlcore.data import DataLoader, IterableDataset
from dlcore.ops import conv_cpu


def test_two_backwards_accumulate_into_a_leaf_grad_that_owns_its_array(device: str) -> None:
    """A leaf's .grad must not share the incoming gradient's array: a second backward adds
    in place, which failed with 'output array is read-only' (or corrupted another tensor)."""
    x = on(device, np.array([1.0, 2.0]), requires_grad=True)
    for _ in range(2):
        (x * 1.0).sum().backward()
    check(x.grad, np.array([2.0, 2.0]))
    y = on(device, np.array([3.0]), requires_grad=True)
    z = on(device, np.array([4.0]), requires_grad=True)
    s = y + z  # one gradient Tensor flows to both leaves
    s.sum().backward()
    y.grad.array[...] += 1.0
    check(z.grad, np.array([1.0]))


def test_gradients_of_a_multi_output_node_are_summed(device: str) -> None:
    x = on(device, np.array([[1.0, 5.0], [3.0, 2.0]]), requires_grad=True)
    v, i = x.max(0)
    (v * v).sum().backward()
    check(x.grad, np.array([[0.0, 10.0], [6.0, 0.0]]))
    x.grad = None
    a, b = x.split(1, dim=0)  # two outputs of one node used together
    (a * 2 + b * 3 + a * b).sum().backward()
    check(x.grad, np.array([[5.0, 4.0], [4.0, 8.0]]))  # 2 + b, 3 + a


def test_backward_with_create_graph_then_a_second_backward(device: str) -> None:
    x = on(device, np.array([3.0]), requires_grad=True)
    (x ** 3).sum().backward(create_graph=True)
    g = x.grad
    assert g.requires_grad
    check(g, np.array([27.0]))
    x.grad = None
    g.sum().backward()
    check(x.grad, np.array([18.0]))  # d/dx 3x^2 = 6x


def test_clamp_gradient_at_the_bounds_is_one(device: str) -> None:
    x = on(device, np.array([0.0, 1.0, 0.5, -1.0, 2.0]), requires_grad=True)
    x.clamp(0.0, 1.0).sum().backward()
    check(x.grad, np.array([1.0, 1.0, 1.0, 0.0, 0.0]))


def test_minimum_and_maximum_split_the_gradient_on_ties(device: str) -> None:
    a = on(device, np.array([1.0, 2.0]), requires_grad=True)
    b = on(device, np.array([1.0, 3.0]), requires_grad=True)
    dlcore.minimum(a, b).sum().backward()
    check(a.grad, np.array([0.5, 1.0]))
    check(b.grad, np.array([0.5, 0.0]))
    a.grad = b.grad = None
    dlcore.maximum(a, b).sum().backward()
    check(a.grad, np.array([0.5, 0.0]))
    check(b.grad, np.array([0.5, 1.0]))


def test_logsumexp_of_an_all_minus_infinity_row_is_minus_infinity(device: str) -> None:
    x = on(device, np.array([[-np.inf, -np.inf], [0.0, 1.0]]))
    with np.errstate(invalid="ignore"):
        out = x.logsumexp(1).numpy()
    assert out[0] == -np.inf and out[1] == pytest.approx(np.log(1 + np.e))


def test_conv_weight_gradient_over_several_column_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU path splits a batch whose column matrix exceeds COL_BYTES; the weight gradient
    must sum every chunk (a chunk-size mutant survived: no test used more than one)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 6, 6))
    w = rng.standard_normal((4, 3, 3, 3))
    want = []
    for chunked in (False, True):
        if chunked:  # about one sample per chunk
            monkeypatch.setattr(conv_cpu, "COL_BYTES", 4 * 4 * 27 * 3 * 8)
            monkeypatch.setattr(conv_cpu, "MIN_CHUNK_ROWS", 1)
        xt, wt = dlcore.tensor(x, requires_grad=True), dlcore.tensor(w, requires_grad=True)
        (dlcore.nn.functional.conv2d(xt, wt) ** 2).sum().backward()
        want.append((wt.grad.numpy(), xt.grad.numpy()))
    np.testing.assert_allclose(want[1][0], want[0][0], rtol=1e-12)
    np.testing.assert_allclose(want[1][1], want[0][1], rtol=1e-12)
    assert len(conv_cpu._chunks(5, 4 * 4, 27 * 8)) > 1


def test_adam_bias_correction_counts_the_steps_a_parameter_had() -> None:
    """p2 gets gradients only from the third step on: its first update must use the
    step-1 bias correction (PyTorch 2.13: p1 [0.6, 2.4], p2 [2.8] after 4 steps)."""
    p1, p2 = nn.Parameter(dlcore.tensor([1.0, 2.0])), nn.Parameter(dlcore.tensor([3.0]))
    opt = dlcore.optim.Adam([p1, p2], lr=0.1)
    for step in range(4):
        opt.zero_grad()
        p1.grad = dlcore.tensor([0.5, -1.0])
        if step >= 2:
            p2.grad = dlcore.tensor([2.0])
        opt.step()
    np.testing.assert_allclose(p1.numpy(), [0.6, 2.4], rtol=1e-6)
    np.testing.assert_allclose(p2.numpy(), [2.8], rtol=1e-6)


def test_reduce_lr_on_plateau_max_mode_absolute_threshold() -> None:
    """PyTorch 2.13 gives this lr sequence for these metrics."""
    p = nn.Parameter(dlcore.zeros(1))
    opt = dlcore.optim.SGD([p], lr=1.0)
    sched = dlcore.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="max", threshold=0.5, threshold_mode="abs", patience=1, factor=0.5)
    lrs = []
    for metric in [1.0, 1.2, 1.4, 2.0, 2.1, 2.2, 2.3, 3.0]:
        sched.step(metric)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == [1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25]


class _Count(IterableDataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(dlcore.tensor(float(i)) for i in range(self.n))

    def __len__(self) -> int:
        return self.n


@pytest.mark.parametrize("workers", [0, 2])
def test_iterable_dataset_drop_last_drops_the_short_batch(workers: int) -> None:
    loader = DataLoader(_Count(10), batch_size=4, drop_last=True, num_workers=workers)
    batches = [b.tolist() for b in loader]
    assert batches == [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]]
    assert len(loader) == len(batches)

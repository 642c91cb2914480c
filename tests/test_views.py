"""Views share memory with their base, and writes through them reach the base and its
autograd history (PyTorch's view semantics). Before: ``x.t().view(6)`` copied silently,
``b[0:2].mul_(3)`` left ``b``'s graph unaware of the write (a wrong gradient), ``b[0]`` was
a copy, and ``flip`` a view that let writes change its input behind autograd's back."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from op_check import check, on, rand

import dlcore
from dlcore.ops.shape import Slice, SliceBackward


def test_view_of_non_contiguous_raises_and_reshape_copies(device: str) -> None:
    x = on(device, np.arange(6.0).reshape(2, 3))
    with pytest.raises(RuntimeError, match=r"view: size \(6,\) is not compatible with the "
                                           r"input's size and stride"):
        x.t().view(6)
    y = x.t().reshape(6)  # a copy: writing it leaves x alone, as in PyTorch
    y[0] = 100.0
    check(x, np.arange(6.0).reshape(2, 3))


def test_views_share_memory_both_ways(device: str) -> None:
    x = on(device, np.arange(6.0).reshape(2, 3))
    x.view(3, 2)[0, 0] = -1.0
    x.t()[2].add_(10.0)
    x[1][2].fill_(7.0)  # an int index gives a 0-d view, not a copy
    x.reshape(6)[1:3].mul_(2.0)
    check(x, np.array([[-1.0, 2.0, 24.0], [3.0, 4.0, 7.0]]))


def test_flip_is_a_copy(device: str) -> None:
    x = on(device, np.arange(4.0))
    y = x.flip(0)
    y[0] = 9.0
    check(x, np.arange(4.0))


def test_write_through_view_reaches_the_base_gradient(device: str) -> None:
    """d/da sum(b) with b = 2a and b[0:2] *= 3 is [6, 6, 2] (it was [2, 2, 2])."""
    a = on(device, np.array([1.0, 2.0, 3.0]), requires_grad=True)
    b = a * 2.0
    b[0:2].mul_(3.0)
    b.sum().backward()
    check(a.grad, np.array([6.0, 6.0, 2.0]))
    check(b, np.array([6.0, 12.0, 6.0]))


def test_sibling_views_follow_a_write(device: str) -> None:
    a = on(device, np.array([1.0, 2.0, 3.0]), requires_grad=True)
    b = a * 2.0
    early = b[0:2]  # made before the write through another view
    b[0].mul_(3.0)
    early.sum().backward()
    check(a.grad, np.array([6.0, 2.0, 0.0]))
    check(early, np.array([6.0, 4.0]))


def test_views_follow_an_in_place_change_of_the_base(device: str) -> None:
    a = on(device, np.array([1.0, 2.0]), requires_grad=True)
    b = a * 1.0
    v = b[1:]
    b.mul_(a)  # b = a * a
    v.sum().backward()
    check(a.grad, np.array([0.0, 4.0]))


def test_copy_of_a_grad_tensor_into_a_constant_buffer(device: str) -> None:
    x = on(device, np.array([1.0, 2.0]), requires_grad=True)
    buf = on(device, np.zeros(3))
    buf[0:2].copy_(x * 5.0)
    assert buf.requires_grad
    (buf * buf).sum().backward()
    check(x.grad, np.array([50.0, 100.0]))


def test_in_place_on_a_view_of_a_leaf_that_requires_grad_raises(device: str) -> None:
    w = on(device, np.ones(3), requires_grad=True)
    with pytest.raises(RuntimeError, match="a view of a leaf tensor that requires grad"):
        w[0].mul_(2.0)
    with dlcore.no_grad():
        w[0].mul_(2.0)  # what initialisers and optimizers do
    check(w, np.array([2.0, 1.0, 1.0]))


def test_in_place_on_an_expanded_tensor_raises_clearly(device: str) -> None:
    e = on(device, np.ones(3)).expand(2, 3)
    with pytest.raises(RuntimeError, match="add_: in-place write into an expanded tensor"):
        e.add_(1.0)
    with pytest.raises(RuntimeError, match="in-place write into an expanded tensor"):
        e[0].fill_(0.0)


# ---- property: in-place writes through views, then backward, against a copy-based program --

def _index(draw: st.DrawFn, shape: tuple[int, ...]) -> tuple:
    items: list = []
    for size in shape:
        if draw(st.booleans()):
            items.append(draw(st.integers(0, size - 1)))
        else:
            start = draw(st.integers(0, size - 1))
            stop = draw(st.integers(start + 1, size))
            items.append(slice(start, stop, draw(st.integers(1, 2))))
    return tuple(items)


@st.composite
def programs(draw: st.DrawFn) -> list[tuple]:
    steps = []
    for _ in range(draw(st.integers(1, 4))):
        transposed = draw(st.booleans())
        index = _index(draw, (5, 4) if transposed else (4, 5))
        op = draw(st.sampled_from(["add_", "mul_", "fill_", "copy_const", "add_tensor"]
                                  if not transposed else ["add_", "mul_", "fill_"]))
        steps.append((transposed, index, op, draw(st.floats(-2, 2, allow_nan=False))))
    return steps


def _region(transposed: bool, index: tuple) -> tuple:
    """The base-coordinate index of ``b.t()[index]`` (or of ``b[index]``)."""
    return (index[1], index[0]) if transposed else index


def _apply_copy_based(b: dlcore.Tensor, a: dlcore.Tensor, step: tuple) -> dlcore.Tensor:
    """The step out of place: b with its region replaced (no views, no in-place ops)."""
    transposed, index, op, c = step
    region = _region(transposed, index)
    old = Slice.apply(b, index=region)
    if op == "add_":
        new = old + c
    elif op == "mul_":
        new = old * c
    elif op == "fill_":
        new = old * 0.0 + c
    elif op == "copy_const":
        new = old * 0.0 + dlcore.full(tuple(old.shape), c, dtype=old.dtype)
    else:  # add_tensor
        new = old + Slice.apply(a, index=region) * c
    keep = np.ones(b.shape)
    keep[region] = 0.0
    return b * dlcore.tensor(keep) + SliceBackward.apply(new, shape=tuple(b.shape),
                                                          index=region)


def _apply_in_place(b: dlcore.Tensor, a: dlcore.Tensor, step: tuple) -> None:
    transposed, index, op, c = step
    v = (b.t() if transposed else b)[index]
    if op == "add_":
        v.add_(c)
    elif op == "mul_":
        v.mul_(c)
    elif op == "fill_":
        v.fill_(c)
    elif op == "copy_const":
        v.copy_(dlcore.full(tuple(v.shape), c, dtype=v.dtype))
    else:
        v.add_(a[index] * c)


@settings(max_examples=60, deadline=None)
@given(programs(), st.booleans())
def test_in_place_through_views_matches_copy_based_program(steps: list[tuple],
                                                           read_early_view: bool) -> None:
    a0 = rand(4, 5, seed=3)
    weights = rand(4, 5, seed=4)
    # the program under test: views and in-place writes
    a = dlcore.tensor(a0, requires_grad=True)
    b = a * 1.5
    early = b[1:3]
    for step in steps:
        _apply_in_place(b, a, step)
    loss = (b * dlcore.tensor(weights)).sum()
    if read_early_view:
        loss = loss + (early * early).sum()
    loss.backward()
    # the reference: the same values by copies only
    r = dlcore.tensor(a0, requires_grad=True)
    rb = r * 1.5
    for step in steps:
        rb = _apply_copy_based(rb, r, step)
    ref_loss = (rb * dlcore.tensor(weights)).sum()
    if read_early_view:
        ref_loss = ref_loss + (rb[1:3] * rb[1:3]).sum()
    ref_loss.backward()
    np.testing.assert_allclose(b.numpy(), rb.numpy(), rtol=1e-12)
    np.testing.assert_allclose(early.numpy(), rb.numpy()[1:3], rtol=1e-12)
    np.testing.assert_allclose(loss.item(), ref_loss.item(), rtol=1e-12)
    np.testing.assert_allclose(a.grad.numpy(), r.grad.numpy(), rtol=1e-10, atol=1e-12)

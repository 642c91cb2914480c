"""Autograd: backward options, accumulation, retain_graph, grad modes, dlcore.autograd.grad
with create_graph, deep graphs, broadcast gradients, in-place guards, device mixing."""

from __future__ import annotations

import numpy as np
import pytest
from op_check import check, gradgrad_ok, on, rand

import dlcore


def test_backward_with_gradient_argument(device):
    x = rand(2, 3, seed=1)
    t = on(device, x, requires_grad=True)
    w = rand(2, 3, seed=2)
    (t * t).backward(gradient=on(device, w))
    check(t.grad, 2 * x * w)


def test_grad_accumulates_across_backwards(device):
    x = rand(3, seed=3)
    t = on(device, x, requires_grad=True)
    (t * 3.0).sum().backward()
    (t * t).sum().backward()
    check(t.grad, 3.0 + 2 * x)


def test_second_backward_needs_retain_graph(device):
    t = on(device, rand(3, seed=4), requires_grad=True)
    y = (t.exp() * t).sum()
    y.backward(retain_graph=True)
    y.backward()  # allowed: the graph was retained
    check(t.grad, 2 * (np.exp(t.numpy()) * (1 + t.numpy())))
    z = (t.exp() * t).sum()
    z.backward()
    with pytest.raises(RuntimeError, match="second time"):
        z.backward()


def test_requires_grad_on_int_tensor_raises(device):
    with pytest.raises(RuntimeError, match="floating point"):
        on(device, np.arange(3)).requires_grad_()
    with pytest.raises(RuntimeError, match="floating point"):
        dlcore.tensor([1, 2], device=device, requires_grad=True)


def test_backward_on_non_scalar_without_gradient_raises(device):
    t = on(device, rand(3), requires_grad=True)
    with pytest.raises(RuntimeError, match=r"scalar.*\(3,\)"):
        (t * 2).backward()


def test_backward_gradient_shape_mismatch_raises(device):
    t = on(device, rand(3), requires_grad=True)
    with pytest.raises(RuntimeError, match=r"\(2,\).*\(3,\)"):
        (t * 2).backward(on(device, rand(2)))


def test_binary_shape_mismatch_names_op_and_shapes(device):
    a, b = on(device, rand(2, 3)), on(device, rand(4))
    for fn, name in [(lambda: a + b, "add|Add"), (lambda: a * b, "mul|Mul"),
                     (lambda: a - b, "sub|Sub"), (lambda: a / b, "div|Div")]:
        with pytest.raises((RuntimeError, ValueError)) as info:
            fn()
        msg = str(info.value)
        assert any(n in msg for n in name.split("|")), msg
        assert "(2, 3)" in msg and "(4,)" in msg, msg


def test_detach_shares_data_and_stops_gradients(device):
    t = on(device, rand(3, seed=5), requires_grad=True)
    d = (t * 2).detach()
    assert not d.requires_grad and d.grad_fn is None and d.is_leaf
    y = t * 2
    yd = y.detach()
    with dlcore.no_grad():
        yd.array[0] = 100.0
    assert y.numpy()[0] == 100.0
    (t * d).sum().backward()
    check(t.grad, d.numpy())


def test_no_grad_and_enable_grad_context_and_decorator(device):
    t = on(device, rand(3), requires_grad=True)
    with dlcore.no_grad():
        assert not dlcore.is_grad_enabled()
        y = t * 2
        with dlcore.enable_grad():
            z = t * 2
    assert dlcore.is_grad_enabled()
    assert not y.requires_grad and y.grad_fn is None
    assert z.requires_grad

    @dlcore.no_grad()
    def double(x):
        return x * 2

    @dlcore.enable_grad()
    def triple(x):
        return x * 3

    assert dlcore.is_grad_enabled()  # decorating does not switch the mode
    assert not double(t).requires_grad
    with dlcore.no_grad():
        assert triple(t).requires_grad
    assert dlcore.is_grad_enabled()


def test_grad_mode_restored_after_exception(device):
    with pytest.raises(ValueError):
        with dlcore.no_grad():
            raise ValueError
    assert dlcore.is_grad_enabled()


def test_autograd_grad_create_graph_second_derivative(device):
    x = rand(4, seed=6)
    t = on(device, x, requires_grad=True)
    y = (t ** 3).sum()
    (g,) = dlcore.autograd.grad(y, t, create_graph=True)
    check(g, 3 * x ** 2)
    assert t.grad is None  # grad() returns, never accumulates
    (gg,) = dlcore.autograd.grad(g.sum(), t)
    check(gg, 6 * x)
    # sin: d2/dx2 = -sin
    s = t.sin().sum()
    (g1,) = dlcore.autograd.grad(s, [t], create_graph=True)
    g1.sum().backward()
    check(t.grad, -np.sin(x))


def test_autograd_grad_unused_input(device):
    a, b = on(device, rand(2), requires_grad=True), on(device, rand(2), requires_grad=True)
    with pytest.raises(RuntimeError, match="allow_unused"):
        dlcore.autograd.grad((a * 2).sum(), [a, b])
    ga, gb = dlcore.autograd.grad((a * 2).sum(), [a, b], allow_unused=True)
    check(ga, np.full(2, 2.0))
    assert gb is None


@pytest.mark.parametrize("fn", [
    lambda a, b: (a * b).exp().sum(dim=1),
    lambda a, b: (a @ b.T).tanh().mean(),
    lambda a, b: dlcore.softmax(a * b, -1).var(dim=0),
])
def test_gradgradcheck_compositions(device, fn):
    assert gradgrad_ok(fn, [rand(2, 3, seed=7), rand(2, 3, seed=8)], device)


def test_deep_chain_has_no_recursion_limit(device):
    t = on(device, np.array(1.5), requires_grad=True)
    y = t
    for _ in range(100_000):
        y = y + 1e-6
    y.backward()
    assert t.grad.item() == 1.0
    assert abs(y.item() - 1.6) < 1e-6


def test_broadcast_operand_gradients_have_operand_shape(device):
    a = on(device, rand(2, 1, 3, seed=9), requires_grad=True)
    b = on(device, rand(4, 1, seed=10), requires_grad=True)
    (a * b).sum().backward()
    assert a.grad.shape == (2, 1, 3) and b.grad.shape == (4, 1)
    check(a.grad, np.broadcast_to(b.numpy().sum(), (2, 1, 3)))
    check(b.grad, np.full((4, 1), a.numpy().sum()))
    s = on(device, np.array(2.0), requires_grad=True)
    (s * a).sum().backward()
    assert s.grad.shape == ()
    check(s.grad, np.array(a.numpy().sum()))


def test_mixing_devices_names_both(device):
    other = "emu" if device != "emu" else "cpu"
    a, b = on(device, rand(2)), on(other, rand(2))
    for fn in (lambda: a + b, lambda: a * b, lambda: dlcore.cat([a, b]), lambda: a @ b):
        with pytest.raises(RuntimeError) as info:
            fn()
        assert device in str(info.value) and other in str(info.value)


def test_retain_grad_on_non_leaf(device):
    t = on(device, rand(3, seed=11), requires_grad=True)
    y = t * 2
    y.retain_grad()
    (y * y).sum().backward()
    check(y.grad, 2 * y.numpy())
    check(t.grad, 8 * t.numpy())


def test_shared_subexpression_gradients_add(device):
    x = rand(3, seed=12)
    t = on(device, x, requires_grad=True)
    y = t.exp()
    (y + y * y).sum().backward()
    check(t.grad, np.exp(x) + 2 * np.exp(2 * x))


# ---- in-place ops and their guards -----------------------------------------------------
def test_inplace_ops_forward(device):
    x = rand(2, 3, seed=13)
    t = on(device, x.copy())
    t.add_(on(device, np.ones(3)))
    check(t, x + 1)
    t.mul_(2.0)
    check(t, (x + 1) * 2)
    t.add_(1.0, alpha=3)
    check(t, (x + 1) * 2 + 3)
    t += 1
    check(t, (x + 1) * 2 + 4)
    t.copy_(on(device, np.arange(3.0)))  # broadcast
    check(t, np.broadcast_to(np.arange(3.0), (2, 3)))
    t.fill_(4.5)
    check(t, np.full((2, 3), 4.5))
    t.zero_()
    check(t, np.zeros((2, 3)))
    i = on(device, np.arange(3))
    i.copy_(on(device, np.array([1.7, 2.2, -3.9])))  # casts like a copy into int storage
    check(i, np.array([1, 2, -3]))


def test_inplace_keeps_identity_and_storage(device):
    t = on(device, rand(3))
    data = t.array
    assert t.mul_(2.0) is t and t.array is data


def test_inplace_on_leaf_requiring_grad_raises(device):
    t = on(device, rand(3), requires_grad=True)
    for fn in (lambda: t.add_(1.0), lambda: t.mul_(2.0), lambda: t.zero_(),
               lambda: t.fill_(1.0), lambda: t.copy_(on(device, rand(3)))):
        with pytest.raises(RuntimeError, match="leaf"):
            fn()
    with pytest.raises(RuntimeError, match="leaf"):
        t[0] = 1.0


def test_inplace_under_no_grad_works_on_leaf(device):
    x = rand(3, seed=14)
    t = on(device, x, requires_grad=True)
    with dlcore.no_grad():
        t.mul_(2.0)
        t.add_(1.0)
        t[0] = -1.0
    expected = 2 * x + 1
    expected[0] = -1.0
    check(t, expected)
    assert t.requires_grad and t.is_leaf
    (t * t).sum().backward()
    check(t.grad, 2 * expected)


@pytest.mark.parametrize("op", ["add_", "mul_", "zero_", "fill_", "copy_", "setitem"])
def test_inplace_on_saved_tensor_raises_at_backward(device, op):
    a = on(device, rand(3, seed=15), requires_grad=True)
    h = a * 1.0  # non-leaf
    y = (h * h).sum()  # Mul saves h
    {"add_": lambda: h.add_(1.0), "mul_": lambda: h.mul_(2.0), "zero_": lambda: h.zero_(),
     "fill_": lambda: h.fill_(3.0), "copy_": lambda: h.copy_(on(device, rand(3))),
     "setitem": lambda: h.__setitem__(0, 5.0)}[op]()
    with pytest.raises(RuntimeError, match="in-place"):
        y.backward()


def test_inplace_on_non_leaf_is_differentiated(device):
    x = rand(3, seed=16)
    a = on(device, x, requires_grad=True)
    h = a * 2.0
    h.mul_(a)   # h = 2a * a
    h.add_(a)   # h = 2a^2 + a
    h.sum().backward()
    check(a.grad, 4 * x + 1)
    check(h, 2 * x * x + x)


@pytest.mark.parametrize("op", ["zero_", "fill_", "copy_"])
def test_overwriting_a_non_leaf_keeps_it_in_the_graph(device, op):
    """PyTorch's zero_/fill_/copy_ are differentiable in-place ops: the tensor still requires
    grad, and its earlier history gets a zero gradient (dlcore used to make it a constant,
    so h.sum().backward() raised and h * a lost the path through h)."""
    x = rand(3, seed=17)
    a = on(device, x, requires_grad=True)
    h = a * 2.0
    value = {"zero_": 0.0, "fill_": 3.0, "copy_": 5.0}[op]
    {"zero_": lambda: h.zero_(), "fill_": lambda: h.fill_(3.0),
     "copy_": lambda: h.copy_(on(device, np.full(3, 5.0)))}[op]()
    assert h.requires_grad and not h.is_leaf
    check(h, np.full(3, value))
    (h * a).sum().backward()  # d/da (c * a) = c: nothing flows through the overwritten h
    check(a.grad, np.full(3, value))
    a.grad = None
    h2 = a * 2.0
    getattr(h2, op)(*(() if op == "zero_" else (3.0,) if op == "fill_"
                      else (on(device, np.ones(3)),)))
    h2.sum().backward()
    check(a.grad, np.zeros(3))

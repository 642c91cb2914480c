"""Behaviour pinned down for survivors of mutation sample 4 (letter q: loss argument checks,
norm double-backward, device moves in autograd, optimizer argument checks, state loading
and the lr schedulers' closed forms): each test checks something no test of the suite
checked before, against NumPy, PyTorch's documented semantics or values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

import dlcore
import dlcore.nn.functional as F
from dlcore.device import Device
from dlcore.ops import optim as optim_ops
from dlcore.optim.lr_scheduler import ExponentialLR, OneCycleLR

EMU = Device("emu")


def _param() -> dlcore.Tensor:
    return dlcore.tensor([1.0, 2.0], requires_grad=True)


# ---- loss ---------------------------------------------------------------------------------


def test_cross_entropy_probability_target_of_the_wrong_shape_names_both_shapes() -> None:
    """A float (probability) target whose shape differs from the input's is a ValueError
    naming the input's shape (2, 3) and the target's (2, 4)."""
    x = dlcore.zeros(2, 3)
    with pytest.raises(ValueError, match=r"\(2, 3\), got \(2, 4\)"):
        F.cross_entropy(x, dlcore.zeros(2, 4))


def test_cross_entropy_target_equal_to_the_class_count_is_out_of_bounds() -> None:
    """With 3 classes the valid indices are 0..2: target 3 is an IndexError, as in torch."""
    x = dlcore.zeros(2, 3)
    with pytest.raises(IndexError, match="target 3 is out of bounds for 3 classes"):
        F.cross_entropy(x, dlcore.tensor([0, 3]))


def test_deprecated_size_average_warns_with_a_message_naming_reduction() -> None:
    """size_average/reduce still work but warn that they are deprecated for reduction."""
    x, t = dlcore.tensor([1.0, 2.0]), dlcore.tensor([0.0, 0.0])
    with pytest.warns(UserWarning, match="size_average and reduce are deprecated"):
        got = F.mse_loss(x, t, size_average=False)
    assert float(got.item()) == pytest.approx(5.0)  # sum: 1 + 4


def test_nll_loss_with_a_non_tensor_target_names_the_target_type() -> None:
    """A list target is a TypeError saying it got a list."""
    x = dlcore.zeros(2, 3)
    with pytest.raises(TypeError, match="target must be a Tensor, got list"):
        F.nll_loss(x, [0, 1])


# ---- norm double backward -----------------------------------------------------------------


def test_layer_norm_grad_with_create_graph_matches_the_closed_form() -> None:
    """d/dx of sum(g * layer_norm(x)) with create_graph=True (the graph-building backward)
    is invstd * (g - mean(g) - xhat * mean(g * xhat)), xhat = (x - mean) * invstd, the
    textbook layer-norm gradient, computed here in float64 NumPy."""
    xa = np.array([[0.5, -1.0, 2.0, 0.25], [3.0, 1.0, -2.0, 0.0]], np.float32)
    ga = np.array([[1.0, 0.5, -0.5, 2.0], [-1.0, 0.25, 1.5, 0.75]], np.float32)
    x = dlcore.tensor(xa, requires_grad=True)
    y = F.layer_norm(x, (4,), eps=1e-5)
    (gx,) = dlcore.autograd.grad(y, x, dlcore.tensor(ga), create_graph=True)
    x64, g64 = xa.astype(np.float64), ga.astype(np.float64)
    xc = x64 - x64.mean(1, keepdims=True)
    invstd = 1 / np.sqrt((xc * xc).mean(1, keepdims=True) + 1e-5)
    xhat = xc * invstd
    want = invstd * (g64 - g64.mean(1, keepdims=True)
                     - xhat * (g64 * xhat).mean(1, keepdims=True))
    np.testing.assert_allclose(gx.numpy(), want, rtol=1e-4, atol=1e-5)


# ---- device moves -------------------------------------------------------------------------


def test_grad_through_a_device_move_lands_on_the_source_device() -> None:
    """x on cpu moved to emu: the gradient flows back to x on cpu (ones, x's shape)."""
    x = dlcore.tensor([1.0, 2.0, 3.0], requires_grad=True)
    (x.to(EMU) * 2).sum().backward()
    assert x.grad is not None
    assert x.grad.device is x.device
    np.testing.assert_array_equal(x.grad.numpy(), np.full(3, 2.0, np.float32))


# ---- device step self-check ----------------------------------------------------------------


def test_device_step_check_reports_both_rules_and_the_unscale() -> None:
    """The capturable-step self-check returns Adam's and Adagrad's param and step count
    and the unscaled gradient; two of the three steps count (the middle one found inf)."""
    out = optim_ops._check_device_steps(Device("cpu"))
    assert set(out) == {"adam_step param", "adam_step steps", "adagrad_step param",
                        "adagrad_step steps", "unscale by 1 / 3"}
    np.testing.assert_array_equal(out["adam_step steps"], np.full(3, 2.0, np.float32))


# ---- optimizer argument checks and state -------------------------------------------------


def test_adadelta_negative_lr_message() -> None:
    with pytest.raises(ValueError, match="Invalid learning rate: -1"):
        dlcore.optim.Adadelta([_param()], lr=-1.0)


def test_rmsprop_negative_eps_message() -> None:
    with pytest.raises(ValueError, match="Invalid epsilon value: -1"):
        dlcore.optim.RMSprop([_param()], eps=-1.0)


def test_load_state_dict_with_a_wrongly_sized_state_names_the_parameter_shape() -> None:
    """Loading an SGD momentum buffer of 3 elements for a (2,) parameter is a ValueError
    naming the parameter's shape and its 2 elements."""
    p = _param()
    opt = dlcore.optim.SGD([p], lr=0.1, momentum=0.9)
    p.grad = dlcore.tensor([1.0, 1.0])
    opt.step()
    sd = opt.state_dict()
    sd["state"][0]["momentum_buffer"] = dlcore.tensor([1.0, 2.0, 3.0])
    opt2 = dlcore.optim.SGD([_param()], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"has 3 elements, its parameter \(2,\) has 2"):
        opt2.load_state_dict(sd)


# ---- lr schedulers --------------------------------------------------------------------------


def test_exponential_lr_step_to_an_epoch_uses_the_closed_form() -> None:
    """step(epoch=3) sets lr = base * gamma^3 = 1.0 * 0.5^3 = 0.125 (torch's closed form)."""
    opt = dlcore.optim.SGD([_param()], lr=1.0)
    sched = ExponentialLR(opt, gamma=0.5)
    sched.step(3)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.125)


def test_one_cycle_base_momentum_list_of_the_wrong_length_names_base_momentum() -> None:
    opt = dlcore.optim.SGD([_param()], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="for base_momentum, got 2"):
        OneCycleLR(opt, max_lr=1.0, total_steps=10, base_momentum=[0.8, 0.85])


def test_one_cycle_starts_at_max_momentum() -> None:
    """At step 0 OneCycleLR's momentum is max_momentum (0.95), as in torch."""
    opt = dlcore.optim.SGD([_param()], lr=0.1, momentum=0.9)
    OneCycleLR(opt, max_lr=1.0, total_steps=10, max_momentum=0.95)
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.95)

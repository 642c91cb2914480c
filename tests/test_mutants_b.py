"""Tests written for mutmut survivors (autograd, ops, optim): behaviour no test pinned down
before, each checked against an independent reference (NumPy, values derived by hand,
float64 gradient checks, PyTorch 2.13's results written out)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import dlcore
import dlcore.nn.functional as F
from dlcore import autograd, optim
from dlcore.device import Device
from dlcore.nn.parameter import Parameter
from dlcore.ops import optim as optim_ops
from dlcore.ops.optim import ALIGNED16, OPTIM
from dlcore.ops.rnn import RNN_CELL
from dlcore.testing import gradcheck

CPU, EMU = Device("cpu"), Device("emu")


# ---- dlcore check cases --------------------------------------------------------------------

def test_unscale_check_case_scales_317_seeded_values_and_flags_the_bad_ones() -> None:
    """The "unscale grads" check case works on 317-element buffers (no multiple of a block
    size or vector width) of seed-20 normals times 1024, scaled back exactly by 1/1024; the
    second buffer has an inf at 5 and a NaN at 300, which its mask and found_inf report."""
    out = OPTIM.checks["unscale grads"](CPU)
    want = np.random.default_rng(20).standard_normal(317).astype(np.float32)
    np.testing.assert_array_equal(out["clean grad"], want)
    np.testing.assert_array_equal(out["clean non-finite mask"], np.zeros(317, np.float32))
    np.testing.assert_array_equal(out["clean found_inf"], [0])
    bad = want.copy()
    bad[[5, 300]] = 0
    np.testing.assert_array_equal(out["with inf and nan grad"], bad)
    mask = np.zeros(317, np.float32)
    mask[[5, 300]] = 1
    np.testing.assert_array_equal(out["with inf and nan non-finite mask"], mask)
    np.testing.assert_array_equal(out["with inf and nan found_inf"], [1])


def test_unscale_check_case_runs_the_16_byte_kernel_path(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """The "unscale grads" check case gives the kernels ALIGNED16 for its (aligned) buffers,
    so `dlcore check` exercises their 16-byte accesses and scalar tail."""
    seen = []
    real = optim_ops.unscale_grads

    def spy(device, grad, inv_scale, found_inf, flags=0):  # noqa: ANN001, ANN202
        seen.append(flags)
        return real(device, grad, inv_scale, found_inf, flags)

    monkeypatch.setattr(optim_ops, "unscale_grads", spy)
    OPTIM.checks["unscale grads"](EMU)
    assert seen == [ALIGNED16, ALIGNED16]


@pytest.mark.parametrize(("case", "lengths"), [("lstm cell, lengths", [6, 3, 1]),
                                                ("gru cell, reverse, lengths", [2, 6, 4])])
def test_rnn_length_check_cases_run_with_their_lengths(case: str, lengths: list[int]) -> None:
    """The recurrent check cases with lengths run packed sequences: the steps past each
    sequence's length reach nothing, so their input gradient is exactly zero (and the
    others' is not)."""
    grad = RNN_CELL.checks[case](CPU)["grad input"]  # (T, N, I)
    for n, length in enumerate(lengths):
        assert np.all(grad[length:, n] == 0), (n, length)
        assert np.all(np.abs(grad[:length, n]).sum(axis=-1) > 0), (n, length)


# ---- ordering, reductions, shapes ----------------------------------------------------------

@pytest.mark.parametrize("op", ["sort", "argsort"])
def test_sort_and_argsort_name_themselves_for_a_bad_dim(op: str) -> None:
    """sort/argsort with an out-of-range dim: an IndexError naming the op, the dim and the
    tensor's number of dims."""
    x = dlcore.tensor([[3.0, 1.0], [2.0, 4.0]])
    with pytest.raises(IndexError, match=rf"^{op}: dim 2 is out of range for a tensor with 2 "
                                         "dims"):
        getattr(dlcore, op)(x, dim=2)


def test_amin_names_itself_for_a_bad_dim() -> None:
    """amin with an out-of-range dim: an IndexError that names amin, the dim and the ndim."""
    x = dlcore.tensor([[3.0, 1.0], [2.0, 4.0]])
    with pytest.raises(IndexError, match=r"^amin: dim -3 is out of range for a tensor with 2 "
                                         "dims"):
        dlcore.amin(x, dim=-3)


def test_adaptive_max_pool2d_names_itself_for_a_bad_output_size() -> None:
    """adaptive_max_pool2d with a non-positive output_size: a ValueError naming the op."""
    x = dlcore.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match=r"^adaptive_max_pool2d: output_size must be positive "
                                         r"ints \(or None\), got \(0, 2\)"):
        F.adaptive_max_pool2d(x, (0, 2))


def test_narrow_from_the_first_element() -> None:
    """narrow starting at 0 (or at -size, the same place) takes the leading slice."""
    a = np.arange(12.0).reshape(3, 4)
    x = dlcore.tensor(a)
    np.testing.assert_array_equal(dlcore.narrow(x, 1, 0, 2).numpy(), a[:, :2])
    np.testing.assert_array_equal(dlcore.narrow(x, 0, -3, 1).numpy(), a[:1])
    np.testing.assert_array_equal(dlcore.narrow(x, 0, 0, 0).numpy(), a[:0])


def test_unbind_removes_only_the_unbound_dim() -> None:
    """unbind drops just the dim it splits along: other size-1 dims stay."""
    a = np.arange(6.0).reshape(2, 1, 3, 1)
    parts = dlcore.unbind(dlcore.tensor(a), 0)
    assert [tuple(p.shape) for p in parts] == [(1, 3, 1), (1, 3, 1)]
    for p, want in zip(parts, a):
        np.testing.assert_array_equal(p.numpy(), want)
    parts = dlcore.unbind(dlcore.tensor(a), 2)
    assert [tuple(p.shape) for p in parts] == [(2, 1, 1)] * 3
    for k, p in enumerate(parts):
        np.testing.assert_array_equal(p.numpy(), a[:, :, k])


# ---- pooling: second derivatives -----------------------------------------------------------

def _second_order(pool, x: dlcore.Tensor, gy: dlcore.Tensor, w: np.ndarray) -> np.ndarray:  # noqa: ANN001
    """d/dgy of <dpool(x)/dx . gy, w>: the backward of the pooling's backward."""
    (gx,) = autograd.grad(pool(x), x, gy, create_graph=True)
    (ggy,) = autograd.grad(gx, gy, dlcore.tensor(w))
    return ggy.numpy()


def test_avg_pool2d_double_backward_is_the_pooling_again() -> None:
    """The backward of avg_pool2d's backward is avg_pool2d with the same arguments (stride,
    padding, count_include_pad): checked against a NumPy window mean and a float64
    gradient check of the backward as a function of the upstream gradient."""
    rng = np.random.default_rng(0)
    x = dlcore.tensor(rng.standard_normal((1, 2, 4, 5)), requires_grad=True)

    def pool(t: dlcore.Tensor) -> dlcore.Tensor:
        return F.avg_pool2d(t, 2, stride=1, padding=1, count_include_pad=False)

    gy = dlcore.tensor(rng.standard_normal((1, 2, 5, 6)), requires_grad=True)
    w = rng.standard_normal((1, 2, 4, 5))
    want = np.zeros((1, 2, 5, 6))
    for i in range(5):
        for j in range(6):
            rows = range(max(i - 1, 0), min(i + 1, 4))
            cols = range(max(j - 1, 0), min(j + 1, 5))
            want[:, :, i, j] = w[:, :, rows][:, :, :, cols].mean(axis=(2, 3))
    np.testing.assert_allclose(_second_order(pool, x, gy, w), want, rtol=1e-12, atol=1e-12)

    def backward_of(g: dlcore.Tensor) -> dlcore.Tensor:
        with autograd.enable_grad():
            return autograd.grad(pool(x), x, g, create_graph=True)[0]
    assert gradcheck(backward_of, [gy])


def test_max_pool2d_double_backward_with_windows_that_see_only_padding() -> None:
    """max_pool2d's double backward where dilation puts every tap of a window in the
    padding (a 1x1 plane, kernel 2, padding 1, dilation 2: the output is -inf, no input
    gets gradient): the second derivative is zero, not an index error."""
    x = dlcore.tensor(np.array([[[[2.0]], [[-1.0]]]]), requires_grad=True)

    def pool(t: dlcore.Tensor) -> dlcore.Tensor:
        return F.max_pool2d(t, 2, stride=1, padding=1, dilation=2)

    assert np.all(pool(x).numpy() == -np.inf)
    gy = dlcore.tensor(np.ones((1, 2, 1, 1)), requires_grad=True)
    np.testing.assert_array_equal(_second_order(pool, x, gy, np.full((1, 2, 1, 1), 3.0)),
                                  np.zeros((1, 2, 1, 1)))


# ---- optimizers ----------------------------------------------------------------------------

def test_lbfgs_updates_every_parameter_from_its_own_slice() -> None:
    """LBFGS over three parameters of different sizes: one fixed-step iteration (the first
    is steepest descent with step min(1, 1/|g|_1) * lr) moves each parameter by its own
    gradient."""
    starts = [np.array([1.0, -2.0]), np.array([0.5, 3.0, -1.0]), np.array([2.0, 0.25, -0.5,
                                                                            1.5])]
    scales = [np.array([1.0, 2.0]), np.array([3.0, 0.5, 1.0]), np.array([2.0, 4.0, 1.0, 0.5])]
    params = [Parameter(dlcore.tensor(s.copy())) for s in starts]
    opt = optim.LBFGS(params, lr=0.5, max_iter=1)

    def closure() -> dlcore.Tensor:
        opt.zero_grad()
        loss = sum(((dlcore.tensor(c) * p * p).sum() for c, p in zip(scales, params)),
                   dlcore.tensor(0.0))
        loss.backward()
        return loss

    opt.step(closure)
    grads = [2 * c * s for c, s in zip(scales, starts)]
    t = min(1.0, 1.0 / sum(np.abs(g).sum() for g in grads)) * 0.5
    for p, s, g in zip(params, starts, grads):
        np.testing.assert_allclose(p.detach().numpy(), s - t * g, rtol=1e-14, atol=1e-15)


def test_lbfgs_stops_after_max_eval_evaluations() -> None:
    """LBFGS without a line search stops once it has evaluated the closure max_eval times
    in one step (the initial evaluation included), before max_iter: PyTorch evaluates it 3
    times and iterates twice here."""
    x = Parameter(dlcore.tensor(np.array([3.0, -2.0, 1.0, 0.5])))
    w = np.array([1.0, 4.0, 9.0, 2.0])
    opt = optim.LBFGS([x], max_iter=10, max_eval=3)
    calls = []

    def closure() -> dlcore.Tensor:
        calls.append(1)
        opt.zero_grad()
        loss = (dlcore.tensor(w) * x * x).sum() + x[0] * x[1]
        loss.backward()
        return loss

    opt.step(closure)
    assert len(calls) == 3
    state = opt.state[x]
    assert state["n_iter"] == 2 and state["func_evals"] == 3
    # torch.optim.LBFGS(max_iter=10, max_eval=3) from the same start, PyTorch 2.13
    np.testing.assert_allclose(x.detach().numpy(),
                               [2.40195068, -0.57462284, -0.14640381, 0.24778801], rtol=1e-7)


def test_lbfgs_strong_wolfe_zoom_keeps_away_from_the_bracket_top() -> None:
    """The strong-Wolfe zoom moves a trial step that falls within 10% of the bracket's upper
    end (after a step that made too little progress) away from it, as PyTorch does: on
    f(x) = -x + 0.9 sin(10 x) / 10 + x^4 from 0 with lr 2, the step and the evaluations
    count are PyTorch 2.13's."""
    x = Parameter(dlcore.tensor(np.array([0.0])))
    opt = optim.LBFGS([x], lr=2.0, max_iter=1, max_eval=30, line_search_fn="strong_wolfe")

    def closure() -> dlcore.Tensor:
        opt.zero_grad()
        loss = (-x + 0.9 * (10.0 * x).sin() / 10.0 + x ** 4).sum()
        loss.backward()
        return loss

    opt.step(closure)
    np.testing.assert_allclose(x.detach().numpy(), [0.5214322834532277], rtol=1e-10)
    assert opt.state[x]["func_evals"] == 8


def test_multisteplr_jump_to_an_epoch_counts_the_milestones_passed() -> None:
    """MultiStepLR.step(epoch) sets lr = base * gamma ** (milestones <= epoch, a repeated
    milestone counting twice)."""
    p = Parameter(dlcore.zeros(1))
    opt = optim.SGD([p], lr=0.8)
    sched = optim.lr_scheduler.MultiStepLR(opt, milestones=[2, 5, 5, 9], gamma=0.5)
    for epoch, want in ((7, 0.8 * 0.5 ** 3), (0, 0.8), (1, 0.8), (2, 0.4), (12, 0.8 * 0.5 ** 4)):
        sched.step(epoch)
        assert math.isclose(opt.param_groups[0]["lr"], want, rel_tol=1e-15), epoch


def test_onecyclelr_rejects_non_positive_epochs_naming_both() -> None:
    """OneCycleLR with epochs or steps_per_epoch not positive: a ValueError that names the
    scheduler and gives both values."""
    opt = optim.SGD([Parameter(dlcore.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match=r"^OneCycleLR: expected positive epochs and "
                                         r"steps_per_epoch, got 0 and 10$"):
        optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, epochs=0, steps_per_epoch=10)


@pytest.mark.parametrize("bad", [False, True])
def test_gradscaler_unscales_a_user_assigned_gradient(bad: bool) -> None:
    """GradScaler on another device than the parameters (host-side unscale): a gradient the
    user assigned (not in the optimizer's flat buffer) is divided by the scale, and an inf
    in it is found (the step is skipped, the scale backs off)."""
    a = Parameter(dlcore.tensor(np.array([1.0, 2.0], np.float32)))
    b = Parameter(dlcore.tensor(np.array([3.0, -1.0, 0.5], np.float32)))
    opt = optim.SGD([a, b], lr=0.5)
    scaler = dlcore.amp.GradScaler("emu", init_scale=1024.0)
    (a * a).sum().backward()  # a's gradient in its slot: 2a
    user = np.array([512.0, -2048.0, 1024.0], np.float32)
    if bad:
        user[1] = np.inf
    b.grad = dlcore.tensor(user)
    scaler.unscale_(opt)
    np.testing.assert_array_equal(a.grad.numpy(), np.array([2.0, 4.0]) / 1024)
    if not bad:
        np.testing.assert_array_equal(b.grad.numpy(), [0.5, -2.0, 1.0])
    scaler.step(opt)
    scaler.update()
    if bad:
        np.testing.assert_array_equal(a.numpy(), [1.0, 2.0])
        np.testing.assert_array_equal(b.numpy(), [3.0, -1.0, 0.5])
        assert scaler.get_scale() == 512.0
    else:
        np.testing.assert_allclose(a.numpy(), np.array([1.0, 2.0]) - 0.5 * np.array(
            [2.0, 4.0]) / 1024, rtol=1e-7)
        np.testing.assert_allclose(b.numpy(), [2.75, 0.0, 0.0], rtol=1e-7)
        assert scaler.get_scale() == 1024.0


def test_float16_unscale_on_cpu_rounds_the_float32_product_once() -> None:
    """The cpu unscale of a float16 buffer takes the product in float32 and rounds it to
    float16 once, as the kernel does (so cpu and emu agree bit for bit): for these gradients
    and 1/6 the float32 product lands on a float16 tie, which an exact (float64) product
    would round the other way."""
    x = np.arange(0, 0x7C00, dtype=np.uint16).view(np.float16)
    x = x[x > 6.2e-5]
    s = np.float32(1 / 6)
    want = (x.astype(np.float32) * s).astype(np.float16)
    ties = want != (x.astype(np.float64) * np.float64(s)).astype(np.float16)
    grads = x[ties][:16]
    assert grads.size == 16
    for device in (CPU, EMU):
        g = dlcore.tensor(grads.copy(), device=device)
        found = dlcore.tensor(np.zeros(1, np.int32), device=device)
        optim_ops.unscale_grads(device, g._data, 1 / 6, found._data)
        np.testing.assert_array_equal(g.numpy(), want[ties][:16])
        assert int(found.numpy()[0]) == 0


@pytest.mark.parametrize(("kwargs", "keys"), [
    ({}, {"step", "square_avg"}),
    ({"momentum": 0.9}, {"step", "square_avg", "momentum_buffer"}),
    ({"centered": True}, {"step", "square_avg", "grad_avg"}),
])
def test_rmsprop_keeps_only_the_state_its_options_use(kwargs: dict, keys: set[str]) -> None:
    """RMSprop's per-parameter state has PyTorch's keys: a momentum_buffer only with
    momentum > 0, a grad_avg only when centered."""
    p = Parameter(dlcore.zeros(3))
    opt = optim.RMSprop([p], lr=0.1, **kwargs)
    p.grad = dlcore.ones(3)
    opt.step()
    assert set(opt.state[p]) == keys
    assert set(opt.state_dict()["state"][0]) == keys


def test_cosine_annealing_resumed_at_an_epoch_keeps_the_restored_lr_then_chains() -> None:
    """CosineAnnealingLR built with last_epoch=k (resuming, initial_lr in the group) leaves
    the restored lr as it is (PyTorch 2.13: the constructor's step is in _initial_mode), then
    each step multiplies (lr - eta_min) by (1 + cos(pi t / T)) / (1 + cos(pi (t-1) / T)):
    0.5, 0.42977..., 0.35192... with T_max 10, eta_min 0.1 (the values PyTorch 2.13 gives)."""
    opt = optim.SGD([Parameter(dlcore.zeros(1))], lr=0.5)
    opt.param_groups[0]["initial_lr"] = 1.0
    sched = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10, eta_min=0.1, last_epoch=2)
    assert sched.last_epoch == 3
    want = 0.5
    for t in (4, 5, 6):
        assert math.isclose(opt.param_groups[0]["lr"], want, rel_tol=1e-12), t
        sched.step()
        ratio = (1 + math.cos(math.pi * t / 10)) / (1 + math.cos(math.pi * (t - 1) / 10))
        want = 0.1 + ratio * (want - 0.1)

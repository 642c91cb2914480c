"""Behaviour pinned down for survivors of a mutation sample over L-BFGS, the lr schedulers,
the NumPy optimizer rules and the optimizers' flat-buffer bookkeeping: each test checks
something no test of the suite checked before, against values worked out by hand or a
documented invariant."""

from __future__ import annotations

import numpy as np
import pytest

import dlcore
from dlcore import optim
from dlcore.nn.parameter import Parameter
from dlcore.ops import optim_cpu
from dlcore.optim import lr_scheduler as sch
from dlcore.optim.buckets import Bucket

# ---- LBFGS ---------------------------------------------------------------------------------


def _counting_closure(opt: optim.LBFGS, x: Parameter, f, calls: list[int]):
    def closure() -> dlcore.Tensor:
        calls.append(1)
        opt.zero_grad()
        loss = f(x)
        loss.backward()
        return loss
    return closure


def test_lbfgs_strong_wolfe_bracketing_stops_at_max_eval() -> None:
    """On f(x) = sqrt(1 + (x - 5000)^2) from 0 the slope stays near -1 for a long way, so the
    bracketing phase only extrapolates (each trial further along, never a bracket); with
    max_eval=4 the search may take max_eval - 1 = 3 trials after its first, then takes the
    last trial point (the lower end of the bracket [0, t]): 5 evaluations in all (PyTorch
    2.13 counts 5 too), at increasing points, x ending on the last one."""
    x = Parameter(dlcore.tensor(np.array([0.0])))
    opt = optim.LBFGS([x], max_iter=1, max_eval=4, line_search_fn="strong_wolfe")
    points: list[float] = []

    def closure() -> dlcore.Tensor:
        points.append(float(x.detach().numpy()[0]))
        opt.zero_grad()
        loss = (1.0 + (x - 5000.0) ** 2).sqrt().sum()
        loss.backward()
        return loss

    opt.step(closure)
    assert len(points) == 5 and opt.state[x]["func_evals"] == 5  # _strong_wolfe__mutmut_84, _26
    assert all(a < b for a, b in zip(points, points[1:]))
    assert points[-1] < 5000.0
    assert float(x.detach().numpy()[0]) == points[-1]


def test_lbfgs_strong_wolfe_zoom_spends_the_rest_of_max_eval() -> None:
    """On f(x) = sqrt(1 + (x - 50)^2) from 0 with max_eval=6 the search may make
    max_eval - 1 = 5 trials after its first (t = 1): bracketing tries 10 and 100 and
    brackets [10, 100] (f(100) fails Armijo), so the zoom gets the remaining 3 trials:
    7 evaluations in all (PyTorch 2.13 counts 7), the last landing within 0.5 of the
    minimum at 50 (one zoom trial fewer stops at 47.7)."""
    x = Parameter(dlcore.tensor(np.array([0.0])))
    opt = optim.LBFGS([x], max_iter=1, max_eval=6, line_search_fn="strong_wolfe")
    f = lambda v: (1.0 + (v - 50.0) ** 2).sqrt().sum()  # noqa: E731
    opt.step(_counting_closure(opt, x, f, []))
    assert opt.state[x]["func_evals"] == 7  # x__strong_wolfe__mutmut_183
    assert abs(float(x.detach().numpy()[0]) - 50.0) < 0.5


def test_lbfgs_keeps_iterating_when_the_loss_change_equals_tolerance_change() -> None:
    """The "no progress in the loss" stop is strict (|loss - prev_loss| < tolerance_change):
    f(x) = x^2 from x = 1, lr 2, tolerance_change 0. Iteration 1 is steepest descent with
    t = min(1, 1/|g|_1) * lr = 1 along d = -2, landing on x = -1; every curvature pair then
    has y / s = 2 exactly, so the two-loop recursion gives d = -g / 2 and t = lr = 2 jumps
    to -x: the loss stays 1 (a change of 0, not < 0), and all max_iter = 5 iterations run
    (5 evaluations: none after the last), ending at x = -1 (PyTorch 2.13 does the same)."""
    x = Parameter(dlcore.tensor(np.array([1.0])))
    opt = optim.LBFGS([x], lr=2.0, max_iter=5, tolerance_change=0.0)
    calls: list[int] = []
    opt.step(_counting_closure(opt, x, lambda v: (v * v).sum(), calls))
    assert opt.state[x]["n_iter"] == 5  # xǁLBFGSǁ_step__mutmut_285
    assert len(calls) == 5
    np.testing.assert_array_equal(x.detach().numpy(), [-1.0])


def test_lbfgs_state_vectors_are_tensors_on_the_parameters_device() -> None:
    """After one fixed-step iteration on f(x) = sum(w * x^2) the saved direction is -g0 and
    the previous gradient g0 = 2 w x0 (PyTorch's keys), both Tensors on the parameter's
    device; t is min(1, 1/|g0|_1) * lr."""
    x0, w = np.array([1.0, -2.0]), np.array([0.5, 1.5])
    x = Parameter(dlcore.tensor(x0.copy()))
    opt = optim.LBFGS([x], lr=1.0, max_iter=1)
    opt.step(_counting_closure(opt, x, lambda v: (dlcore.tensor(w) * v * v).sum(), []))
    state = opt.state[x]
    g0 = 2 * w * x0  # [1, -6], |g0|_1 = 7
    for key, want in (("d", -g0), ("prev_flat_grad", g0)):
        assert isinstance(state[key], dlcore.Tensor)
        assert state[key].device == x.device  # xǁLBFGSǁ_tensor__mutmut_2
        np.testing.assert_array_equal(state[key].numpy(), want)
    assert state["t"] == pytest.approx(1.0 / 7.0, rel=1e-15)
    np.testing.assert_allclose(x.detach().numpy(), x0 - g0 / 7.0, rtol=1e-15)


def test_lbfgs_strong_wolfe_takes_a_higher_second_trial_that_meets_wolfe() -> None:
    """PyTorch's bracketing compares a trial with the previous one (f_new >= f_prev) only
    from the third trial on: on f(x) = -x + x^2 / 100 + 8.5 exp(-(x - 10)^2 / 8) from 0,
    the first trial t = 1 (|g0|_1 < 1) has slope -0.98 (no curvature condition), the next is
    extrapolated to the bound 10 t, where f = -0.5 is above f(t = 1) = -0.99 but meets
    Armijo and |f'| = 0.8 <= 0.9 |g0|, so the search ends there: 3 evaluations and
    x = 10 d with d = -g0 = 1 - 8.5 * 2.5 * exp(-12.5) (PyTorch 2.13 agrees)."""
    x = Parameter(dlcore.tensor(np.array([0.0])))
    opt = optim.LBFGS([x], max_iter=1, max_eval=30, line_search_fn="strong_wolfe")
    f = lambda v: (-v + 0.01 * v * v + 8.5 * (-((v - 10.0) ** 2) / 8.0).exp()).sum()  # noqa: E731
    opt.step(_counting_closure(opt, x, f, []))
    assert opt.state[x]["func_evals"] == 3  # x__strong_wolfe__mutmut_33
    np.testing.assert_allclose(x.detach().numpy(), [10 * (1 - 21.25 * np.exp(-12.5))],
                               rtol=1e-13)


def test_lbfgs_rejects_bad_options() -> None:
    """A line search other than strong_wolfe is refused at the step with PyTorch's message;
    a negative lr and several parameter groups at construction."""
    x = Parameter(dlcore.tensor(np.array([1.0, 2.0])))
    opt = optim.LBFGS([x], line_search_fn="backtracking")
    with pytest.raises(RuntimeError, match="only 'strong_wolfe' is supported"):  # _step_216
        opt.step(_counting_closure(opt, x, lambda v: (v * v).sum(), []))
    with pytest.raises(ValueError, match="Invalid learning rate: -1"):
        optim.LBFGS([x], lr=-1.0)
    with pytest.raises(ValueError, match="parameter groups"):
        optim.LBFGS([{"params": [x]}, {"params": [Parameter(dlcore.ones(1))]}])


# ---- lr schedulers -------------------------------------------------------------------------


def test_one_cycle_accepts_pct_start_zero() -> None:
    """pct_start=0 is allowed (PyTorch's check is 0 <= pct_start <= 1): the warm-up phase is
    empty (it ends at step -1), so the lr anneals from max_lr at step -1 to min_lr at step
    total_steps - 1: linear, total_steps 4, max_lr 1, div_factor 10, final_div_factor 100,
    min_lr = 0.1 / 100 = 1e-3, lr(s) = 1 + (1e-3 - 1) * (s + 1) / 4."""
    o = optim.SGD([Parameter(dlcore.ones(2))], lr=0.5)
    s = sch.OneCycleLR(o, max_lr=1.0, total_steps=4, pct_start=0.0, anneal_strategy="linear",
                       cycle_momentum=False, div_factor=10.0, final_div_factor=100.0)
    got = []
    for _ in range(4):
        got.append(o.param_groups[0]["lr"])
        o.step()
        s.step()
    want = [1 + (1e-3 - 1) * (k + 1) / 4 for k in range(4)]
    np.testing.assert_allclose(got, want, rtol=1e-12)  # xǁOneCycleLRǁ__init____mutmut_34


def test_one_cycle_takes_one_max_lr_per_group() -> None:
    """max_lr as a list gives each group its own cycle: initial lr max_lr / div_factor (25),
    max_lr and min_lr = initial / final_div_factor stored in each group."""
    o = optim.SGD([{"params": [Parameter(dlcore.ones(2))]},
                   {"params": [Parameter(dlcore.ones(3))]}], lr=0.5, momentum=0.9)
    sch.OneCycleLR(o, max_lr=[1.0, 0.5], total_steps=10)
    for group, top in zip(o.param_groups, [1.0, 0.5]):
        assert group["max_lr"] == top  # x__per_group__mutmut_3
        assert group["initial_lr"] == pytest.approx(top / 25)
        assert group["lr"] == pytest.approx(top / 25)
        assert group["min_lr"] == pytest.approx(top / 25 / 1e4)
    with pytest.raises(ValueError, match="expected 2 values for max_lr, got 3"):
        sch.OneCycleLR(o, max_lr=[1.0, 0.5, 0.25], total_steps=10)


def test_cosine_resumed_keeps_the_current_lr() -> None:
    """Resuming (last_epoch=0, the group holding initial_lr 0.1 and a current lr of 0.05),
    the constructor's step to epoch 1 keeps 0.05, as PyTorch 2.13 (its _initial_mode; older
    versions jumped to the closed form from initial_lr)."""
    o = optim.SGD([Parameter(dlcore.ones(2))], lr=0.05)
    o.param_groups[0]["initial_lr"] = 0.1
    s = sch.CosineAnnealingLR(o, T_max=4, last_epoch=0)
    assert s.last_epoch == 1
    assert o.param_groups[0]["lr"] == 0.05


def test_linear_lr_epoch_jump_uses_the_closed_form() -> None:
    """step(epoch) jumps with the closed form initial_lr * (start + (end - start) *
    min(epoch, total_iters) / total_iters): 0.1 * (0.25 + 0.75 * 2 / 4) = 0.0625 at epoch 2,
    and the full 0.1 from epoch 4 on."""
    o = optim.SGD([Parameter(dlcore.ones(2))], lr=0.1)
    s = sch.LinearLR(o, start_factor=0.25, end_factor=1.0, total_iters=4)
    s.step(2)
    assert o.param_groups[0]["lr"] == pytest.approx(0.0625, rel=1e-12)  # _get_closed_form_lr_10
    s.step(9)
    assert o.param_groups[0]["lr"] == pytest.approx(0.1, rel=1e-12)
    with pytest.raises(ValueError, match="Starting multiplicative factor"):
        sch.LinearLR(o, start_factor=0.0)
    with pytest.raises(ValueError, match="Ending multiplicative factor"):
        sch.LinearLR(o, end_factor=1.5)


def test_one_cycle_needs_momentum_or_betas_to_cycle_momentum() -> None:
    """cycle_momentum (the default) over an optimizer with neither momentum nor betas
    (Adagrad) raises PyTorch's ValueError; cycle_momentum=False is fine."""
    o = optim.Adagrad([Parameter(dlcore.ones(2))], lr=0.1)
    with pytest.raises(ValueError, match="optimizer must support momentum or beta1"):
        sch.OneCycleLR(o, max_lr=1.0, total_steps=10)  # xǁOneCycleLRǁ__init____mutmut_165
    sch.OneCycleLR(o, max_lr=1.0, total_steps=10, cycle_momentum=False)


def test_one_cycle_resumes_at_last_epoch() -> None:
    """A OneCycleLR made with last_epoch=3 over groups that already hold initial_lr, max_lr
    and min_lr continues at step 4: with pct_start 0.3 of 10 steps the rise ends at step 2
    and the linear fall runs to step 9, so lr = 1 + (4e-6 - 1) * (4 - 2) / 7 (max_lr 1,
    initial 1 / 25, min 0.04 / 1e4)."""
    o = optim.SGD([Parameter(dlcore.ones(2))], lr=0.5)
    first = sch.OneCycleLR(o, max_lr=1.0, total_steps=10, anneal_strategy="linear",
                           cycle_momentum=False)
    for _ in range(3):
        first.step()
    again = sch.OneCycleLR(o, max_lr=1.0, total_steps=10, anneal_strategy="linear",
                           cycle_momentum=False, last_epoch=3)
    assert again.last_epoch == 4  # xǁOneCycleLRǁ__init____mutmut_211
    assert o.param_groups[0]["lr"] == pytest.approx(1 + (4e-6 - 1) * 2 / 7, rel=1e-12)


def test_reduce_on_plateau_max_mode_relative_threshold() -> None:
    """mode='max', threshold_mode='rel': a metric improves on best only above
    best * (1 + threshold) (10 * 1.1 = 11 here), not above best + threshold (10.1)."""
    o = optim.SGD([Parameter(dlcore.ones(2))], lr=1.0)
    s = sch.ReduceLROnPlateau(o, mode="max", threshold=0.1, threshold_mode="rel", patience=0,
                              factor=0.5)
    assert not s.is_better(10.5, 10.0)  # xǁReduceLROnPlateauǁis_better__mutmut_23
    assert s.is_better(11.5, 10.0)
    s.step(10.0)  # first metric: better than -inf
    s.step(10.5)  # not 10% better: a bad epoch, patience 0 -> lr halves
    assert o.param_groups[0]["lr"] == 0.5
    assert s.best == 10.0


def test_reduce_on_plateau_counts_epochs_and_validates_its_options() -> None:
    """step() counts epochs in last_epoch (3 after three steps); an explicit epoch is taken
    with a deprecation UserWarning; unknown mode / threshold_mode and factor >= 1 raise
    PyTorch's messages."""
    o = optim.SGD([Parameter(dlcore.ones(2))], lr=1.0)
    s = sch.ReduceLROnPlateau(o)
    for metric in (3.0, 2.0, 1.0):
        s.step(metric)
    assert s.last_epoch == 3  # xǁReduceLROnPlateauǁstep__mutmut_14
    with pytest.warns(UserWarning, match="deprecated"):
        s.step(0.5, epoch=10)
    assert s.last_epoch == 10
    with pytest.raises(ValueError, match="mode bogus is unknown!"):  # __init____mutmut_22
        sch.ReduceLROnPlateau(o, mode="bogus")
    with pytest.raises(ValueError, match="threshold mode bogus is unknown!"):
        sch.ReduceLROnPlateau(o, threshold_mode="bogus")
    with pytest.raises(ValueError, match="Factor should be < 1.0."):
        sch.ReduceLROnPlateau(o, factor=1.0)


# ---- NumPy optimizer rules -----------------------------------------------------------------


def test_adagrad_update_takes_its_clr_from_step_scalars() -> None:
    """update(..., step_scalars) replaces adagrad's host clr (scalar 0) with step_scalars[0]:
    s = 0 + g^2, p -= g / (sqrt(s) + eps) * clr with clr = 0.25 from the device array, not
    the host's 100 (weight_decay 0, eps 0: each element moves by sign(g) * 0.25)."""
    p = np.array([1.0, 2.0, -3.0], np.float64)
    g = np.array([0.5, -4.0, 2.0], np.float64)
    s = np.zeros(3, np.float64)
    optim_cpu.update(None, "adagrad_step", [p, g, s], [100.0, 0.0, 0.0], 0,
                     step_scalars=np.array([0.25, 0.0]))
    np.testing.assert_array_equal(s, g * g)
    np.testing.assert_array_equal(p, [0.75, 2.25, -3.25])  # x__with_step_scalars__mutmut_14


def test_adam_update_takes_step_size_and_bias_correction_from_step_scalars() -> None:
    """update(..., step_scalars) replaces adam's step_size and sqrt(1 - beta2^t) (scalars 5
    and 6) with step_scalars[0] and [1]. beta1 = beta2 = 0 and eps 0 make m = g, v = g^2 and
    the step sign(g) * bias_correction2_sqrt * step_size = sign(g) * 0.25 * 0.5 (the host's
    3 and 7 would give 21)."""
    p = np.array([1.0, 2.0, -3.0], np.float64)
    g = np.array([0.5, -4.0, 2.0], np.float64)
    m, v = np.zeros(3), np.zeros(3)
    # decay, weight_decay, 1 - beta1, beta2, 1 - beta2, step_size, sqrt(1 - beta2^t), eps
    scalars = [1.0, 0.0, 1.0, 0.0, 1.0, 3.0, 7.0, 0.0]
    optim_cpu.update(None, "adam_step", [p, g, m, v, None], scalars, 0,
                     step_scalars=np.array([0.5, 0.25]))
    np.testing.assert_array_equal(m, g)
    np.testing.assert_array_equal(v, g * g)
    np.testing.assert_array_equal(p, [0.875, 2.125, -3.125])  # _with_step_scalars_5, _11


# ---- buckets: step counts and histories ----------------------------------------------------


def _bucket(n: int) -> Bucket:
    return Bucket([Parameter(dlcore.zeros(2)) for _ in range(n)])


def _same_history_means_same_steps(b: Bucket) -> None:
    """The module's invariant: parameters with equal histories have equal step counts."""
    for i in range(len(b.params)):
        for j in range(len(b.params)):
            if b.histories[i] == b.histories[j]:
                assert b.steps[i] == b.steps[j], (b.histories, b.steps)


def test_bucket_histories_never_reuse_an_earlier_one() -> None:
    """Parameter 0 steps twice alone while parameter 1 never steps: each step gives it a new
    history, never parameter 1's initial one (equal histories must mean equal counts)."""
    b = _bucket(2)
    for step in (1, 2, 3):
        b.begin_step()
        b.set_steps(0, 1, step)
        _same_history_means_same_steps(b)  # xǁBucketǁset_steps__mutmut_6
    assert b.steps == [3, 0] and b.common_step is None and b.common_history is None


def test_bucket_recount_steps_after_loading_counts() -> None:
    """recount_steps (after a state dict set the counts one by one): equal counts share the
    common step and one history; after counts [2, 0], a step of parameter 1 alone (to 1)
    leaves the two with different histories, as their counts differ."""
    b = _bucket(2)
    b.steps = [3, 3]
    b.recount_steps()
    assert b.common_step == 3  # xǁBucketǁrecount_steps__mutmut_6
    assert b.histories[0] == b.histories[1] == b.common_history
    assert b.step_counts is None
    b.steps = [2, 0]
    b.recount_steps()
    assert b.common_step is None and b.common_history is None
    b.begin_step()
    b.set_steps(1, 2, 1)
    assert b.steps == [2, 1]
    _same_history_means_same_steps(b)  # xǁBucketǁrecount_steps__mutmut_9


def test_bucket_common_step_and_history_track_shared_counts() -> None:
    """A fresh bucket: every parameter at step 0 with one shared history (common_step 0,
    common_history that history). Two partial updates in one step (parameter 0, then 1,
    both to step 1) end with all counts equal again, so both are common once more."""
    b = _bucket(2)
    assert b.common_step == 0
    assert b.common_history == b.histories[0] == b.histories[1]  # Bucket.__init____mutmut_61
    b.begin_step()
    b.set_steps(0, 1, 1)
    assert b.common_step is None and b.common_history is None
    b.set_steps(1, 2, 1)
    assert b.steps == [1, 1] and b.common_step == 1
    assert b.histories[0] == b.histories[1] == b.common_history  # set_steps__mutmut_32


def test_optimizer_step_refuses_a_parameter_that_changed_shape() -> None:
    """Assigning a differently shaped .data to a parameter after the optimizer was made
    makes the next step raise a RuntimeError naming both shapes."""
    p = Parameter(dlcore.ones(2))
    opt = optim.SGD([p], lr=0.1)
    p.data = dlcore.zeros(3)
    p.grad = dlcore.ones(3)
    with pytest.raises(RuntimeError, match=r"changed shape from \(2,\) to \(3,\)"):
        opt.step()  # xǁBucketǁadopt_replaced_data__mutmut_7

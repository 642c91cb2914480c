"""Schedulers against their closed forms, chaining, state round trips, ReduceLROnPlateau."""

from __future__ import annotations

import math

import numpy as np

import pytest

import dlcore
from dlcore import optim
from dlcore.nn.parameter import Parameter
from dlcore.optim import lr_scheduler as sch


def _opt(lr: float = 0.1, cls: type = optim.SGD, **kw) -> optim.Optimizer:
    return cls([Parameter(dlcore.ones(2))], lr=lr, **kw)


def _lrs(scheduler, optimizer, epochs: int) -> list[float]:
    out = []
    for _ in range(epochs):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


@pytest.mark.parametrize("make, closed", [
    (lambda o: sch.StepLR(o, step_size=3, gamma=0.5), lambda t: 0.1 * 0.5 ** (t // 3)),
    (lambda o: sch.MultiStepLR(o, milestones=[2, 5, 5], gamma=0.1),
     lambda t: 0.1 * 0.1 ** ((t >= 2) + 2 * (t >= 5))),
    (lambda o: sch.ExponentialLR(o, gamma=0.9), lambda t: 0.1 * 0.9 ** t),
    (lambda o: sch.CosineAnnealingLR(o, T_max=10, eta_min=0.01),
     lambda t: 0.01 + 0.09 * (1 + math.cos(math.pi * t / 10)) / 2),
    (lambda o: sch.LinearLR(o, start_factor=0.25, total_iters=4),
     lambda t: 0.1 * (0.25 + 0.75 * min(t, 4) / 4)),
    (lambda o: sch.LambdaLR(o, lambda t: 1 / (1 + t)), lambda t: 0.1 / (1 + t)),
], ids=["step", "multistep", "exponential", "cosine", "linear", "lambda"])
def test_closed_forms(make, closed):
    o = _opt()
    s = make(o)
    got = _lrs(s, o, 25)
    for t, lr in enumerate(got):
        assert lr == pytest.approx(closed(t), rel=1e-9, abs=1e-12), t
    assert s.get_last_lr() == [o.param_groups[0]["lr"]]


def test_cosine_continues_past_t_max_and_epoch_jump():
    o = _opt()
    s = sch.CosineAnnealingLR(o, T_max=4)
    got = _lrs(s, o, 12)
    for t, lr in enumerate(got):
        assert lr == pytest.approx(0.05 * (1 + math.cos(math.pi * t / 4)), abs=1e-12)
    s.step(2)  # jumps use the closed form
    assert o.param_groups[0]["lr"] == pytest.approx(0.05)


def test_chaining_multiplies():
    o = _opt()
    a = sch.ExponentialLR(o, gamma=0.9)
    b = sch.StepLR(o, step_size=3, gamma=0.1)
    for t in range(10):
        assert o.param_groups[0]["lr"] == pytest.approx(0.1 * 0.9 ** t * 0.1 ** (t // 3))
        o.step()
        a.step()
        b.step()


def test_warmup_then_cosine_chain():
    o = _opt(1.0)
    warm = sch.LinearLR(o, start_factor=0.5, total_iters=2)
    cos = sch.CosineAnnealingLR(o, T_max=8)
    for t in range(6):
        factor = 0.5 + 0.5 * min(t, 2) / 2
        assert o.param_groups[0]["lr"] == pytest.approx(
            factor * (1 + math.cos(math.pi * t / 8)) / 2, rel=1e-9)
        warm.step()
        cos.step()


def test_one_cycle_phases():
    o = _opt(cls=optim.SGD, momentum=0.9)
    total = 20
    s = sch.OneCycleLR(o, max_lr=1.0, total_steps=total, pct_start=0.25)
    init, low = 1.0 / 25, 1.0 / 25 / 1e4
    up = 0.25 * total - 1

    def cos(a, b, pct):
        return b + (a - b) / 2 * (math.cos(math.pi * pct) + 1)

    for t in range(total):
        group = o.param_groups[0]
        if t <= up:
            lr, mom = cos(init, 1.0, t / up), cos(0.95, 0.85, t / up)
        else:
            pct = (t - up) / (total - 1 - up)
            lr, mom = cos(1.0, low, pct), cos(0.85, 0.95, pct)
        assert group["lr"] == pytest.approx(lr, rel=1e-9), t
        assert group["momentum"] == pytest.approx(mom, rel=1e-9), t
        o.step()
        if t < total - 1:
            s.step()
    assert o.param_groups[0]["lr"] == pytest.approx(low)


def test_one_cycle_three_phase_linear_and_betas():
    o = _opt(cls=optim.Adam)
    s = sch.OneCycleLR(o, max_lr=0.5, epochs=2, steps_per_epoch=5, three_phase=True,
                       anneal_strategy="linear")
    lrs, betas = [], []
    for _ in range(10):
        lrs.append(o.param_groups[0]["lr"])
        betas.append(o.param_groups[0]["betas"][0])
        s.step()
    assert lrs[0] == pytest.approx(0.02) and lrs[2] == pytest.approx(0.5)
    assert lrs[4] == pytest.approx(0.02) and lrs[9] == pytest.approx(0.02 / 1e4)
    assert betas[2] == pytest.approx(0.85) and betas[0] == pytest.approx(0.95)
    with pytest.raises(ValueError, match="total number of steps"):
        s.step()
        s.step()


def test_scheduler_state_dict_round_trip():
    o = _opt()
    s = sch.StepLR(o, step_size=2, gamma=0.5)
    _lrs(s, o, 5)
    state = s.state_dict()
    assert "optimizer" not in state and state["last_epoch"] == 5
    o2 = _opt()
    s2 = sch.StepLR(o2, step_size=7)
    s2.load_state_dict(state)
    assert s2.step_size == 2 and s2.last_epoch == 5 and s2.get_last_lr() == s.get_last_lr()


@pytest.mark.parametrize("mode, threshold_mode, metrics, expected", [
    ("min", "rel", [1.0, 0.9, 0.95, 0.95, 0.95, 0.95], [0.1] * 3 + [0.01] * 3),
    ("max", "rel", [1.0, 1.1, 1.0, 1.0, 1.0, 1.0], [0.1] * 3 + [0.01] * 3),
    ("min", "abs", [1.0, 0.95, 0.93, 0.92, 0.91, 0.9], [0.1] * 3 + [0.01] * 3),
    ("min", "rel", [1.0, 0.85, 0.9, 0.9, 0.7, 0.7], [0.1] * 6),
], ids=["min-rel", "max-rel", "min-abs", "improving"])
def test_reduce_on_plateau(mode, threshold_mode, metrics, expected):
    o = _opt()
    s = sch.ReduceLROnPlateau(o, mode=mode, patience=2, threshold=0.1,
                              threshold_mode=threshold_mode)
    got = []
    for m in metrics:
        s.step(m)
        got.append(o.param_groups[0]["lr"])
    assert got == pytest.approx(expected)


def test_reduce_on_plateau_cooldown_and_min_lr():
    o = _opt()
    s = sch.ReduceLROnPlateau(o, factor=0.5, patience=0, cooldown=2, min_lr=0.03)
    got = []
    for _ in range(8):
        s.step(1.0)
        got.append(o.param_groups[0]["lr"])
    assert got == pytest.approx([0.1, 0.05, 0.05, 0.05, 0.03, 0.03, 0.03, 0.03])
    with pytest.raises(ValueError, match="Factor"):
        sch.ReduceLROnPlateau(o, factor=1.0)


@pytest.mark.parametrize("make, lrs", [
    (lambda o: sch.ExponentialLR(o, gamma=0.5, last_epoch=2), [0.3, 0.15, 0.075]),
    (lambda o: sch.LinearLR(o, start_factor=0.5, total_iters=4, last_epoch=2),
     [0.3, 0.3 * (1 + 0.5 / (4 * 0.5 + 3 * 0.5)), 0.3 * (1 + 0.5 / (4 * 0.5 + 3 * 0.5))]),
    (lambda o: sch.StepLR(o, step_size=2, gamma=0.5, last_epoch=2), [0.3, 0.15, 0.15]),
])
def test_a_resumed_scheduler_does_not_run_a_step_ahead(make, lrs):
    """PyTorch 2.13: building a chainable scheduler with last_epoch=k (initial_lr 1.0, the
    restored lr 0.3) leaves the lr alone for ExponentialLR, LinearLR and CosineAnnealingLR
    (the constructor's step runs in _initial_mode) and applies StepLR's rule at epoch k + 1
    (3: no change); the values are PyTorch 2.13's, checked side by side."""
    o = optim.SGD([Parameter(dlcore.zeros(1))], lr=0.3)
    o.param_groups[0]["initial_lr"] = 1.0
    s = make(o)
    got = []
    for _ in lrs:
        got.append(o.param_groups[0]["lr"])
        s.step()
    np.testing.assert_allclose(got, lrs, rtol=1e-12)

"""Capturable optimizers and device-side skipping (kernels/optim.cu's count_steps and found_inf):
the step counts live on the device and the update equals the non-capturable one bit for bit on
emu (the same formulas, glibc's pow on both sides); a step whose found_inf flag is set changes
nothing; capturable=True on cpu raises as PyTorch's does."""

from __future__ import annotations

import numpy as np
import pytest

import dlcore
from dlcore import optim
from dlcore.nn.parameter import Parameter

SHAPES = ((3, 4), (5,), (2, 3, 2))
CASES = [(optim.Adam, {"lr": 1e-2}), (optim.AdamW, {"lr": 1e-2, "amsgrad": True}),
         (optim.Adam, {"lr": 1e-2, "weight_decay": 0.1, "maximize": True}),
         (optim.Adagrad, {"lr": 0.1, "lr_decay": 0.05, "weight_decay": 0.01}),
         (optim.RMSprop, {"lr": 1e-2, "momentum": 0.5, "centered": True})]
IDS = ["adam", "adamw-amsgrad", "adam-wd-maximize", "adagrad-lr-decay", "rmsprop"]


def _params(device: str, dtype: type, seed: int = 0) -> list[Parameter]:
    rng = np.random.default_rng(seed)
    return [Parameter(dlcore.tensor(rng.standard_normal(s).astype(dtype), device=device))
            for s in SHAPES]


def _grads(step: int, dtype: type) -> list[np.ndarray]:
    rng = np.random.default_rng(100 + step)
    return [rng.standard_normal(s).astype(dtype) for s in SHAPES]


def _run(cls: type, options: dict, device: str, dtype: type, steps: int,
         missing: dict[int, set[int]] | None = None, via: str = "backward"
         ) -> tuple[list[Parameter], optim.Optimizer]:
    """``missing[t]``: the parameters without a gradient at step t."""
    params = _params(device, dtype)
    opt = cls(params, **options)
    for t in range(steps):
        gone = (missing or {}).get(t, set())
        opt.zero_grad()
        grads = [dlcore.tensor(g, device=device) for g in _grads(t, dtype)]
        if via == "backward":
            used = [(p * g).sum() for i, (p, g) in enumerate(zip(params, grads)) if i not in gone]
            dlcore.autograd.backward(used)
        else:
            for i, (p, g) in enumerate(zip(params, grads)):
                p.grad = None if i in gone else g
        opt.step()
    return params, opt


def _state(opt: optim.Optimizer) -> list[dict[str, np.ndarray]]:
    return [{k: v.numpy().copy() for k, v in s.items()} for s in opt.state.values()]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("cls, options", CASES, ids=IDS)
def test_capturable_equals_non_capturable_bit_for_bit_on_emu(cls: type, options: dict,
                                                              dtype: type) -> None:
    """Five steps; the kernels' per-step scalars come from count_steps (float64, the host's
    formulas, glibc's pow as Python's) instead of the host: the same bits."""
    want, want_opt = _run(cls, options, "emu", dtype, 5)
    got, got_opt = _run(cls, {**options, "capturable": True}, "emu", dtype, 5)
    for a, b in zip(want, got):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for a, b in zip(_state(want_opt), _state(got_opt)):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize("cls, options", CASES, ids=IDS)
def test_capturable_emu_agrees_with_the_cpu_path(cls: type, options: dict) -> None:
    """Against the NumPy path (non-capturable, cpu): the kernels contract a*b+c, so a few ulps
    of float64 over five steps."""
    want, _ = _run(cls, options, "cpu", np.float64, 5)
    got, _ = _run(cls, {**options, "capturable": True}, "emu", np.float64, 5)
    for a, b in zip(want, got):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-13, atol=1e-15)


def test_the_step_lives_on_the_device_as_a_float32_tensor() -> None:
    params, opt = _run(optim.Adam, {"capturable": True}, "emu", np.float32, 3)
    step = opt.state[params[0]]["step"]
    assert step.device == dlcore.device("emu") and step.dtype == dlcore.float32
    assert step.shape == () and step.item() == 3.0
    saved = opt.state_dict()
    assert saved["state"][0]["step"].item() == 3.0
    assert saved["param_groups"][0]["capturable"] is True
    _, plain = _run(optim.Adam, {}, "emu", np.float32, 3)
    assert plain.state_dict()["state"][0]["step"].device == dlcore.device("cpu")


@pytest.mark.parametrize("cls, options", CASES[:1] + CASES[3:4], ids=["adam", "adagrad"])
def test_state_dict_moves_between_capturable_and_not(cls: type, options: dict) -> None:
    """Saved after 3 capturable steps, loaded into a plain optimizer (and the other way round),
    2 more steps: what 5 steps of either give."""
    want, _ = _run(cls, options, "emu", np.float32, 5)
    for first, second in (({"capturable": True}, {}), ({}, {"capturable": True})):
        params, opt = _run(cls, {**options, **first}, "emu", np.float32, 3)
        again = [Parameter(p.detach().clone()) for p in params]
        resumed = cls(again, **{**options, **second})
        state = opt.state_dict()
        state["param_groups"][0]["capturable"] = bool(second)
        resumed.load_state_dict(state)
        for t in (3, 4):
            resumed.zero_grad()
            for p, g in zip(again, _grads(t, np.float32)):
                p.grad = dlcore.tensor(g, device="emu")
            resumed.step()
        for a, b in zip(want, again):
            np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_parameters_without_gradients_keep_their_own_device_counts() -> None:
    """A parameter missing a gradient now and then keeps its own count, as PyTorch's
    per-parameter step tensors do; assigned and backward gradients alike."""
    missing = {1: {1}, 2: {0, 2}, 4: {1}}
    for via in ("backward", "assigned"):
        want, want_opt = _run(optim.Adam, {"lr": 1e-2}, "emu", np.float32, 6, missing, via)
        got, got_opt = _run(optim.Adam, {"lr": 1e-2, "capturable": True}, "emu", np.float32,
                            6, missing, via)
        for a, b in zip(want, got):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
        assert [s["step"].item() for s in got_opt.state.values()] == [5.0, 4.0, 5.0]


def _set_found_inf(opt: optim.Optimizer, value: int, device: str = "emu") -> None:
    opt.found_inf = dlcore.tensor(np.array([value], np.int32), device=device)


@pytest.mark.parametrize("cls, options", CASES + [
    (optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True}), (optim.SGD, {"lr": 0.1})],
    ids=IDS + ["sgd-nesterov", "sgd"])
def test_a_step_with_found_inf_set_changes_nothing(cls: type, options: dict) -> None:
    """The flag read by the kernels: parameters, state and device step counts bit-identical
    after a flagged step (one kernel launch each, as an unflagged one), and the next step
    is what it would have been without the flagged one."""
    capturable = {"capturable": True} if cls is not optim.SGD else {}
    want, _ = _run(cls, options, "emu", np.float32, 3)
    params = _params("emu", np.float32)
    opt = cls(params, **options, **capturable)
    assert opt._step_supports_amp_scaling
    for t in range(3):
        for p, g in zip(params, _grads(t, np.float32)):
            p.grad = dlcore.tensor(g, device="emu")
        if t == 1:  # a flagged step with another gradient in between
            before = [p.numpy().copy() for p in params], _state(opt)
            _set_found_inf(opt, 1)
            opt.step()
            assert all(np.array_equal(a, p.numpy()) for a, p in zip(before[0], params))
            for a, b in zip(before[1], _state(opt)):
                for k in a:
                    np.testing.assert_array_equal(a[k], b[k])
            for p, g in zip(params, _grads(t, np.float32)):
                p.grad = dlcore.tensor(g, device="emu")
        _set_found_inf(opt, 0)
        opt.step()
    del opt.found_inf
    for a, b in zip(want, params):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_who_supports_skipping_on_the_device() -> None:
    p = [Parameter(dlcore.zeros(2, device="emu"))]
    assert not optim.Adam(p)._step_supports_amp_scaling  # host step counts
    assert optim.Adam(p, capturable=True)._step_supports_amp_scaling
    assert optim.SGD(p, lr=0.1, momentum=0.9)._step_supports_amp_scaling
    assert not optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.5)._step_supports_amp_scaling


def test_capturable_on_cpu_raises_as_pytorch() -> None:
    p = Parameter(dlcore.ones(3))
    p.grad = dlcore.ones(3)
    opt = optim.Adam([p], capturable=True)
    with pytest.raises(AssertionError, match="capturable=True, params and state_steps must be "
                                             "on supported devices"):
        opt.step()
    np.testing.assert_array_equal(p.numpy(), np.ones(3, np.float32))


def test_capturable_steps_are_two_launches_per_bucket() -> None:
    """count_steps (one thread) then the update, per bucket; no other launch."""
    from dlcore.kernels import recorded_launches

    params, opt = _run(optim.Adam, {"capturable": True}, "emu", np.float32, 1)
    with recorded_launches() as launches:
        opt.step()
    assert [(r.kernel, r.grid, r.block) for r in launches][:1] == [
        ("optim.cu:count_steps", (1,), (256,))]
    assert [r.kernel for r in launches] == ["optim.cu:count_steps", "optim.cu:adam_step<float>"]


"""Gradients in the optimizer's flat gradient buffer (see dlcore/optim/optimizer.py): backward
writes them into each parameter's slot, zero_grad keeps the slots, a gradient assigned by hand
is copied in at the step, a parameter without one is left alone, the steady-state step and
GradScaler's unscale are one kernel launch per bucket, and the results are PyTorch's (its
formulas in NumPy here, and torch itself where it is installed)."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest

import dlcore
from dlcore import optim
from dlcore.kernels import recorded_launches
from dlcore.nn.parameter import Parameter

SHAPES = ((3, 4), (7,), (2, 3, 2))
HAS_TORCH = importlib.util.find_spec("torch") is not None


def _params(device: str = "cpu", dtype: type = np.float64, seed: int = 0) -> list[Parameter]:
    rng = np.random.default_rng(seed)
    return [Parameter(dlcore.tensor(rng.standard_normal(s).astype(dtype), device=device))
            for s in SHAPES]


def _buffer(opt: optim.Optimizer, group: int = 0, bucket: int = 0) -> np.ndarray:
    return opt._buckets[group][bucket].grads.buffer


def _in_buffer(p: Parameter, buffer: np.ndarray) -> bool:
    assert p.grad is not None
    return p.grad.array.base is buffer and np.shares_memory(p.grad.array, buffer)


def _loss(params: list[Parameter], weights: list[np.ndarray]) -> dlcore.Tensor:
    """sum(w * p + p^2 / 2): the gradient of p is w + p."""
    terms = [(p * dlcore.tensor(w, device=p.device)).sum() + (p * p).sum() * 0.5
             for p, w in zip(params, weights)]
    return sum(terms[1:], terms[0])


def _weights(seed: int, dtype: type = np.float64) -> list[np.ndarray]:
    rng = np.random.default_rng(seed + 50)
    return [rng.standard_normal(s).astype(dtype) for s in SHAPES]


def _optimizer_launches(launches: list) -> list[str]:
    return [launch.kernel for launch in launches if launch.kernel.startswith("optim.cu:")]


# ---- where the gradients live ---------------------------------------------------------------

def test_backward_writes_into_the_slots_and_zero_grad_keeps_them() -> None:
    params = _params()
    opt = optim.SGD(params, lr=0.1)
    buffer = _buffer(opt)
    w = _weights(0)
    _loss(params, w).backward()
    assert all(_in_buffer(p, buffer) for p in params)
    expected = [wi + p.numpy() for p, wi in zip(params, w)]
    for p, e in zip(params, expected):
        np.testing.assert_allclose(p.grad.numpy(), e)
    _loss(params, w).backward()  # no zero_grad: accumulates in place, in the slot
    assert all(_in_buffer(p, buffer) for p in params)
    for p, e in zip(params, expected):
        np.testing.assert_allclose(p.grad.numpy(), 2 * e)

    opt.zero_grad(set_to_none=False)  # one fill of the buffer; the same tensors, zeroed
    kept = [p.grad for p in params]
    assert not buffer.any() and all(p.grad is k for p, k in zip(params, kept))
    _loss(params, w).backward()
    assert all(p.grad is k for p, k in zip(params, kept))
    for p, e in zip(params, expected):
        np.testing.assert_allclose(p.grad.numpy(), e)

    opt.zero_grad()  # set_to_none: .grad goes, the slot stays
    assert all(p.grad is None for p in params)
    _loss(params, w).backward()
    assert all(_in_buffer(p, buffer) for p in params)
    for p, e in zip(params, expected):
        np.testing.assert_allclose(p.grad.numpy(), e)


def test_gradients_that_do_not_fit_a_slot_are_kept_apart() -> None:
    """create_graph keeps the gradient's graph; dlcore.autograd.grad leaves .grad alone."""
    params = _params()
    opt = optim.SGD(params, lr=0.1)
    _loss(params, _weights(0)).backward(create_graph=True)
    assert all(p.grad.requires_grad and not _in_buffer(p, _buffer(opt)) for p in params)
    opt.zero_grad()
    grads = dlcore.autograd.grad(_loss(params, _weights(0)), params)
    assert all(p.grad is None for p in params) and len(grads) == len(params)


# ---- the steps: against PyTorch's formulas ---------------------------------------------------

def _ref_adam(p: np.ndarray, grads: list[np.ndarray], lr: float = 1e-2, betas=(0.9, 0.999),
              eps: float = 1e-8) -> np.ndarray:
    m, v = np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        p = p - lr * (m / (1 - betas[0] ** t)) / (np.sqrt(v / (1 - betas[1] ** t)) + eps)
    return p


def _ref_sgd(p: np.ndarray, grads: list[np.ndarray], lr: float = 0.1,
             momentum: float = 0.9) -> np.ndarray:
    buf = None
    for g in grads:
        buf = g.copy() if buf is None else momentum * buf + g
        p = p - lr * buf
    return p


def _train(cls: type, options: dict, device: str, dtype: type, steps: int,
           skip: dict[int, set[int]] | None = None) -> tuple[list[np.ndarray], list]:
    """``steps`` of backward + step on sum(w_t * p + p^2 / 2); ``skip[t]``: parameters left
    out of step t's loss (their .grad is None then). Returns the parameters and, per step,
    the gradients each parameter had (None when skipped)."""
    params = _params(device, dtype)
    opt = cls(params, **options)
    history = []
    for t in range(steps):
        opt.zero_grad()
        used = [i for i in range(len(params)) if i not in (skip or {}).get(t, set())]
        w = _weights(t, dtype)
        _loss([params[i] for i in used], [w[i] for i in used]).backward()
        history.append([None if p.grad is None else p.grad.numpy().copy() for p in params])
        opt.step()
    return [p.numpy().copy() for p in params], history


def _reference(ref, steps_grads: list, start: list[np.ndarray], **options) -> list[np.ndarray]:
    out = []
    for i, p0 in enumerate(start):
        grads = [step[i] for step in steps_grads if step[i] is not None]
        out.append(ref(p0, grads, **options))
    return out


@pytest.mark.parametrize("cls, ref, options", [
    (optim.Adam, _ref_adam, {"lr": 1e-2}), (optim.SGD, _ref_sgd, {"lr": 0.1, "momentum": 0.9})])
def test_steps_from_the_slots_match_the_formulas(device: str, cls, ref, options) -> None:
    got, history = _train(cls, options, device, np.float64, steps=5)
    start = [p.numpy() for p in _params()]
    for g, e in zip(got, _reference(ref, history, start, **options)):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-14)


def test_parameters_without_a_gradient_are_left_alone(device: str) -> None:
    """Parameter 1 has no gradient at steps 1 and 2: unchanged then, and its Adam step count
    (bias correction) runs behind the others'; parameter 2 has none at step 3."""
    skip = {1: {1}, 2: {1}, 3: {2}}
    got, history = _train(optim.Adam, {"lr": 1e-2}, device, np.float64, steps=5, skip=skip)
    start = [p.numpy() for p in _params()]
    for g, e in zip(got, _reference(_ref_adam, history, start, lr=1e-2)):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-14)


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch not installed")
@pytest.mark.parametrize("name, options", [
    ("Adam", {"lr": 1e-2, "weight_decay": 0.1, "amsgrad": True}),
    ("AdamW", {"lr": 1e-2}), ("SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    ("RMSprop", {"lr": 1e-2, "centered": True, "momentum": 0.5}), ("Adagrad", {"lr": 0.1})])
def test_matches_torch(device: str, name: str, options: dict) -> None:
    import torch

    skip = {1: {0}}
    got, _ = _train(getattr(optim, name), options, device, np.float64, steps=4, skip=skip)
    params = [torch.tensor(p.numpy(), requires_grad=True) for p in _params()]
    opt = getattr(torch.optim, name)(params, **options)
    for t in range(4):
        opt.zero_grad()
        w = _weights(t)
        loss = sum((params[i] * torch.tensor(w[i])).sum() + (params[i] * params[i]).sum() * 0.5
                   for i in range(len(params)) if i not in skip.get(t, set()))
        loss.backward()
        opt.step()
    for g, p in zip(got, params):
        np.testing.assert_allclose(g, p.detach().numpy(), rtol=1e-12, atol=1e-14)


# ---- gradients set by hand ------------------------------------------------------------------

def test_an_assigned_gradient_is_copied_in_and_stays_the_users(device: str) -> None:
    params = _params(device)
    opt = optim.Adam(params, lr=1e-2)
    start = [p.numpy().copy() for p in params]
    w = _weights(0)
    _loss(params, w).backward()  # 0 and 2 in their slots
    mine = dlcore.tensor(np.full(SHAPES[1], 0.5), device=device)
    params[1].grad = mine
    opt.step()
    assert params[1].grad is mine and np.array_equal(mine.numpy(), np.full(SHAPES[1], 0.5))
    grads = [w[0] + start[0], np.full(SHAPES[1], 0.5), w[2] + start[2]]
    for p, s, g in zip(params, start, grads):
        np.testing.assert_allclose(p.numpy(), _ref_adam(s, [g]), rtol=1e-12)


@pytest.mark.parametrize("how", ["data", "set_"])
def test_a_gradient_whose_array_was_replaced_in_place_is_used(device: str, how: str) -> None:
    """Regression: ``p.grad.data = t`` (or ``p.grad.set_(t)``) after backward left the slot
    counted as filled, and the step read the stale backward gradient (PyTorch uses t)."""
    params = _params(device)
    opt = optim.Adam(params, lr=1e-2)
    start = [p.numpy().copy() for p in params]
    w = _weights(1)
    _loss(params, w).backward()  # every gradient in its slot
    mine = dlcore.tensor(np.full(SHAPES[1], -0.25), device=device)
    if how == "data":
        params[1].grad.data = mine
    else:
        params[1].grad.set_(mine)
    opt.step()
    grads = [w[0] + start[0], np.full(SHAPES[1], -0.25), w[2] + start[2]]
    for p, s, g in zip(params, start, grads):
        np.testing.assert_allclose(p.numpy(), _ref_adam(s, [g]), rtol=1e-12)


def test_a_gradient_of_another_dtype_is_cast_into_the_slot() -> None:
    p = Parameter(dlcore.ones(4))  # float32
    opt = optim.SGD([p], lr=0.5)
    p.grad = dlcore.tensor(np.full(4, 0.25))  # float64
    opt.step()
    np.testing.assert_array_equal(p.numpy(), np.full(4, 0.875, np.float32))
    p.grad = dlcore.ones(3)
    with pytest.raises(RuntimeError, match=r"gradient of shape \(3,\) .* parameter of shape"):
        opt.step()


def test_the_slot_tensor_assigned_back_is_recognised() -> None:
    params = _params("emu", np.float32)
    opt = optim.SGD(params, lr=0.1)
    _loss(params, _weights(0, np.float32)).backward()
    kept = params[0].grad
    params[0].grad = None
    params[0].grad = kept  # the setter cannot know it is the slot; the step finds out
    assert not opt._buckets[0][0].grads_in_slots()
    opt.step()
    assert opt._buckets[0][0].grads_in_slots()


def test_zero_grad_keeps_an_assigned_gradient_and_zeroes_it() -> None:
    params = _params()
    opt = optim.SGD(params, lr=0.1)
    mine = dlcore.ones(*SHAPES[0], dtype=dlcore.float64)
    params[0].grad = mine
    opt.zero_grad(set_to_none=False)
    assert params[0].grad is mine and not mine.numpy().any()
    assert params[1].grad is None  # PyTorch: a missing gradient stays missing


# ---- one launch per bucket ------------------------------------------------------------------

def test_the_steady_state_step_is_one_launch_per_bucket() -> None:
    params = _params("emu", np.float32) + [Parameter(dlcore.ones(5, dtype=dlcore.float64,
                                                                 device="emu"))]
    opt = optim.Adam(params, lr=1e-2)  # two buckets: float32 and float64
    assert len(opt._buckets[0]) == 2
    for t in range(3):
        opt.zero_grad(set_to_none=t != 1)
        (_loss(params[:3], _weights(t, np.float32)) + params[3].sum()).backward()
        with recorded_launches() as launches:
            opt.step()
        assert _optimizer_launches(launches) == ["optim.cu:adam_step<float>",
                                                 "optim.cu:adam_step<double>"]


def test_a_missing_gradient_splits_the_launch() -> None:
    params = _params("emu", np.float32)
    opt = optim.SGD(params, lr=0.1, momentum=0.9)
    w = _weights(0, np.float32)
    counts = []
    for t in range(3):
        opt.zero_grad()
        used = [0, 2] if t == 0 else [0, 1, 2]
        _loss([params[i] for i in used], [w[i] for i in used]).backward()
        with recorded_launches() as launches:
            opt.step()
        counts.append(len(_optimizer_launches(launches)))
    # step 0: two runs around the missing one; then the step counts differ, (1, 0, 1) and
    # (2, 1, 2) (parameter 1's first step sets its momentum buffer, the others' do not), so
    # one launch per run of equal counts: per run, never per parameter
    assert counts == [2, 3, 3]


def test_unscale_is_one_launch_per_bucket_and_finds_an_inf() -> None:
    params = _params("emu", np.float32)
    opt = optim.SGD(params, lr=0.1)
    scaler = dlcore.amp.GradScaler("emu", init_scale=1024.0)
    w = _weights(0, np.float32)
    scaler.scale(_loss(params, w)).backward()
    want = [(wi + p.numpy()).astype(np.float32) for p, wi in zip(params, w)]
    with recorded_launches() as launches:
        scaler.unscale_(opt)
    assert _optimizer_launches(launches) == ["optim.cu:unscale_grads<float>"]
    for p, e in zip(params, want):
        np.testing.assert_allclose(p.grad.numpy(), e, rtol=1e-6)
    with recorded_launches() as launches:
        scaler.step(opt)
    assert _optimizer_launches(launches) == ["optim.cu:sgd_step<float>"]
    scaler.update()

    opt.zero_grad()
    scaler.scale(_loss(params, w)).backward()
    params[1].grad.array[3] = np.inf
    before = [p.numpy().copy() for p in params]
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 512.0  # backed off
    assert all(np.array_equal(b, p.numpy()) for b, p in zip(before, params))


def test_a_stale_inf_in_an_unused_slot_is_not_found() -> None:
    """Parameter 1's slot still holds last step's inf, but it has no gradient now."""
    params = _params()
    opt = optim.SGD(params, lr=0.1)
    scaler = dlcore.amp.GradScaler("cpu", init_scale=8.0)
    w = _weights(0)
    scaler.scale(_loss(params, w)).backward()
    params[1].grad.array[0] = np.nan
    with np.errstate(invalid="ignore"):
        scaler.step(opt)
    scaler.update()
    opt.zero_grad()
    scaler.scale(_loss([params[0], params[2]], [w[0], w[2]])).backward()
    before = params[0].numpy().copy()
    scaler.step(opt)
    scaler.update()
    assert not np.array_equal(before, params[0].numpy()) and scaler.get_scale() == 4.0


def test_unscale_kernel_is_deterministic(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bit-identical under several block and fiber orders (the inf flag is a plain store of
    1 by whichever threads saw one)."""
    first = None
    for seed in (0, 1, 7):
        monkeypatch.setenv("DLCORE_EMU_SEED", str(seed))
        params = [Parameter(dlcore.tensor(np.arange(700, dtype=np.float64) - 3.0, device="emu"))]
        opt = optim.SGD(params, lr=0.1)
        (params[0] * params[0]).sum().backward()
        params[0].grad.array[650] = np.inf
        found = opt._unscale_grads_(0.125)
        out = (found, params[0].grad.numpy().tobytes())
        assert found
        assert first is None or out == first
        first = out


# ---- layout changes and state ---------------------------------------------------------------

def test_moving_the_model_after_making_the_optimizer() -> None:
    model = dlcore.nn.Linear(4, 3).double()
    opt = optim.Adam(model.parameters(), lr=1e-2)
    model.to("emu")
    x = dlcore.tensor(np.linspace(-1, 1, 8).reshape(2, 4), device="emu")
    ref = dlcore.nn.Linear(4, 3).double()
    ref.load_state_dict(model.state_dict())
    ref_opt = optim.Adam(ref.parameters(), lr=1e-2)
    for _ in range(3):
        for m, o, inp in ((model, opt, x), (ref, ref_opt, x.cpu())):
            o.zero_grad()
            (m(inp) ** 2).sum().backward()
            o.step()
    assert all(_in_buffer(p, _buffer(opt)) for p in model.parameters())
    for a, b in zip(model.parameters(), ref.parameters()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12)


def test_a_second_optimizer_takes_the_slots_and_the_first_still_steps() -> None:
    params = _params()
    first = optim.SGD(params, lr=0.1)
    second = optim.SGD(params, lr=0.1)
    w = _weights(0)
    start = [p.numpy().copy() for p in params]
    _loss(params, w).backward()
    assert all(_in_buffer(p, _buffer(second)) for p in params)
    first.step()
    expected = [s - 0.1 * (wi + s) for s, wi in zip(start, w)]
    for p, e in zip(params, expected):
        np.testing.assert_allclose(p.numpy(), e, rtol=1e-12)
    first.zero_grad()  # through the setter: the second optimizer's slots hear of it
    second.step()  # nothing to do: no gradients
    for p, e in zip(params, expected):
        np.testing.assert_allclose(p.numpy(), e, rtol=1e-12)


def test_state_dict_round_trip_with_gradients_in_the_slots() -> None:
    params = _params()
    opt = optim.Adam(params, lr=1e-2)
    for t in range(3):
        opt.zero_grad()
        _loss(params, _weights(t)).backward()
        opt.step()
    saved = opt.state_dict()
    resumed = [Parameter(dlcore.tensor(p.numpy().copy())) for p in params]
    opt2 = optim.Adam(resumed, lr=1e-2)
    opt2.load_state_dict(saved)
    for t in range(3, 5):
        for o, ps in ((opt, params), (opt2, resumed)):
            o.zero_grad()
            _loss(ps, _weights(t)).backward()
            o.step()
    for p, q in zip(params, resumed):
        np.testing.assert_array_equal(p.numpy(), q.numpy())
    assert opt2.state[resumed[0]]["step"].item() == 5


def test_a_copied_model_has_no_slots() -> None:
    import copy
    import pickle

    model = dlcore.nn.Linear(3, 2)
    opt = optim.SGD(model.parameters(), lr=0.1)
    twin = copy.deepcopy(model)
    assert all(p._grad_slot is None for p in twin.parameters())
    assert all(p._grad_slot is None for p in pickle.loads(pickle.dumps(model)).parameters())
    (twin(dlcore.ones(1, 3)).sum()).backward()
    assert all(p.grad is not None and p.grad.array.base is None for p in twin.parameters())
    before = [p.numpy().copy() for p in model.parameters()]
    opt.step()  # the original has no gradients: nothing moves
    assert all(np.array_equal(b, p.numpy()) for b, p in zip(before, model.parameters()))


@pytest.mark.parametrize("cls, options", [(optim.SGD, {"lr": 0.1}), (optim.Adam, {})])
@pytest.mark.parametrize("dtype, per_thread", [(np.float32, 4), (np.float64, 2)])
def test_whole_buckets_move_16_bytes_per_access(cls, options, dtype, per_thread) -> None:
    """A bucket's own buffers are 16-byte aligned: a step over all of its 3 + 4096 elements
    launches one thread per float4 (double2); a run that starts mid-vector (at element 3, when
    the first parameter has no gradient) goes one element per thread."""
    params = [Parameter(dlcore.ones(3, dtype=dtype, device="emu")),
              Parameter(dlcore.ones(4096, dtype=dtype, device="emu"))]
    opt = cls(params, **options)
    grids = []
    for used in (params, params[1:]):
        opt.zero_grad()
        sum([(p * 2.0).sum() for p in used]).backward()
        with recorded_launches() as launches:
            opt.step()
        grids.append([launch.grid for launch in launches])
    vectors = math.ceil(4099 / per_thread)
    assert grids == [[(math.ceil(vectors / 256),)], [(4096 // 256,)]]

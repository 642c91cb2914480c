"""Optimizers against their update formulas written out in NumPy (float64, plain loops over
steps and parameters), plus the fused-kernel path (emu, cuda) against the NumPy path; each with
gradients assigned by hand (copied into the flat gradient buffer at the step) and with
gradients from backward (already in it: the one-launch path)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import dlcore
from dlcore import optim
from dlcore.device import device_count
from dlcore.nn.parameter import Parameter

SHAPES = ((3, 4), (5,), (2, 3, 2))
STEPS = 20


def _grads(seed: int, steps: int = STEPS) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s) for s in SHAPES] for _ in range(steps)]


def _start(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed + 100)
    return [rng.standard_normal(s) for s in SHAPES]


VIAS = ("assigned", "backward")


def _run(cls: type, options: dict, device: str = "cpu", dtype: np.dtype = np.float64,
         steps: int = STEPS, seed: int = 0, via: str = "assigned") -> list[np.ndarray]:
    """``via="backward"``: each step's gradient g comes from backward of sum(p * g), which
    lands it, exactly, in the parameter's slot of the flat gradient buffer."""
    params = [Parameter(dlcore.tensor(p.astype(dtype), device=device)) for p in _start(seed)]
    opt = cls(params, **options)
    for grads in _grads(seed, steps):
        gs = [dlcore.tensor(g.astype(dtype), device=device) for g in grads]
        if via == "assigned":
            for p, g in zip(params, gs):
                p.grad = g
        else:
            opt.zero_grad()
            sum([(p * g).sum() for p, g in zip(params, gs)]).backward()
        opt.step()
    return [p.numpy().copy() for p in params]


# ---- reference formulas (PyTorch's documented algorithms), one parameter at a time -------
def ref_sgd(p, grads, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
            maximize=False):
    buf = None
    for t, g in enumerate(grads, start=1):
        g = -g if maximize else g
        g = g + weight_decay * p
        if momentum:
            buf = g.copy() if t == 1 else momentum * buf + (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        p = p - lr * g
    return p


def ref_adam(p, grads, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
             amsgrad=False, maximize=False, decoupled=False):
    b1, b2 = betas
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    vmax = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        g = -g if maximize else g
        if decoupled:
            p = p * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1 ** t)
        if amsgrad:
            vmax = np.maximum(vmax, v)
            v_hat = vmax / (1 - b2 ** t)
        else:
            v_hat = v / (1 - b2 ** t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


def ref_rmsprop(p, grads, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                centered=False, maximize=False):
    v = np.zeros_like(p)
    ga = np.zeros_like(p)
    buf = np.zeros_like(p)
    for g in grads:
        g = -g if maximize else g
        g = g + weight_decay * p
        v = alpha * v + (1 - alpha) * g * g
        if centered:
            ga = alpha * ga + (1 - alpha) * g
            avg = np.sqrt(v - ga * ga) + eps
        else:
            avg = np.sqrt(v) + eps
        if momentum > 0:
            buf = momentum * buf + g / avg
            p = p - lr * buf
        else:
            p = p - lr * g / avg
    return p


def ref_adagrad(p, grads, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                initial_accumulator_value=0.0, eps=1e-10, maximize=False):
    s = np.full_like(p, initial_accumulator_value)
    for t, g in enumerate(grads, start=1):
        g = -g if maximize else g
        g = g + weight_decay * p
        clr = lr / (1 + (t - 1) * lr_decay)
        s = s + g * g
        p = p - clr * g / (np.sqrt(s) + eps)
    return p


CASES = [
    (optim.SGD, ref_sgd, {"lr": 0.1}),
    (optim.SGD, ref_sgd, {"lr": 0.05, "momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01}),
    (optim.SGD, ref_sgd, {"lr": 0.05, "momentum": 0.9, "nesterov": True, "maximize": True}),
    (optim.Adam, ref_adam, {}),
    (optim.Adam, ref_adam, {"lr": 0.01, "betas": (0.8, 0.99), "weight_decay": 0.1,
                            "amsgrad": True}),
    (optim.Adam, ref_adam, {"lr": 0.01, "maximize": True, "eps": 1e-6}),
    (optim.AdamW, lambda p, g, **kw: ref_adam(p, g, decoupled=True, **kw),
     {"lr": 0.01, "weight_decay": 0.1}),
    (optim.AdamW, lambda p, g, **kw: ref_adam(p, g, decoupled=True, **kw),
     {"lr": 0.01, "amsgrad": True, "weight_decay": 1e-2}),
    (optim.RMSprop, ref_rmsprop, {}),
    (optim.RMSprop, ref_rmsprop, {"lr": 0.01, "momentum": 0.5, "centered": True,
                                  "weight_decay": 0.1}),
    (optim.RMSprop, ref_rmsprop, {"alpha": 0.9, "maximize": True, "centered": True}),
    (optim.Adagrad, ref_adagrad, {}),
    (optim.Adagrad, ref_adagrad, {"lr": 0.1, "lr_decay": 0.05, "weight_decay": 0.1,
                                  "initial_accumulator_value": 0.5, "maximize": True}),
]


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("cls, ref, options", CASES,
                         ids=[f"{c.__name__}-{i}" for i, (c, _, _) in enumerate(CASES)])
def test_matches_formula(cls, ref, options, via):
    got = _run(cls, options, via=via)
    grads = _grads(0)
    for i, (p0, p) in enumerate(zip(_start(0), got)):
        expected = ref(p0, [step[i] for step in grads], **options)
        np.testing.assert_allclose(p, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("kernel_device", ["emu", "cuda"])
@pytest.mark.parametrize("cls, ref, options", CASES,
                         ids=[f"{c.__name__}-{i}" for i, (c, _, _) in enumerate(CASES)])
def test_kernel_matches_numpy_path(kernel_device, cls, ref, options, via):
    """The kernel devices against the cpu path (the NumPy twin is the reference); the
    bucket's 29 elements make 7 float4 (14 double2) accesses and a scalar tail of 1."""
    if kernel_device == "cuda" and device_count() == 0:
        pytest.skip("no CUDA device")
    device = kernel_device
    for dtype in (np.float32, np.float64):
        expected = _run(cls, options, "cpu", dtype, steps=6, via=via)
        got = _run(cls, options, device, dtype, steps=6, via=via)
        # The kernels contract a*b+c into one FMA (as NVRTC does), NumPy rounds the product
        # first: one rounding less per fused pair, so about one ulp (2^-24 relative) per
        # update, growing over 6 steps to a few ulps; measured at most 37% of this bound.
        for e, g in zip(expected, got):
            np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-7)


def test_defaults_match_pytorch():
    p = [Parameter(dlcore.zeros(2))]
    assert optim.Adam(p).defaults == dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                                          weight_decay=0.0, amsgrad=False, maximize=False,
                                          capturable=False)
    assert optim.AdamW(p).defaults["weight_decay"] == 1e-2
    r = optim.RMSprop(p).defaults
    assert (r["lr"], r["alpha"], r["eps"], r["momentum"], r["centered"]) == \
        (1e-2, 0.99, 1e-8, 0.0, False)
    a = optim.Adagrad(p).defaults
    assert (a["lr"], a["eps"], a["lr_decay"], a["initial_accumulator_value"]) == \
        (1e-2, 1e-10, 0.0, 0.0)


def test_param_groups_with_different_lr():
    start = _start(0)
    params = [Parameter(dlcore.tensor(p)) for p in start]
    opt = optim.SGD([{"params": params[:2]}, {"params": params[2:], "lr": 0.01}], lr=0.1,
                    momentum=0.9)
    assert opt.param_groups[1]["momentum"] == 0.9
    grads = _grads(0)
    for step in grads:
        for p, g in zip(params, step):
            p.grad = dlcore.tensor(g)
        opt.step()
    for i, p in enumerate(params):
        lr = 0.1 if i < 2 else 0.01
        np.testing.assert_allclose(p.numpy(), ref_sgd(start[i], [s[i] for s in grads], lr,
                                                      momentum=0.9), rtol=1e-10)


def test_add_param_group_and_skipped_grads():
    a, b = Parameter(dlcore.ones(3, dtype=dlcore.float64)), \
        Parameter(dlcore.ones(2, dtype=dlcore.float64))
    opt = optim.Adam([a], lr=0.1)
    opt.add_param_group({"params": [b], "lr": 0.5})
    a.grad = dlcore.ones(3, dtype=dlcore.float64)
    opt.step()  # b has no grad: untouched, no state
    np.testing.assert_allclose(b.numpy(), 1.0)
    assert b not in opt.state and opt.state[a]["step"].item() == 1
    b.grad = dlcore.ones(2, dtype=dlcore.float64)
    opt.step()
    np.testing.assert_allclose(b.numpy(), ref_adam(np.ones(2), [np.ones(2)], lr=0.5))
    np.testing.assert_allclose(a.numpy(), ref_adam(np.ones(3), [np.ones(3)] * 2, lr=0.1))
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [a]})


@pytest.mark.parametrize("cls, options", [
    (optim.SGD, {"lr": 0.1, "momentum": 0.9}), (optim.Adam, {"amsgrad": True}),
    (optim.RMSprop, {"momentum": 0.3, "centered": True}), (optim.Adagrad, {"lr_decay": 0.1})])
def test_state_dict_round_trip(cls, options):
    grads = _grads(3)
    params = [Parameter(dlcore.tensor(p)) for p in _start(3)]
    opt = cls(params, **options)
    for step in grads[:10]:
        for p, g in zip(params, step):
            p.grad = dlcore.tensor(g)
        opt.step()
    saved = opt.state_dict()
    assert sorted(saved["state"]) == [0, 1, 2]
    assert saved["param_groups"][0]["params"] == [0, 1, 2]
    resumed = [Parameter(dlcore.tensor(p.numpy().copy())) for p in params]
    opt2 = cls(resumed, lr=123.0)
    opt2.load_state_dict(saved)
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    for step in grads[10:]:
        for p, q, g in zip(params, resumed, step):
            p.grad = dlcore.tensor(g)
            q.grad = dlcore.tensor(g)
        opt.step()
        opt2.step()
    for p, q in zip(params, resumed):
        np.testing.assert_array_equal(p.numpy(), q.numpy())


def test_state_is_per_parameter_pytorch_layout():
    p = Parameter(dlcore.ones(2, 3, dtype=dlcore.float64))
    opt = optim.Adam([p])
    p.grad = dlcore.ones(2, 3, dtype=dlcore.float64)
    opt.step()
    st = opt.state_dict()["state"][0]
    assert set(st) == {"step", "exp_avg", "exp_avg_sq"}
    assert st["exp_avg"].shape == (2, 3)
    np.testing.assert_allclose(st["exp_avg"].numpy(), 0.1)
    assert set(optim.SGD([p], lr=0.1).state_dict()["state"]) == set()


def test_zero_grad_and_closure():
    p = Parameter(dlcore.tensor([1.0, 2.0]))
    opt = optim.SGD([p], lr=0.5)

    def closure():
        opt.zero_grad()
        loss = (p * p).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() == 5.0
    np.testing.assert_allclose(p.numpy(), [0.0, 0.0])
    opt.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(p.grad.numpy(), [0.0, 0.0])
    opt.zero_grad()
    assert p.grad is None


def test_params_stay_usable_after_flattening():
    w = Parameter(dlcore.ones(2, 2))
    opt = optim.SGD([w], lr=0.1)
    (w * 3).sum().backward()
    opt.step()
    assert w.is_leaf and w.requires_grad and w.shape == (2, 2)
    w.data = dlcore.full((2, 2), 5.0)  # replaced after the first step: adopted
    w.grad = dlcore.ones(2, 2)
    opt.step()
    np.testing.assert_allclose(w.numpy(), 4.9)


def test_errors():
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.SGD([], lr=0.1)
    with pytest.raises(TypeError, match="iterable of Tensors"):
        optim.SGD(Parameter(dlcore.ones(1)), lr=0.1)
    with pytest.raises(ValueError, match="Invalid learning rate"):
        optim.Adam([Parameter(dlcore.ones(1))], lr=-1)
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD([Parameter(dlcore.ones(1))], lr=0.1, nesterov=True)
    x = dlcore.ones(2, requires_grad=True)
    with pytest.raises(ValueError, match="non-leaf"):
        optim.SGD([x * 2], lr=0.1)


def test_trains_a_quadratic():
    target = np.array([1.0, -2.0, 3.0])
    for cls, opts in [(optim.SGD, {"lr": 0.1, "momentum": 0.9}), (optim.Adam, {"lr": 0.1}),
                      (optim.RMSprop, {"lr": 0.05}), (optim.Adagrad, {"lr": 0.5})]:
        x = Parameter(dlcore.zeros(3, dtype=dlcore.float64))
        opt = cls([x], **opts)
        for _ in range(300):
            opt.zero_grad()
            ((x - dlcore.tensor(target)) ** 2).sum().backward()
            opt.step()
        assert math.isclose(float(((x.numpy() - target) ** 2).sum()), 0.0, abs_tol=1e-3), cls


@pytest.mark.parametrize("cls, options", [
    (optim.SGD, {"lr": float("nan")}), (optim.SGD, {"lr": 0.1, "momentum": float("nan")}),
    (optim.Adam, {"lr": float("nan")}), (optim.Adam, {"eps": float("nan")}),
    (optim.AdamW, {"weight_decay": float("nan")}), (optim.RMSprop, {"alpha": float("nan")}),
    (optim.Adagrad, {"lr": float("nan")}), (optim.Adam, {"betas": (float("nan"), 0.9)}),
])
def test_nan_hyperparameters_are_refused(cls, options):
    """lr=float('nan') used to be accepted and turned every parameter into NaN."""
    p = Parameter(dlcore.zeros(2))
    with pytest.raises(ValueError, match="Invalid"):
        cls([p], **options)


@pytest.mark.parametrize("dtype", ["int64", "int32", "bool"])
def test_non_float_parameter_is_refused(dtype):
    t = dlcore.zeros(3, dtype=dtype)
    with pytest.raises(TypeError, match=f"floating point Tensors, got one of dtype {dtype}"):
        optim.SGD([t], lr=0.1)

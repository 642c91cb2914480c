"""Adadelta, NAdam and RAdam against a float64 NumPy transcription of the algorithms as
PyTorch documents them (runs everywhere; it agrees with torch.optim to 2e-15), and, where
PyTorch is installed, Adadelta, NAdam, RAdam and LBFGS against torch.optim (same start, same
gradients or the same closure, parameters compared after every run), state_dict round trips
mid-run, and a PyTorch-style optimizer subclass (own step(), self.state[p]) on both."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import dlcore
from dlcore import optim
from dlcore.nn.parameter import Parameter

try:  # the reference where installed (never a dependency); other tests run without it
    import torch
except ImportError:
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch not installed")

SHAPES = ((3, 4), (5,), (2, 3, 2))
STEPS = 25
RTOL = 1e-10


@pytest.fixture(autouse=True)
def _torch_float64() -> Any:
    # NOTE: torch keeps NAdam's mu_product (and step) in the default dtype: float64 here so
    # the reference is computed at the precision dlcore uses for these scalars
    if torch is None:
        yield
        return
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _data(seed: int = 0) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    rng = np.random.default_rng(seed)
    start = [rng.standard_normal(s) for s in SHAPES]
    return start, [[rng.standard_normal(s) for s in SHAPES] for _ in range(STEPS)]


CASES = [
    ("Adadelta", {}),
    ("Adadelta", {"lr": 0.5, "rho": 0.8, "eps": 1e-5, "weight_decay": 0.1}),
    ("Adadelta", {"weight_decay": 0.05, "maximize": True}),
    ("NAdam", {}),
    ("NAdam", {"lr": 1e-2, "betas": (0.8, 0.99), "weight_decay": 0.1}),
    ("NAdam", {"lr": 1e-2, "weight_decay": 0.1, "decoupled_weight_decay": True,
               "momentum_decay": 1e-2}),
    ("NAdam", {"maximize": True, "weight_decay": 0.05}),
    ("RAdam", {}),
    ("RAdam", {"lr": 1e-2, "betas": (0.8, 0.9), "weight_decay": 0.1}),  # rho_t > 5 early
    ("RAdam", {"lr": 1e-2, "betas": (0.8, 0.9), "weight_decay": 0.1,
               "decoupled_weight_decay": True}),
    ("RAdam", {"maximize": True, "eps": 1e-6}),
]


def _run_torch(name: str, kwargs: dict, start: list[np.ndarray],
               grads: list[list[np.ndarray]]) -> list[np.ndarray]:
    params = [torch.tensor(a, requires_grad=True) for a in start]
    opt = getattr(torch.optim, name)(params, **kwargs)
    for step in grads:
        for p, g in zip(params, step):
            p.grad = torch.tensor(g)
        opt.step()
    return [p.detach().numpy() for p in params]


def _params(start: list[np.ndarray], device: str) -> list[Parameter]:
    return [Parameter(dlcore.tensor(a, device=device)) for a in start]


def _set_grads(params: list[Parameter], step: list[np.ndarray], device: str) -> None:
    for p, g in zip(params, step):
        p.grad = dlcore.tensor(g, device=device)


def _reference(name: str, kwargs: dict, start: list[np.ndarray],
               grads: list[list[np.ndarray]]) -> list[np.ndarray]:
    """The algorithms as torch.optim's documentation writes them, one parameter at a time
    in float64 NumPy: the reference where PyTorch is absent (CI)."""
    kw = dict(kwargs)
    maximize, wd = kw.pop("maximize", False), kw.pop("weight_decay", 0.0)
    out = []
    for i, theta0 in enumerate(start):
        theta = theta0.copy()
        a, b, mu_product = np.zeros_like(theta), np.zeros_like(theta), 1.0
        for t, step in enumerate(grads, start=1):
            g = -step[i] if maximize else step[i].copy()
            if name == "Adadelta":
                lr, rho, eps = kw.get("lr", 1.0), kw.get("rho", 0.9), kw.get("eps", 1e-6)
                if wd:
                    g = g + wd * theta
                a = rho * a + (1 - rho) * g * g                       # square average
                delta = np.sqrt(b + eps) / np.sqrt(a + eps) * g
                b = rho * b + (1 - rho) * delta * delta               # delta average
                theta = theta - lr * delta
                continue
            lr = kw.get("lr", 2e-3 if name == "NAdam" else 1e-3)
            b1, b2 = kw.get("betas", (0.9, 0.999))
            eps = kw.get("eps", 1e-8)
            if wd and kw.get("decoupled_weight_decay", False):
                theta = theta * (1 - lr * wd)
            elif wd:
                g = g + wd * theta
            a = b1 * a + (1 - b1) * g                                 # first moment
            b = b2 * b + (1 - b2) * g * g                             # second moment
            if name == "NAdam":
                psi = kw.get("momentum_decay", 4e-3)
                mu = b1 * (1 - 0.5 * 0.96 ** (t * psi))
                mu_next = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * psi))
                mu_product *= mu
                m_hat = (mu_next * a / (1 - mu_product * mu_next)
                         + (1 - mu) * g / (1 - mu_product))
                theta = theta - lr * m_hat / (np.sqrt(b / (1 - b2 ** t)) + eps)
                continue
            m_hat = a / (1 - b1 ** t)                                 # RAdam
            rho_inf = 2 / (1 - b2) - 1
            rho_t = rho_inf - 2 * t * b2 ** t / (1 - b2 ** t)
            if rho_t > 5:
                adaptive = np.sqrt(1 - b2 ** t) / (np.sqrt(b) + eps)
                rect = np.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf
                               / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
                theta = theta - lr * m_hat * adaptive * rect
            else:
                theta = theta - lr * m_hat
        out.append(theta)
    return out


@pytest.mark.parametrize(("name", "kwargs"), CASES)
def test_matches_the_documented_algorithm(device: str, name: str, kwargs: dict) -> None:
    """Every case against a float64 NumPy transcription of PyTorch's documented update
    (runs without PyTorch)."""
    start, grads = _data(1)
    params = _params(start, device)
    opt = getattr(optim, name)(params, **kwargs)
    for step in grads:
        _set_grads(params, step, device)
        opt.step()
    for ours, ref in zip(params, _reference(name, kwargs, start, grads)):
        np.testing.assert_allclose(ours.numpy(), ref, rtol=RTOL, atol=1e-14)


@needs_torch
@pytest.mark.parametrize(("name", "kwargs"), CASES)
def test_matches_torch(device: str, name: str, kwargs: dict) -> None:
    start, grads = _data()
    params = _params(start, device)
    opt = getattr(optim, name)(params, **kwargs)
    for step in grads:
        _set_grads(params, step, device)
        opt.step()
    for ours, ref in zip(params, _run_torch(name, kwargs, start, grads)):
        np.testing.assert_allclose(ours.numpy(), ref, rtol=RTOL, atol=1e-14)


@needs_torch
@pytest.mark.parametrize("name", ["Adadelta", "NAdam", "RAdam"])
def test_backward_gradients_and_groups(device: str, name: str) -> None:
    """Gradients from backward (in their slots: the one-pass path), two groups, one parameter
    without a gradient at some steps (its state and step count stay, as in torch)."""
    start, grads = _data(1)
    ours = _params(start, device)
    theirs = [torch.tensor(a, requires_grad=True) for a in start]

    def groups(ps: list) -> list:
        return [{"params": ps[:2]}, {"params": ps[2:], "lr": 3e-2, "weight_decay": 0.2}]

    opt = getattr(optim, name)(groups(ours))
    ref = getattr(torch.optim, name)(groups(theirs))
    for k, step in enumerate(grads):
        opt.zero_grad()
        ref.zero_grad()
        live = range(3) if k % 3 else range(2)
        sum((ours[i] * dlcore.tensor(step[i], device=device)).sum() for i in live).backward()
        sum((theirs[i] * torch.tensor(step[i])).sum() for i in live).backward()
        opt.step()
        ref.step()
    for p, q in zip(ours, theirs):
        np.testing.assert_allclose(p.numpy(), q.detach().numpy(), rtol=RTOL, atol=1e-14)
    assert float(opt.state[ours[2]]["step"].item()) == float(ref.state[theirs[2]]["step"])


@needs_torch
@pytest.mark.parametrize(("name", "kwargs"), [CASES[1], CASES[4], CASES[8]])
def test_state_dict_round_trip(device: str, name: str, kwargs: dict) -> None:
    start, grads = _data(2)
    params = _params(start, device)
    opt = getattr(optim, name)(params, **kwargs)
    for step in grads[:10]:
        _set_grads(params, step, device)
        opt.step()
    saved = opt.state_dict()
    ref = getattr(torch.optim, name)([torch.zeros(s, requires_grad=True) for s in SHAPES],
                                     **kwargs)
    torch_keys = {"Adadelta": {"step", "square_avg", "acc_delta"},
                  "NAdam": {"step", "mu_product", "exp_avg", "exp_avg_sq"},
                  "RAdam": {"step", "exp_avg", "exp_avg_sq"}}[name]
    assert set(saved["state"][0]) == torch_keys
    del ref
    again = _params([p.numpy() for p in params], device)
    fresh = getattr(optim, name)(again, **kwargs)
    fresh.load_state_dict(saved)
    for step in grads[10:]:
        for ps, o in ((params, opt), (again, fresh)):
            _set_grads(ps, step, device)
            o.step()
    for p, q in zip(params, again):
        np.testing.assert_array_equal(p.numpy(), q.numpy())
    np.testing.assert_allclose(params[0].numpy(), _run_torch(name, kwargs, start, grads)[0],
                               rtol=RTOL)


# ---- LBFGS ---------------------------------------------------------------------------
def _rosenbrock(x: Any) -> Any:
    return ((1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2
            + (1 - x[2]) ** 2 + 100 * (x[3] - x[2] ** 2) ** 2)


def _quadratic(a: np.ndarray, b: np.ndarray) -> Callable[[Any, Any], Any]:
    def f(x: Any, tensor: Callable[[np.ndarray], Any]) -> Any:
        return 0.5 * (x * (tensor(a) @ x)).sum() - (tensor(b) * x).sum()
    return f


# NOTE: Rosenbrock is ill-conditioned: the last-bit differences of dot products (NumPy's
# and torch's summation orders) grow to ~1e-8 over 60 iterations, so its runs are kept short;
# up to 5 iterations per step the trajectories agree bit for bit
LBFGS_CASES = [
    ("rosenbrock", {"max_iter": 5}),
    ("rosenbrock", {"max_iter": 5, "line_search_fn": "strong_wolfe"}),
    ("rosenbrock", {"lr": 0.5, "history_size": 3, "max_iter": 4,
                    "line_search_fn": "strong_wolfe"}),
    ("quadratic", {"history_size": 2}),
    ("quadratic", {"line_search_fn": "strong_wolfe", "tolerance_grad": 1e-12}),
]


def _lbfgs_run(framework: str, problem: str, kwargs: dict, device: str, outer: int,
               split: int | None = None) -> tuple[np.ndarray, list[float]]:
    rng = np.random.default_rng(3)
    m = rng.standard_normal((4, 4))
    a, b = m @ m.T + np.eye(4), rng.standard_normal(4)
    x0 = np.array([-1.2, 1.0, -0.5, 0.7])
    if framework == "torch":
        x = torch.tensor(x0, requires_grad=True)
        tensor: Callable[[np.ndarray], Any] = torch.tensor
        make: Any = torch.optim.LBFGS
    else:
        x = Parameter(dlcore.tensor(x0, device=device))
        tensor = lambda v: dlcore.tensor(v, device=device)  # noqa: E731
        make = optim.LBFGS
    f = _rosenbrock if problem == "rosenbrock" else (
        lambda v: _quadratic(a, b)(v, tensor))
    opt = make([x], **kwargs)

    def closure() -> Any:
        opt.zero_grad()
        loss = f(x)
        loss.backward()
        return loss

    losses = []
    for k in range(outer):
        if split is not None and k == split:  # a new optimizer from the saved state
            saved = opt.state_dict()
            opt = make([x], **kwargs)
            opt.load_state_dict(saved)
        losses.append(float(opt.step(closure).item()))
    out = x.detach().numpy().copy()
    return out, losses


@needs_torch
@pytest.mark.parametrize(("problem", "kwargs"), LBFGS_CASES)
def test_lbfgs_matches_torch(device: str, problem: str, kwargs: dict) -> None:
    ours, our_losses = _lbfgs_run("dlcore", problem, kwargs, device, outer=3)
    ref, ref_losses = _lbfgs_run("torch", problem, kwargs, device, outer=3)
    np.testing.assert_allclose(ours, ref, rtol=RTOL, atol=1e-12)
    np.testing.assert_allclose(our_losses, ref_losses, rtol=RTOL, atol=1e-14)


@needs_torch
@pytest.mark.parametrize(("problem", "kwargs"), [LBFGS_CASES[0], LBFGS_CASES[2]])
def test_lbfgs_state_dict_round_trip(device: str, problem: str, kwargs: dict) -> None:
    kwargs = dict(kwargs, max_iter=4)
    whole, _ = _lbfgs_run("dlcore", problem, kwargs, device, outer=4)
    split, _ = _lbfgs_run("dlcore", problem, kwargs, device, outer=4, split=2)
    np.testing.assert_array_equal(whole, split)


def test_lbfgs_needs_a_closure() -> None:
    opt = optim.LBFGS([Parameter(dlcore.zeros(3))])
    with pytest.raises(RuntimeError, match="closure"):
        opt.step()


def test_lbfgs_strong_wolfe_on_a_linear_objective_extrapolates_to_the_bound() -> None:
    """A locally linear loss has equal slopes at every trial, so the cubic's minimiser is
    at infinity (its divisor g2 - g1 + 2*d2 is 0): PyTorch's tensor arithmetic gives -inf /
    +inf and clips it to the extrapolation bound, 10x the step each time, so with
    max_eval=10 the bracketing phase ends after 10 trials at t = 1e9 (torch 2.13: x = 1e9,
    11 closure calls). Python float arithmetic raised ZeroDivisionError there."""
    from dlcore.optim.lbfgs import _cubic_interpolate
    assert _cubic_interpolate(0.0, 0.0, -1.0, 1.0, -1.0, -1.0, bounds=(1.01, 10.0)) == 10.0
    x = Parameter(dlcore.tensor(np.array([0.0])))
    opt = optim.LBFGS([x], max_iter=1, max_eval=10, line_search_fn="strong_wolfe")
    calls = []

    def closure() -> Any:
        calls.append(1)
        opt.zero_grad()
        loss = (-x).sum()
        loss.backward()
        return loss

    opt.step(closure)
    assert x.numpy().tolist() == [1e9]
    assert len(calls) == 11


# ---- a PyTorch-style optimizer written by a user ---------------------------------------
def _my_sgd(base: type, no_grad: Any) -> type:
    """The same source for both frameworks: SGD with momentum, state in self.state[p]."""

    class MySGD(base):  # type: ignore[misc, valid-type]
        def __init__(self, params: Any, lr: float, momentum: float = 0.9) -> None:
            super().__init__(params, dict(lr=lr, momentum=momentum))

        def step(self, closure: Any = None) -> Any:
            with no_grad():
                for group in self.param_groups:
                    for p in group["params"]:
                        if p.grad is None:
                            continue
                        state = self.state[p]
                        if "momentum_buffer" not in state:
                            state["momentum_buffer"] = p.grad.clone()
                        else:
                            state["momentum_buffer"].mul_(group["momentum"]).add_(p.grad)
                        state["steps"] = state.get("steps", 0) + 1
                        p.add_(state["momentum_buffer"], alpha=-group["lr"])
            return None

    return MySGD


@needs_torch
def test_custom_optimizer_subclass(device: str) -> None:
    rng = np.random.default_rng(4)
    w0, b0 = rng.standard_normal((3, 5)), rng.standard_normal(3)
    xs, ys = rng.standard_normal((6, 8, 5)), rng.standard_normal((6, 8, 3))

    def train(fw: Any, base: type, tensor: Callable, params: list, split: bool) -> list:
        cls = _my_sgd(base, fw.no_grad)
        opt = cls(params, lr=0.05)
        for k, (x, y) in enumerate(zip(xs, ys)):
            if split and k == 3:
                saved = opt.state_dict()
                opt = cls(params, lr=0.05)
                opt.load_state_dict(saved)
            opt.zero_grad()
            w, b = params
            loss = (((tensor(x) @ w.T + b) - tensor(y)) ** 2).mean()
            loss.backward()
            opt.step()
        assert opt.state[params[0]]["steps"] == len(xs)
        return [p.detach().numpy().copy() for p in params]

    ref = train(torch, torch.optim.Optimizer, torch.tensor,
                [torch.tensor(w0, requires_grad=True), torch.tensor(b0, requires_grad=True)],
                False)
    for split in (False, True):
        ours = train(dlcore, optim.Optimizer, lambda v: dlcore.tensor(v, device=device),
                     [Parameter(dlcore.tensor(w0, device=device)),
                      Parameter(dlcore.tensor(b0, device=device))], split)
        for p, q in zip(ours, ref):
            np.testing.assert_allclose(p, q, rtol=RTOL, atol=1e-14)


@pytest.mark.parametrize("default", ["float32", "float64"])
def test_step_state_dtype_follows_the_default_dtype_as_pytorch(default: str) -> None:
    """state["step"] is float64 under a float64 default dtype and float32 otherwise
    (PyTorch's _get_scalar_dtype); dlcore kept float32 under both."""
    old = dlcore.get_default_dtype()
    dlcore.set_default_dtype(getattr(dlcore, default))
    try:
        p = dlcore.nn.Parameter(dlcore.ones(2))
        opt = dlcore.optim.Adam([p])
        p.grad = dlcore.ones(2)
        opt.step()
        assert opt.state[p]["step"].dtype == getattr(dlcore, default)
        assert float(opt.state[p]["step"]) == 1.0
    finally:
        dlcore.set_default_dtype(old)

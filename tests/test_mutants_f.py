"""Behaviour pinned down for mutation-testing survivors (mutmut over ops._util, ops.optim,
ops.rnn and the optim package: LBFGS, the lr schedulers, RMSprop): each test checks something
no test of the suite checked before, against an independent reference (values worked out by
hand, a plain loop, or PyTorch where it is installed)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import dlcore
from dlcore import optim
from dlcore.device import Device
from dlcore.dtypes import bfloat16
from dlcore.nn.parameter import Parameter
from dlcore.ops.optim import OPTIM
from dlcore.ops.rnn import rnn_layer

try:  # the reference where installed (never a dependency); other tests run without it
    import torch
except ImportError:
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch not installed")

CPU = Device("cpu")


# ---- ops._util: dims and reductions -------------------------------------------------------

def test_sum_over_a_repeated_dim_raises_naming_the_op_and_the_dims_as_given() -> None:
    """A reduction over a dim listed twice (also via a negative alias) raises RuntimeError
    naming the op and the dims the user passed, as PyTorch refuses it."""
    x = dlcore.tensor(np.ones((2, 3)))
    with pytest.raises(RuntimeError, match=r"^sum: dim \(0, -2\) appears multiple times$"):
        x.sum(dim=(0, -2))
    with pytest.raises(RuntimeError, match=r"^mean: dim \(1, 1\) appears multiple times$"):
        x.mean(dim=(1, 1))


def test_bfloat16_sum_accumulates_in_float32_and_rounds_once() -> None:
    """bfloat16 sums accumulate in float32, as PyTorch's do: 2^24 + 2^16 + 1 has no float32
    (its float32 sum, in any order, is the tie 2^24 + 2^16), whose rounding to bfloat16 (8
    significant bits) goes to even, 2^24. A wider accumulator would keep the +1 and round
    up to 2^24 + 2^17."""
    x = dlcore.tensor(np.array([2.0 ** 24, 2.0 ** 16, 1.0]).astype(bfloat16))
    total = x.sum()
    assert total.dtype == bfloat16
    assert float(total.numpy()) == 2.0 ** 24
    if torch is not None:
        ref = torch.tensor([2.0 ** 24, 2.0 ** 16, 1.0], dtype=torch.bfloat16).sum()
        assert float(ref) == 2.0 ** 24


# ---- ops.optim: the GradScaler update check case ------------------------------------------

def test_update_scale_check_case_follows_gradscaler_rules_from_scale_1000() -> None:
    """The "amp update scale" check case starts GradScaler's scale at 1000 and, for its
    pattern of clean and inf steps (growth 1.7 every 2 clean steps, backoff 0.3 on inf,
    tracker reset by either), gives PyTorch's _amp_update_scale_ sequence: each product in
    float64, rounded to float32 once."""
    out = OPTIM.checks["amp update scale"](CPU)["scales"]
    scale, tracker, want = np.float32(1000.0), 0, []
    for bad in (0, 0, 1, 0, 0, 0, 1, 1, 0, 0):
        if bad:
            scale, tracker = np.float32(float(scale) * 0.3), 0
        elif tracker + 1 == 2:
            scale, tracker = np.float32(float(scale) * 1.7), 0
        else:
            tracker += 1
        want.append(scale)
    np.testing.assert_array_equal(out, np.array(want, np.float32))
    assert out[1] == np.float32(1700.0) and out[2] == np.float32(510.0)


# ---- ops.rnn: gradients of another dtype ---------------------------------------------------

@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn_tanh"])
def test_rnn_layer_rounds_a_wider_output_gradient_to_its_dtype_first(mode: str) -> None:
    """A float32 recurrent layer given a float64 gradient for its output (backward(gradient=
    ...) keeps the tensor as given) computes its backward in float32 from that gradient
    rounded to float32: every input gradient equals, bit for bit, the one from the
    float32-rounded gradient."""
    rng = np.random.default_rng(3)
    T, N, I, H = 4, 2, 3, 5
    G = {"lstm": 4, "gru": 3, "rnn_tanh": 1}[mode] * H
    arrays = [rng.standard_normal(s).astype(np.float32)
              for s in ((T, N, I), (N, H), (N, H), (G, I), (G, H), (G,), (G,))]
    gy = rng.standard_normal((T, N, H))

    def grads(gradient: dlcore.Tensor) -> list[np.ndarray]:
        ts = [dlcore.tensor(a, requires_grad=True) for a in arrays]
        x, h0, c0, w_ih, w_hh, b_ih, b_hh = ts
        outs = rnn_layer(x, h0, c0 if mode == "lstm" else None, w_ih, w_hh, b_ih, b_hh, mode)
        outs[0].backward(gradient)
        return [t.grad.numpy() for t in ts if t.grad is not None]

    wide = grads(dlcore.tensor(gy))
    narrow = grads(dlcore.tensor(gy.astype(np.float32)))
    assert len(wide) == len(narrow) == (7 if mode == "lstm" else 6)
    for a, b in zip(wide, narrow):
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a, b)


# ---- optim.lbfgs: the strong-Wolfe line search ---------------------------------------------

def _lbfgs(framework: str, loss: Callable[[Any], Any], x0: list[float], lr: float,
           max_iter: int = 20) -> tuple[int, np.ndarray]:
    """One LBFGS step (strong Wolfe) from ``x0``: the closure's number of calls and the
    parameters after it."""
    if framework == "torch":
        x = torch.tensor(x0, dtype=torch.float64, requires_grad=True)
        opt: Any = torch.optim.LBFGS([x], lr=lr, max_iter=max_iter,
                                     line_search_fn="strong_wolfe")
    else:
        x = Parameter(dlcore.tensor(np.array(x0, np.float64)))
        opt = optim.LBFGS([x], lr=lr, max_iter=max_iter, line_search_fn="strong_wolfe")
    calls = [0]

    def closure() -> Any:
        calls[0] += 1
        opt.zero_grad()
        value = loss(x)
        value.backward()
        return value

    opt.step(closure)
    return calls[0], x.detach().numpy().copy()


def test_lbfgs_line_search_extrapolates_tenfold_until_the_curvature_condition() -> None:
    """(x - 1000)^2 from 0: the first step is t = lr / |g|_1 = 1 / 2000 along d = 2000, so
    x = 1; each extrapolation (the exact minimiser of the interpolating cubic, capped at 10
    times the step) goes to x = 10, 100, then 1000, where the gradient is 0 and the search
    and the optimizer stop: 5 closure calls in all (initial point, 1, 10, 100, 1000). Points
    that keep decreasing the loss never end the bracketing phase early."""
    def loss(x: Any) -> Any:
        return ((x - 1000.0) ** 2).sum()

    calls, x = _lbfgs("dlcore", loss, [0.0], 1.0)
    assert calls == 5
    assert x.tolist() == [1000.0]
    if torch is not None:
        ref_calls, ref_x = _lbfgs("torch", loss, [0.0], 1.0)
        assert (ref_calls, ref_x.tolist()) == (calls, x.tolist())


@needs_torch
@pytest.mark.parametrize(("name", "x0", "lr"), [("20 sin x + 2 x^2", [2.7], 5.0),
                                                 ("x^4", [2.0], 0.01),
                                                 ("x^4 + 4 x^2 - 17 x", [200.0], 1.0),
                                                 ("(x^2 - 1)^2", [3.0], 0.01)])
def test_lbfgs_strong_wolfe_matches_torch_through_extrapolation_and_zoom(
        name: str, x0: list[float], lr: float) -> None:
    """One LBFGS step with the strong-Wolfe search takes the closure calls torch.optim.LBFGS
    takes and lands where it does: small first steps that extrapolate several times (the
    cubic's step bounded below by t + (t - t_prev) / 100) and a zoom whose interpolated
    step falls at the bracket's low end and is moved inside it."""
    def loss(x: Any) -> Any:
        return {"20 sin x + 2 x^2": lambda: (x.sin() * 20.0 + x ** 2 * 2.0).sum(),
                "x^4": lambda: (x ** 4).sum(),
                "x^4 + 4 x^2 - 17 x": lambda: (x ** 4 + x ** 2 * 4.0 - x * 17.0).sum(),
                "(x^2 - 1)^2": lambda: ((x ** 2 - 1.0) ** 2).sum()}[name]()

    calls, x = _lbfgs("dlcore", loss, x0, lr)
    ref_calls, ref_x = _lbfgs("torch", loss, x0, lr)
    assert calls == ref_calls
    np.testing.assert_allclose(x, ref_x, rtol=1e-12, atol=0)


def test_lbfgs_rejects_parameter_groups_and_mixed_devices_naming_itself() -> None:
    """LBFGS takes one parameter group on one device: more groups, or parameters on two
    devices, raise ValueError naming LBFGS (as PyTorch's does)."""
    a, b = Parameter(dlcore.zeros(2)), Parameter(dlcore.zeros(2))
    with pytest.raises(ValueError, match=r"^LBFGS doesn't support per-parameter options "
                                         r"\(parameter groups\)$"):
        optim.LBFGS([{"params": [a]}, {"params": [b]}])
    c = Parameter(dlcore.zeros(2, device="emu"))
    with pytest.raises(ValueError, match=r"^LBFGS: all parameters must be on one device$"):
        optim.LBFGS([a, c])


# ---- optim.lr_scheduler ------------------------------------------------------------------

def test_resuming_a_scheduler_without_initial_lr_names_the_group() -> None:
    """A scheduler made with last_epoch != -1 for an optimizer none has scheduled raises
    KeyError naming 'initial_lr' and the param group, as PyTorch's does."""
    opt = optim.SGD([Parameter(dlcore.zeros(2))], lr=0.1)
    with pytest.raises(KeyError, match=r"param 'initial_lr' is not specified in "
                                       r"param_groups\[0\] when resuming an optimizer"):
        optim.lr_scheduler.StepLR(opt, step_size=2, last_epoch=3)


def test_step_lr_jump_to_an_epoch_uses_whole_decays() -> None:
    """StepLR.step(epoch) (PyTorch's closed form) sets lr = base * gamma^(epoch //
    step_size): with step_size 3 and gamma 0.5, epochs 2, 4, 7 and 9 give 1, 0.5, 0.25 and
    0.125 times the base lr."""
    opt = optim.SGD([Parameter(dlcore.zeros(2))], lr=0.8)
    sched = optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    got = []
    for epoch in (2, 4, 7, 9):
        sched.step(epoch)
        got.append(opt.param_groups[0]["lr"])
    assert got == [0.8, 0.4, 0.2, 0.1]
    assert sched.get_last_lr() == [0.1]


# ---- optim.rmsprop -----------------------------------------------------------------------

def test_rmsprop_takes_alpha_zero_and_then_steps_by_lr_times_the_sign() -> None:
    """alpha = 0 is allowed (PyTorch checks 0 <= alpha): the square average is then g^2, so a
    step is lr * g / (|g| + eps); a negative alpha raises ValueError naming it."""
    g = np.array([3.0, -0.5, 2.0], np.float64)
    p = Parameter(dlcore.tensor(np.zeros(3)))
    opt = optim.RMSprop([p], lr=0.1, alpha=0.0, eps=1e-8)
    for _ in range(2):
        p.grad = dlcore.tensor(g)
        opt.step()
    want = -2 * 0.1 * g / (np.abs(g) + 1e-8)
    np.testing.assert_allclose(p.detach().numpy(), want, rtol=1e-15)
    with pytest.raises(ValueError, match=r"^Invalid alpha value: -0\.1$"):
        optim.RMSprop([p], alpha=-0.1)

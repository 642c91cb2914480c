"""Mixed precision: autocast picks PyTorch's dtype per op, backward runs in the dtypes forward
used, and GradScaler follows PyTorch's scale rules (skips a step with inf/NaN gradients)."""

from __future__ import annotations

import numpy as np
import pytest
from op_check import on, rand

import dlcore
import dlcore.nn as nn
import dlcore.nn.functional as F
from dlcore import precision
from dlcore.ops.rnn import rnn_layer

F16, F32 = dlcore.float16, dlcore.float32


def _ops(device: str) -> dict:
    x = on(device, rand(4, 6, seed=1).astype(np.float32))
    w = on(device, rand(5, 6, seed=2).astype(np.float32))
    img = on(device, rand(1, 2, 5, 5, seed=3).astype(np.float32))
    k = on(device, rand(3, 2, 3, 3, seed=4).astype(np.float32))
    seq, h0 = on(device, rand(3, 2, 6, seed=5).astype(np.float32)), on(device, np.zeros(
        (2, 4), np.float32))
    w_ih, w_hh = on(device, rand(4, 6).astype(np.float32)), on(device, rand(4, 4).astype(
        np.float32))
    y = on(device, np.array([0, 1, 2, 3]))
    h = x.half()
    return {  # name: (call, dtype under autocast, dtype outside it)
        "matmul": (lambda: x @ w.mT, F16, F32), "mm": (lambda: x.mm(w.t()), F16, F32),
        "linear": (lambda: F.linear(x, w), F16, F32),
        "conv2d": (lambda: F.conv2d(img, k, padding=1), F16, F32),
        "conv_transpose2d": (lambda: F.conv_transpose2d(img, k.transpose(0, 1)), F16, F32),
        "rnn layer": (lambda: rnn_layer(seq, h0, None, w_ih, w_hh, None, None, "rnn_tanh")[0],
                      F16, F32),
        "softmax (float16 input)": (lambda: F.softmax(h, 1), F32, F16),
        "log_softmax (float16 input)": (lambda: h.log_softmax(1), F32, F16),
        "sum (float16 input)": (lambda: h.sum(), F32, F16),
        "mean (float16 input)": (lambda: h.mean(1), F32, F16),
        "cross_entropy (float16 logits)": (lambda: F.cross_entropy(h[:, :5], y), F32, F16),
        "mse_loss (float16 inputs)": (lambda: F.mse_loss(h, h * 2), F32, F16),
        "layer_norm (float16 input)": (lambda: F.layer_norm(h, (6,)), F32, F16),
        "add (float16 + float32 promotes)": (lambda: h + x, F32, F32),
        "relu keeps its input's dtype": (lambda: h.relu(), F16, F16),
    }


# On emu and cuda the low-precision ops here run float16 on kernels: convolutions on the tensor
# cores (tests/ops/test_conv_tc.py), the recurrent layer on the __half cells
# (tests/ops/test_rnn_half.py).
@pytest.mark.parametrize("name", list(_ops("cpu")))
def test_autocast_picks_the_documented_dtype(device: str, name: str) -> None:
    call, inside, outside = _ops(device)[name]
    with dlcore.autocast(dlcore.device(device).type, dtype=F16):
        assert call().dtype == inside
    assert call().dtype == outside  # outside the region: the usual rules


def test_regions_nest_disable_and_decorate() -> None:
    x = dlcore.ones(2, 2)
    with dlcore.autocast("cpu"):
        assert (x @ x).dtype == F16
        with dlcore.autocast("cpu", enabled=False):
            assert (x @ x).dtype == F32
        assert (x @ x).dtype == F16
        with dlcore.autocast("emu"):  # another device type: cpu's region still applies
            assert (x @ x).dtype == F16
    assert (x @ x).dtype == F32

    @dlcore.autocast("cpu")
    def f(a: dlcore.Tensor) -> dlcore.Tensor:
        return a @ a

    assert f(x).dtype == F16 and (x @ x).dtype == F32
    with pytest.raises(ValueError, match="16-bit float dtype"):
        dlcore.autocast("cpu", dtype=dlcore.float64)
    with pytest.raises(ValueError, match="device_type must be one of"):
        dlcore.autocast("tpu")


def test_parameters_are_cast_once_per_region() -> None:
    w = nn.Parameter(dlcore.ones(3, 3))
    with dlcore.autocast("cpu"):
        (a,) = precision.cast_low(w)
        (b,) = precision.cast_low(w)
        assert a is b and a.dtype == F16 and a.requires_grad
        with dlcore.autocast("cpu"):  # nested: the same cache
            assert precision.cast_low(w)[0] is a
    with dlcore.autocast("cpu"):
        assert precision.cast_low(w)[0] is not a  # a new region casts again


def test_autocast_gradients_match_float32_within_float16_bounds(device: str) -> None:
    """A 3-layer MLP: the float16 region's gradients of the float32 parameters equal the
    float32 ones to float16 precision: each float16 product is rounded to 11 bits (unit
    roundoff 2^-11), the 8-long dot products and 3 layers grow that to a few 1e-3 relative
    to the largest gradient; 1e-2 bounds it."""
    dlcore.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(),
                          nn.Linear(16, 4)).to(device)
    x = on(device, rand(32, 8, seed=6).astype(np.float32))
    y = on(device, np.arange(32) % 4)
    kind = dlcore.device(device).type
    grads = []
    for use in (False, True):
        model.zero_grad()
        with dlcore.autocast(kind, dtype=F16, enabled=use):
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        assert logits.dtype == (F16 if use else F32) and loss.dtype == F32
        loss.backward()
        assert all(p.grad.dtype == F32 for p in model.parameters())
        grads.append([p.grad.numpy() for p in model.parameters()])
    for g32, g16 in zip(*grads):
        np.testing.assert_allclose(g16, g32, atol=1e-2 * np.abs(g32).max(), rtol=0)


# ---- GradScaler -------------------------------------------------------------------------

def _reference_scales(pattern: list[bool], init: float, growth: float, backoff: float,
                      interval: int) -> list[float]:
    """PyTorch's documented rule, written out: backoff and restart the count on inf/NaN,
    grow after `interval` clean steps in a row."""
    scale, tracker, out = init, 0, []
    for bad in pattern:
        if bad:
            scale, tracker = scale * backoff, 0
        else:
            tracker += 1
            if tracker == interval:
                scale, tracker = scale * growth, 0
        out.append(scale)
    return out


def _step(model: nn.Module, opt: dlcore.optim.Optimizer, scaler: dlcore.amp.GradScaler,
          bad: bool) -> bool:
    opt.zero_grad()
    x = dlcore.ones(4, 3) * (float("nan") if bad else 1.0)
    scaler.scale(model(x).sum()).backward()
    before = model.weight.numpy().copy()
    scaler.step(opt)
    scaler.update()
    return not np.array_equal(before, model.weight.numpy())


def test_grad_scaler_scale_sequence_and_skipped_steps() -> None:
    pattern = [False, False, True, False, False, False, True, True, False, False, False]
    model = nn.Linear(3, 2)
    opt = dlcore.optim.SGD(model.parameters(), lr=0.1)
    scaler = dlcore.amp.GradScaler("cpu", init_scale=1024.0, growth_factor=2.0,
                                   backoff_factor=0.25, growth_interval=3)
    scales, stepped = [], []
    with np.errstate(invalid="ignore"):
        for bad in pattern:
            stepped.append(_step(model, opt, scaler, bad))
            scales.append(scaler.get_scale())
    assert scales == _reference_scales(pattern, 1024.0, 2.0, 0.25, 3)
    assert stepped == [not bad for bad in pattern]
    assert np.isfinite(model.weight.numpy()).all()


def test_grad_scaler_unscales_exactly_what_was_scaled() -> None:
    model = nn.Linear(3, 2)
    x = dlcore.tensor(rand(5, 3, seed=9).astype(np.float32))
    model(x).sum().backward()
    want = [p.grad.numpy().copy() for p in model.parameters()]
    opt = dlcore.optim.SGD(model.parameters(), lr=0.1)
    opt.zero_grad()
    scaler = dlcore.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    scaler.scale(model(x).sum()).backward()
    scaler.unscale_(opt)
    for p, w in zip(model.parameters(), want):
        np.testing.assert_allclose(p.grad.numpy(), w, rtol=1e-6)
    nn.utils.clip_grad_norm_(model.parameters(), 0.5)  # the documented use of unscale_
    clipped = [p.grad.numpy().copy() for p in model.parameters()]
    before = [p.numpy().copy() for p in model.parameters()]
    scaler.step(opt)
    for p, b, g in zip(model.parameters(), before, clipped):
        np.testing.assert_allclose(p.numpy(), b - 0.1 * g, rtol=1e-6)
    with pytest.raises(RuntimeError, match="step\\(\\) has already been called"):
        scaler.step(opt)
    scaler.update()


def test_grad_scaler_misuse_and_state() -> None:
    model = nn.Linear(2, 1)
    opt = dlcore.optim.SGD(model.parameters(), lr=0.1)
    scaler = dlcore.amp.GradScaler("cpu", init_scale=8.0, growth_interval=5)
    scaler.scale(model(dlcore.ones(1, 2)).sum()).backward()
    scaler.unscale_(opt)
    with pytest.raises(RuntimeError, match="unscale_\\(\\) has already been called"):
        scaler.unscale_(opt)
    scaler.step(opt)
    scaler.update()
    state = scaler.state_dict()
    assert state == {"scale": 8.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                     "growth_interval": 5, "_growth_tracker": 1}
    other = dlcore.amp.GradScaler("cpu")
    other.load_state_dict(state)
    assert other.state_dict() == state
    with pytest.raises(RuntimeError, match="no inf checks were recorded"):
        other.update()
    off = dlcore.amp.GradScaler("cpu", enabled=False)
    loss = model(dlcore.ones(1, 2)).sum()
    assert off.scale(loss) is loss and off.get_scale() == 1.0 and off.state_dict() == {}


@pytest.mark.skipif(dlcore.cuda.is_available(), reason="checks the no-GPU fallback")
def test_grad_scaler_for_cuda_without_a_gpu_disables_itself_with_a_warning() -> None:
    with pytest.warns(UserWarning, match="CUDA is not available; disabling it"):
        scaler = dlcore.amp.GradScaler("cuda")
    assert not scaler.is_enabled()


def test_grad_scaler_on_emu_runs_the_kernel_optimizer() -> None:
    model = nn.Linear(3, 2).to("emu")
    opt = dlcore.optim.Adam(model.parameters(), lr=1e-2)
    scaler = dlcore.amp.GradScaler("emu", init_scale=256.0)
    x = dlcore.ones(4, 3, device="emu")
    with dlcore.autocast("emu"):
        loss = model(x).float().sum()
    scaler.scale(loss).backward()
    before = model.weight.numpy().copy()
    scaler.step(opt)
    scaler.update()
    assert not np.array_equal(before, model.weight.numpy()) and scaler.get_scale() == 256.0


def test_grad_scaler_with_backward_and_assigned_gradients(device: str) -> None:
    """The bias's gradient from backward sits in the optimizer's flat gradient buffer and is
    unscaled there (one fused pass); the weight's, assigned by hand, is unscaled where it is
    and stays the user's tensor; an inf in either skips the step."""
    model = nn.Linear(3, 2).to(device)
    opt = dlcore.optim.SGD(model.parameters(), lr=0.1)
    scaler = dlcore.amp.GradScaler(dlcore.device(device).type, init_scale=64.0)
    x = on(device, rand(5, 3, seed=11).astype(np.float32))
    scaler.scale(model(x).sum()).backward()
    bias_grad = model.bias.grad.numpy() / 64
    mine = dlcore.ones(2, 3, device=device) * 32.0
    model.weight.grad = mine
    scaler.unscale_(opt)
    assert model.weight.grad is mine
    np.testing.assert_array_equal(mine.numpy(), np.full((2, 3), 0.5, np.float32))
    np.testing.assert_allclose(model.bias.grad.numpy(), bias_grad, rtol=1e-6)
    w0, b0 = model.weight.numpy().copy(), model.bias.numpy().copy()
    scaler.step(opt)
    scaler.update()
    np.testing.assert_allclose(model.weight.numpy(), w0 - 0.1 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(model.bias.numpy(), b0 - 0.1 * bias_grad, rtol=1e-6)

    opt.zero_grad()
    scaler.scale(model(x).sum()).backward()
    model.weight.grad = dlcore.ones(2, 3, device=device) * float("inf")
    w0, b0 = model.weight.numpy().copy(), model.bias.numpy().copy()
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 32.0
    np.testing.assert_array_equal(model.weight.numpy(), w0)
    np.testing.assert_array_equal(model.bias.numpy(), b0)

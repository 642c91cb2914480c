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
from dlcore.device import Device
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
    low = dlcore.bfloat16  # the cpu default, as PyTorch's
    with dlcore.autocast("cpu"):
        assert (x @ x).dtype == low
        with dlcore.autocast("cpu", enabled=False):
            assert (x @ x).dtype == F32
        assert (x @ x).dtype == low
        with dlcore.autocast("emu"):  # another device type: cpu's region still applies
            assert (x @ x).dtype == low
        with dlcore.autocast("cpu", dtype=F16):
            assert (x @ x).dtype == F16
    assert (x @ x).dtype == F32

    @dlcore.autocast("cpu")
    def f(a: dlcore.Tensor) -> dlcore.Tensor:
        return a @ a

    assert f(x).dtype == low and (x @ x).dtype == F32
    with pytest.raises(ValueError, match="16-bit float dtype"):
        dlcore.autocast("cpu", dtype=dlcore.float64)
    with pytest.raises(ValueError, match="device_type must be one of"):
        dlcore.autocast("tpu")


def test_parameters_are_cast_once_per_region() -> None:
    w = nn.Parameter(dlcore.ones(3, 3))
    with dlcore.autocast("cpu"):
        (a,) = precision.cast_low(w)
        (b,) = precision.cast_low(w)
        assert a is b and a.dtype == dlcore.bfloat16 and a.requires_grad
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


# ---- GradScaler on the device: no host read, PyTorch's scale rules ---------------------------
try:
    import torch
except ImportError:  # pragma: no cover - torch is optional
    torch = None


def _torch_scales(pattern: list[bool], **options: float) -> list[tuple[float, int]]:
    """torch.amp.GradScaler on the CPU (its _amp_update_scale_), driven by gradients that
    are inf or not."""
    p = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([p], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", **options)
    out = []
    for bad in pattern:
        opt.zero_grad()
        scaler.scale((p * (float("inf") if bad else 1.0)).sum()).backward()
        scaler.step(opt)
        scaler.update()
        out.append((scaler.get_scale(), scaler.state_dict()["_growth_tracker"]))
    return out


PATTERN = [False, False, True, False, False, False, True, True, False, False, False, False]


@pytest.mark.skipif(torch is None, reason="PyTorch not installed")
@pytest.mark.parametrize("options", [
    {"init_scale": 1024.0, "growth_factor": 2.0, "backoff_factor": 0.25, "growth_interval": 3},
    {"init_scale": 1000.0, "growth_factor": 1.7, "backoff_factor": 0.3, "growth_interval": 2},
    {"init_scale": 3e38, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 1}])
def test_grad_scaler_scales_and_tracker_equal_torchs(device: str, options: dict) -> None:
    """Awkward factors (each product rounds once from float64, as PyTorch's) and a scale
    that would grow past float32's range (kept, as PyTorch keeps it)."""
    p = nn.Parameter(dlcore.ones(2, device=device))
    opt = dlcore.optim.SGD([p], lr=0.1)
    scaler = dlcore.amp.GradScaler(dlcore.device(device).type, **options)
    got = []
    with np.errstate(invalid="ignore", over="ignore"):
        for bad in PATTERN:
            opt.zero_grad()
            scaler.scale((p * (float("inf") if bad else 1.0)).sum()).backward()
            scaler.step(opt)
            scaler.update()
            got.append((scaler.get_scale(), scaler.state_dict()["_growth_tracker"]))
    assert got == _torch_scales(PATTERN, **options)


@pytest.mark.skipif(torch is None, reason="PyTorch not installed")
def test_grad_scaler_scale_keeps_pytorchs_dtypes(device: str) -> None:
    """outputs * a 0-d float32 scale tensor: a float16 tensor stays float16, a 0-d float16
    loss becomes float32, float64 stays float64 (what torch gives)."""
    scaler = dlcore.amp.GradScaler(dlcore.device(device).type, init_scale=8.0)
    tscaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    for shape in ((3,), ()):
        for dt, tdt in ((np.float16, torch.float16), (np.float32, torch.float32),
                        (np.float64, torch.float64)):
            x = on(device, np.ones(shape, dt), requires_grad=True)
            y = scaler.scale(x)
            want = tscaler.scale(torch.ones(shape, dtype=tdt))
            assert str(y.dtype) == str(want.dtype).removeprefix("torch.")
            assert y.shape == tuple(want.shape) and float(y.sum().item()) == float(want.sum())
            y.sum().backward()
            assert x.grad.dtype == x.dtype and float(x.grad.sum().item()) == 8.0 * max(
                1, int(np.prod(shape)))


def _scaled_step(model: nn.Module, opt: dlcore.optim.Optimizer,
                 scaler: dlcore.amp.GradScaler, x: dlcore.Tensor) -> None:
    opt.zero_grad()
    scaler.scale(model(x).sum()).backward()
    scaler.step(opt)
    scaler.update()


def _no_host_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every way dlcore reads device memory on the host raises."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("host read of device memory during the step")

    monkeypatch.setattr(Device, "to_host", refuse)
    for name in ("numpy", "item", "tolist", "__array__", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(dlcore.Tensor, name, refuse)


def _recorded_launches(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """(kernel, grid, block, host scalar arguments) of every emu launch from now on."""
    log: list[tuple] = []
    runner = dlcore.device("emu").kernels
    fetch = runner.function

    def function(source: object, name: str) -> object:
        run = fetch(source, name)

        def launch(grid: object, block: object, args: object, shared_mem: int = 0) -> None:
            scalars = tuple(a.item() for a in args if isinstance(a, np.generic))
            log.append((name, tuple(grid), tuple(block), scalars))
            run(grid, block, args, shared_mem)
        return launch

    monkeypatch.setattr(runner, "function", function)
    return log


@pytest.mark.parametrize("cls, options", [(dlcore.optim.Adam, {"capturable": True}),
                                          (dlcore.optim.AdamW, {"capturable": True}),
                                          (dlcore.optim.SGD, {"momentum": 0.9})])
def test_a_whole_scaled_step_reads_nothing_back_on_emu(monkeypatch: pytest.MonkeyPatch,
                                                       cls: type, options: dict) -> None:
    """scale, backward, step and update with no host read of device memory: every read path
    raises during the steps (clean ones and one with an inf); the values are checked after."""
    dlcore.manual_seed(0)
    model = nn.Linear(3, 2).to("emu")
    opt = cls(model.parameters(), lr=1e-2, **options)
    scaler = dlcore.amp.GradScaler("emu", init_scale=2.0 ** 10, growth_interval=2)
    clean = dlcore.ones(4, 3, device="emu")
    bad = clean * float("inf")
    _scaled_step(model, opt, scaler, clean)  # warm-up: kernels fetched, state made
    weights = []
    for x in (clean, bad, clean, clean):
        with monkeypatch.context() as m, np.errstate(invalid="ignore"):
            _no_host_reads(m)
            _scaled_step(model, opt, scaler, x)
        weights.append(model.weight.numpy().copy())
    # grew after steps 1-2, backed off at 3, grew again after 4-5
    assert scaler.get_scale() == 2.0 ** 11 / 2 * 2
    assert not np.array_equal(weights[0], weights[2]) and np.isfinite(weights).all()
    np.testing.assert_array_equal(weights[0], weights[1])  # the skipped step


def test_scaled_steps_launch_the_same_kernels_with_the_same_scalars(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """What a graph needs: the launches (names, shapes, host scalars) of a clean step, a
    skipped one and later clean ones are identical."""
    dlcore.manual_seed(0)
    model = nn.Linear(3, 2).to("emu")
    opt = dlcore.optim.Adam(model.parameters(), lr=1e-2, capturable=True)
    scaler = dlcore.amp.GradScaler("emu", init_scale=2.0 ** 10)
    clean = dlcore.ones(4, 3, device="emu")
    bad = clean * float("inf")
    _scaled_step(model, opt, scaler, clean)
    steps = []
    with np.errstate(invalid="ignore"):
        for x in (clean, bad, clean):
            with monkeypatch.context() as m:
                log = _recorded_launches(m)
                _scaled_step(model, opt, scaler, x)
            steps.append(log)
    optimizer_kernels = [e[0] for e in steps[0]]
    assert "count_steps" in optimizer_kernels and "amp_update_scale" in optimizer_kernels
    assert steps[0] == steps[1] == steps[2]


def test_a_skipped_scaled_step_leaves_parameters_and_state_bit_identical() -> None:
    dlcore.manual_seed(0)
    model = nn.Linear(3, 2).to("emu")
    opt = dlcore.optim.Adam(model.parameters(), lr=1e-2, capturable=True)
    scaler = dlcore.amp.GradScaler("emu", init_scale=64.0)
    x = dlcore.ones(4, 3, device="emu")
    _scaled_step(model, opt, scaler, x)
    params = [p.numpy().copy() for p in model.parameters()]
    state = [{k: v.numpy().copy() for k, v in s.items()} for s in opt.state.values()]
    with np.errstate(invalid="ignore"):
        _scaled_step(model, opt, scaler, x * float("nan"))
    assert scaler.get_scale() == 32.0
    for a, p in zip(params, model.parameters()):
        np.testing.assert_array_equal(a, p.numpy())
    for a, s in zip(state, opt.state.values()):
        assert a.keys() == s.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], s[k].numpy())
    assert all(s["step"].item() == 1.0 for s in opt.state.values())


def test_the_flag_of_each_optimizer_skips_only_its_own_step(device: str) -> None:
    """Two optimizers, one with an inf: its step is skipped, the other's runs, and the scale
    backs off once."""
    a, b = nn.Linear(2, 1).to(device), nn.Linear(2, 1).to(device)
    capturable = {"capturable": True} if device != "cpu" else {}
    opts = [dlcore.optim.Adam(a.parameters(), lr=0.1, **capturable),
            dlcore.optim.Adam(b.parameters(), lr=0.1, **capturable)]
    scaler = dlcore.amp.GradScaler(dlcore.device(device).type, init_scale=16.0)
    x = dlcore.ones(1, 2, device=device)
    for opt in opts:
        opt.zero_grad()
    before = [a.weight.numpy().copy(), b.weight.numpy().copy()]
    with np.errstate(invalid="ignore"):
        scaler.scale(a(x).sum() + b(x * float("inf")).sum()).backward()
    for opt in opts:
        scaler.step(opt)
    scaler.update()
    assert not np.array_equal(before[0], a.weight.numpy())
    np.testing.assert_array_equal(before[1], b.weight.numpy())
    assert scaler.get_scale() == 8.0


def test_more_optimizers_than_flags_and_new_scale(device: str) -> None:
    models = [nn.Linear(2, 1).to(device) for _ in range(6)]
    opts = [dlcore.optim.SGD(m.parameters(), lr=0.1) for m in models]
    scaler = dlcore.amp.GradScaler(dlcore.device(device).type, init_scale=4.0,
                                   growth_interval=1)
    x = dlcore.ones(1, 2, device=device)
    with np.errstate(invalid="ignore"):
        scaler.scale(sum([m(x if i != 5 else x * float("nan")).sum()
                          for i, m in enumerate(models)])).backward()
    for opt in opts:
        scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 2.0  # the sixth's inf counted
    scaler.update(new_scale=dlcore.tensor(100.0, device=device))
    assert scaler.get_scale() == 100.0
    scaler.update(new_scale=5.0)
    assert scaler.state_dict()["scale"] == 5.0


@pytest.mark.skipif(not hasattr(dlcore.cuda, "CUDAGraph"), reason="no CUDA graphs")
def test_a_captured_scaled_step_replays_what_eager_steps_do() -> None:
    """The whole step (forward, backward, capturable Adam, GradScaler) captured once on emu
    and replayed over inputs, one of them inf: the weights and scales of eager steps."""
    xs = [np.ones((4, 3), np.float32) * (np.inf if i == 3 else i + 1) for i in range(6)]

    def run(graphed: bool) -> list[tuple[np.ndarray, float]]:
        dlcore.manual_seed(0)
        model = nn.Linear(3, 2).to("emu")
        opt = dlcore.optim.Adam(model.parameters(), lr=1e-2, capturable=True)
        scaler = dlcore.amp.GradScaler("emu", init_scale=2.0 ** 10, growth_interval=2)
        static = dlcore.tensor(xs[0], device="emu")

        def step() -> None:
            scaler.scale(model(static).sum()).backward()
            scaler.step(opt)
            scaler.update()

        graph, out = None, []
        for i, x in enumerate(xs):
            static.array[...] = x
            opt.zero_grad(set_to_none=False)
            with np.errstate(invalid="ignore"):
                if graph is not None:
                    graph.replay()
                else:
                    step()
                    if graphed and i == 0:  # warmed up: capture the next step, replay it
                        graph = dlcore.cuda.CUDAGraph()
                        opt.zero_grad(set_to_none=False)
                        with dlcore.cuda.graph(graph, device="emu"):
                            step()
            out.append((model.weight.numpy().copy(), scaler.get_scale()))
        return out

    for (want, want_scale), (got, got_scale) in zip(run(False), run(True)):
        np.testing.assert_array_equal(got, want)
        assert got_scale == want_scale

"""float16 parameters through the optimizers: float16 state, float32 arithmetic, one rounding
per stored value, on every device (the ``*_half`` kernels of kernels/optim.cu on emu and cuda,
the NumPy rules in float32 on cpu).

The bounds, derived from that rule. A step's float32 result x32 is rounded to float16 once, so
each stored value is within half a float16 ulp of the float32 step taken from the same float16
values -- and is exactly float16(x32) when that step is computed with the same float32
operations: the kernels' float instantiations on emu and cuda (same formula functor, same
contractions), the float32 NumPy rules on cpu. The kernels and the NumPy rules differ in
float32 only by FMA contraction (a few float32 ulps, tests/optim/test_optimizers.py), so from
the same inputs their float16 results are equal or one float16 ulp apart.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import dlcore
from dlcore import optim
from dlcore.device import device_count
from dlcore.kernels import recorded_launches
from dlcore.nn.parameter import Parameter

# 317 + 340 + 3 = 660 elements: the half kernels' 16-byte path takes 82 vectors of 8 halves
# and a scalar tail of 4 (the float kernels': 165 vectors of 4, no tail)
SHAPES = ((317,), (17, 20), (3,))
U = 2.0**-11  # float16's unit roundoff: half an ulp, relative
SUBNORMAL = 2.0**-25  # half the spacing of float16's subnormals: the absolute rounding floor

CASES = [
    (optim.SGD, {"lr": 0.1}),
    (optim.SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    (optim.Adam, {"lr": 1e-2}),
    (optim.Adam, {"amsgrad": True, "weight_decay": 0.1, "maximize": True, "eps": 1e-6}),
    (optim.AdamW, {"lr": 0.01, "weight_decay": 0.1}),
    (optim.RMSprop, {}),
    (optim.RMSprop, {"momentum": 0.5, "centered": True, "weight_decay": 0.1}),
    (optim.Adagrad, {"lr_decay": 0.05, "weight_decay": 0.1}),
]
IDS = [f"{cls.__name__}-{i}" for i, (cls, _) in enumerate(CASES)]


def _skip_without_gpu(device: str) -> None:
    if device == "cuda" and device_count() == 0:
        pytest.skip("no CUDA device")


def _arrays(seed: int, steps: int) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    """Float16 starting parameters and ``steps`` sets of float16 gradients."""
    rng = np.random.default_rng(seed)
    start = [rng.standard_normal(s).astype(np.float16) for s in SHAPES]
    grads = [[(0.5 * rng.standard_normal(s)).astype(np.float16) for s in SHAPES]
             for _ in range(steps)]
    return start, grads


def _optimizer(cls: type, options: dict, device: str, start: list[np.ndarray],
               dtype: Any) -> tuple[list[Parameter], optim.Optimizer]:
    params = [Parameter(dlcore.tensor(a.astype(dtype), device=device)) for a in start]
    return params, cls(params, **options)


def _stored(params: list[Parameter], opt: optim.Optimizer) -> list[np.ndarray]:
    """Every value a step stores: the parameters, then their state arrays by name."""
    out = [p.numpy().copy() for p in params]
    for p in params:
        state = opt.state.get(p, {})
        out += [state[k].numpy().copy() for k in sorted(state) if k != "step"]
    return out


def _copy_into(dst: tuple[list[Parameter], optim.Optimizer],
               src: tuple[list[Parameter], optim.Optimizer]) -> None:
    """Give ``dst`` the values of ``src``'s parameters and state (cast to ``dst``'s dtype;
    float16 into float32 exactly); the step counts already agree."""
    for p_dst, p_src in zip(dst[0], src[0]):
        p_dst.array[...] = dlcore.tensor(p_src.numpy(), device=p_dst.device).to(p_dst.dtype).array
        state = src[1].state.get(p_src, {})
        for name, value in state.items():
            if name != "step":
                target = dst[1].state[p_dst][name]
                target.array[...] = dlcore.tensor(value.numpy(), device=target.device).to(
                    target.dtype).array


def _step(run: tuple[list[Parameter], optim.Optimizer], grads: list[np.ndarray]) -> None:
    params, opt = run
    for p, g in zip(params, grads):
        p.grad = dlcore.tensor(g, device=p.device).to(p.dtype)
    opt.step()


def _ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance in float16 ulps (adjacent float16 values are 1 apart; +0 and -0 are equal)."""
    def ordered(x: np.ndarray) -> np.ndarray:
        bits = x.astype(np.float16).view(np.uint16).astype(np.int64)
        return np.where(bits & 0x8000, -(bits & 0x7FFF), bits)
    return np.abs(ordered(a) - ordered(b))


@pytest.mark.parametrize("cls, options", CASES, ids=IDS)
def test_each_step_is_the_float32_step_rounded_once(device: str, cls: type,
                                                    options: dict) -> None:
    """Four steps; before each, a float32 twin takes the float16 parameters and state, both
    step with the same gradient, and every stored float16 value must be the twin's float32
    value rounded to float16 (so within half a float16 ulp of it), bit for bit."""
    start, grads = _arrays(0, 4)
    half = _optimizer(cls, options, device, start, np.float16)
    wide = _optimizer(cls, options, device, start, np.float32)
    for step, g in enumerate(grads):
        _copy_into(wide, half)
        _step(half, g)
        _step(wide, [a.astype(np.float32) for a in g])
        got, want = _stored(*half), _stored(*wide)
        assert len(got) == len(want) and all(a.dtype == np.float16 for a in got)
        for k, (a, b) in enumerate(zip(got, want)):
            np.testing.assert_array_equal(a, b.astype(np.float16),
                                          err_msg=f"step {step + 1}, stored array {k}")


@pytest.mark.parametrize("kernel_device", ["emu", "cuda"])
@pytest.mark.parametrize("cls, options", CASES, ids=IDS)
def test_kernel_and_numpy_steps_agree_to_one_ulp(kernel_device: str, cls: type,
                                                 options: dict) -> None:
    """From the same float16 values (the cpu twin re-synchronised before every step), each
    stored value is equal or one float16 ulp apart (see the module docstring). A pair differs
    only where a float16 rounding boundary falls between float32 results a few float32 ulps
    apart: about 2^-10 of the values; at most 1% is ten times that."""
    _skip_without_gpu(kernel_device)
    start, grads = _arrays(1, 6)
    kernel = _optimizer(cls, options, kernel_device, start, np.float16)
    numpy = _optimizer(cls, options, "cpu", start, np.float16)
    differ = total = 0
    for g in grads:
        _copy_into(numpy, kernel)
        _step(kernel, g)
        _step(numpy, g)
        for a, b in zip(_stored(*kernel), _stored(*numpy)):
            distance = _ulps(a, b)
            assert distance.max() <= 1
            differ += int((distance > 0).sum())
            total += distance.size
    assert differ <= 0.01 * total


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_in_float16_tracks_float32_within_its_roundings(device: str,
                                                            momentum: float) -> None:
    """20 SGD steps from the same float16 start with the same float16 gradients, one run in
    float16 and one in float32 throughout. Each float16 step rounds the parameter once
    (error <= U |p| + SUBNORMAL) and, with momentum, the buffer b once; a buffer error decays
    by ``momentum`` per step, so it stays below (U max|b| + SUBNORMAL) / (1 - momentum) and
    moves p by lr times that per step. Errors add over the steps (no weight decay: a
    parameter error passes on unchanged); the float32 run's own roundings (2^-24 relative per
    operation) add a float32 ulp or two per step."""
    _skip_without_gpu(device)
    steps, lr = 20, 0.01
    start, grads = _arrays(2, steps)
    options = {"lr": lr, "momentum": momentum}
    half = _optimizer(optim.SGD, options, device, start, np.float16)
    wide = _optimizer(optim.SGD, options, device, start, np.float32)
    p_max, b_max = max(np.abs(a).max() for a in start), 0.0
    for g in grads:
        _step(half, g)
        _step(wide, [a.astype(np.float32) for a in g])
        p_max = max(p_max, *(np.abs(p.numpy()).max() for p in wide[0]))
        if momentum:
            b_max = max(b_max, *(np.abs(wide[1].state[p]["momentum_buffer"].numpy()).max()
                                 for p in wide[0]))
    buffer_error = (U * b_max + SUBNORMAL) / (1 - momentum) if momentum else 0.0
    bound = steps * (U * p_max + SUBNORMAL + lr * buffer_error + 2 * 2.0**-24 * p_max)
    for p16, p32 in zip(half[0], wide[0]):
        error = np.abs(p16.numpy().astype(np.float64) - p32.numpy())
        assert error.max() <= bound, (error.max(), bound)


def test_grad_scaler_unscale_of_float16_gradients(device: str) -> None:
    """GradScaler's fused pass over a float16 bucket: each gradient becomes float16(float32(g)
    * float32(inv_scale)), one rounding (inv_scale is never rounded to float16, which would
    move 1/3 by 2^-12 relative), and an inf anywhere is found."""
    _skip_without_gpu(device)
    start, grads = _arrays(3, 1)
    params, opt = _optimizer(optim.SGD, {"lr": 0.1}, device, start, np.float16)
    weights = [dlcore.tensor(g, device=device) for g in grads[0]]
    for inv_scale, bad in ((1 / 3, None), (1 / 1024, (1, 5))):
        opt.zero_grad()
        dlcore.autograd.backward([(p * w).sum() for p, w in zip(params, weights)])  # slots
        if bad is not None:
            params[bad[0]].grad.array[bad[1] // 20, bad[1] % 20] = np.inf
        before = [p.grad.numpy().astype(np.float32) for p in params]
        found = opt._unscale_grads_(inv_scale)
        assert found == (bad is not None)
        for p, g in zip(params, before):
            want = (g * np.float32(inv_scale)).astype(np.float16)
            np.testing.assert_array_equal(p.grad.numpy(), want)


def test_float16_parameters_get_a_bucket_and_one_launch_of_their_own() -> None:
    """The optimizer groups by (device, dtype): float16 and float32 parameters of one group make
    two buckets, each updated by one launch per step; the float16 bucket's 16-byte path moves
    8 halves per thread (ceil(660 / 8) = 83 threads: one block)."""
    start, grads = _arrays(4, 2)
    params = [Parameter(dlcore.tensor(a, device="emu")) for a in start]
    params.append(Parameter(dlcore.ones(4100, dtype=dlcore.float32, device="emu")))
    opt = optim.Adam(params, lr=1e-2)
    assert sorted(str(b.dtype) for b in opt._buckets[0]) == ["float16", "float32"]
    for g in grads:
        opt.zero_grad()
        loss = sum([(p * dlcore.tensor(w, device="emu")).sum() for p, w in zip(params, g)])
        (loss + params[-1].sum()).backward()
        with recorded_launches() as launches:
            opt.step()
        assert [(launch.kernel, launch.grid) for launch in launches] == [
            ("optim.cu:adam_step_half", (1,)), ("optim.cu:adam_step<float>", (5,))]
    assert all(p.dtype == np.float16 for p in params[:-1])
    assert all(opt.state[p]["exp_avg"].dtype == np.float16 for p in params[:-1])

"""The launch layer: arguments checked against the kernels' declared parameter types, compile
caches that see header edits, and launches that run under the tensors' device (emu:1 here,
cuda:1 on a machine with two GPUs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import dlcore
from dlcore.device import Device, device_count
from dlcore.kernels import KernelRunner, kernel_source
from dlcore.ops.rnn import rnn_layer

DEVICES = ["emu"] + (["cuda"] if device_count() else [])


def _adam_args(xp: object, n: int = 5) -> list:
    arrays = [xp.ones(n, dtype=np.float32) for _ in range(5)]  # type: ignore[attr-defined]
    scalars = [np.float32(v) for v in (1.0, 0.0, 0.1, 0.999, 0.001, 0.01, 1.0, 1e-8)]
    return [*arrays, np.int64(n), *scalars, np.int32(0),
            xp.zeros(1, np.int32), xp.zeros(1, np.float64)]  # type: ignore[attr-defined]


@pytest.mark.parametrize("device", DEVICES)
def test_well_typed_launch_runs(device: str) -> None:
    dev = Device(device)
    args = _adam_args(dev.xp)
    dev.kernels.function("optim.cu", "adam_step<float>")((1,), (32,), args)
    assert float(dev.to_host(args[0])[0]) != 1.0  # the parameter moved


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("position, value, message", [
    (1, "float64 array", r"parameter 'grad' is float\*, an array of float32; got an array of "
                         r"float64"),
    (5, np.int32(5), r"parameter 'n' is long long, a NumPy int64 scalar; got a NumPy int32"),
    (5, 5, r"parameter 'n' is long long, a NumPy int64 scalar; got int 5"),
    (6, np.float64(1.0), r"parameter 'decay' is float, a NumPy float32 scalar; got a NumPy "
                         r"float64"),
    (0, np.float32(1.0), r"parameter 'param' is float\*, an array of float32; got float32"),
])
def test_wrong_argument_types_raise_naming_kernel_parameter_and_types(
        device: str, position: int, value: object, message: str) -> None:
    """CuPy checks none of this: an int64 array passed as const int* silently corrupts."""
    dev = Device(device)
    args = _adam_args(dev.xp)
    args[position] = dev.xp.ones(5, dtype=np.float64) if value == "float64 array" else value
    with pytest.raises(TypeError, match=r"kernel optim.cu:adam_step<float>: " + message):
        dev.kernels.function("optim.cu", "adam_step<float>")((1,), (32,), args)


def test_wrong_argument_count_raises() -> None:
    dev = Device("emu")
    with pytest.raises(TypeError, match=r"adam_step<float>: takes 17 arguments \(param, grad, "):
        dev.kernels.function("optim.cu", "adam_step<float>")((1,), (32,), _adam_args(np)[:-1])


def test_signatures_substitute_template_arguments() -> None:
    sig = kernel_source("pool2d.cu").signature("maxpool2d_backward<double>")
    assert [(p.name, p.ctype, p.pointer) for p in sig[:4]] == [
        ("gy", "double", True), ("indices", "int", True), ("gx", "double", True),
        ("planes", "long long", False)]


def test_editing_only_a_header_rebuilds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The .cu text does not change; the header's does: the inlined source (what the compile
    caches key on) changes, so the kernel is rebuilt and sees the new value."""
    monkeypatch.setenv("DLCORE_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "value.cuh").write_text("#pragma once\n#define VALUE 1.0f\n")
    cu = tmp_path / "k.cu"
    cu.write_text('#include "value.cuh"\nextern "C" __global__ void put(float* y) '
                  "{ y[threadIdx.x] = VALUE; }\n")

    def run() -> float:
        y = np.zeros(4, np.float32)
        KernelRunner(Device("emu")).function(str(cu), "put")((1,), (4,), (y,))
        return float(y[0])

    assert run() == 1.0
    (tmp_path / "value.cuh").write_text("#pragma once\n#define VALUE 2.0f\n")
    assert run() == 2.0
    assert "VALUE 2.0f" in kernel_source(str(cu)).tagged_code()


def test_emu_devices_track_a_current_device() -> None:
    d0, d1 = Device("emu"), Device("emu:1")
    assert d0 is Device("emu:0") and str(d1) == "emu:1"
    assert d0.is_current() and not d1.is_current()
    with d1:
        assert d1.is_current() and not d0.is_current()
    with pytest.raises(ValueError, match="emu:0 .. emu:3"):
        Device("emu:9")
    args = _adam_args(np)
    with pytest.raises(RuntimeError, match=r"launched for emu:1 while the current device is "
                                           r"another one"):
        d1.kernels.function("optim.cu", "adam_step<float>")((1,), (32,), args)


@pytest.mark.parametrize("mode", ["rnn_tanh", "lstm", "gru"])
def test_recurrent_cells_run_under_the_tensors_device(mode: str) -> None:
    """They launched on the current device (emu:0 / cuda:0) whatever the tensors' device."""
    outs = {}
    for name in ("emu", "emu:1"):
        g = {"rnn_tanh": 1, "lstm": 4, "gru": 3}[mode] * 5
        rng = np.random.default_rng(0)

        def t(*shape: int, device: str = name, rng: np.random.Generator = rng) -> dlcore.Tensor:
            return dlcore.tensor(rng.standard_normal(shape).astype(np.float32), device=device,
                                 requires_grad=True)

        x, h0 = t(4, 2, 3), t(2, 5)
        c0 = t(2, 5) if mode == "lstm" else None
        w_ih, w_hh = t(g, 3), t(g, 5)
        y = rnn_layer(x, h0, c0, w_ih, w_hh, None, None, mode)[0]
        y.sum().backward()
        outs[name] = (y.numpy(), x.grad.numpy(), w_hh.grad.numpy())
    for a, b in zip(outs["emu"], outs["emu:1"]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["SGD", "Adam", "RMSprop", "Adagrad"])
def test_optimizer_steps_run_under_the_parameters_device(name: str) -> None:
    results = {}
    for device in ("emu", "emu:1"):
        p = dlcore.nn.Parameter(dlcore.arange(6.0, device=device))
        p.grad = dlcore.ones(6, device=device)
        opt = getattr(dlcore.optim, name)([p], lr=0.1)
        for _ in range(2):
            opt.step()
        results[device] = p.numpy().copy()
    np.testing.assert_array_equal(results["emu"], results["emu:1"])


def test_stubbed_launches_still_check_but_do_not_run() -> None:
    """What `dlcore bench launch` times as host cost per op: everything but the launch."""
    from dlcore.kernels import stubbed_launches

    dev = Device("emu")
    args = _adam_args(np)
    run = dev.kernels.function("optim.cu", "adam_step<float>")
    with stubbed_launches():
        run((1,), (32,), args)
        assert args[0][0] == 1.0  # not launched
        with pytest.raises(TypeError, match="parameter 'n'"):
            run((1,), (32,), args[:5] + [5] + args[6:])
    run((1,), (32,), args)
    assert args[0][0] != 1.0


def test_recorded_launches_name_each_kernel_in_order() -> None:
    """Tests name which kernel served a shape by recording launches; nesting records in both
    logs, and nothing is recorded outside the block."""
    from dlcore.kernels import recorded_launches

    dev = Device("emu")
    run = dev.kernels.function("optim.cu", "adam_step<float>")
    with recorded_launches() as outer:
        run((1,), (32,), _adam_args(np))
        with recorded_launches() as inner:
            run((2,), (64,), _adam_args(np))
    run((1,), (32,), _adam_args(np))
    assert [(rec.kernel, rec.grid, rec.block) for rec in outer] == [
        ("optim.cu:adam_step<float>", (1,), (32,)), ("optim.cu:adam_step<float>", (2,), (64,))]
    assert [rec.grid for rec in inner] == [(2,)]


def test_a_source_can_ask_for_cooperative_launches(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """'// dlcore: cooperative' makes the runner build the module with
    enable_cooperative_groups, so its kernels may sync the whole grid."""
    monkeypatch.setenv("DLCORE_CACHE_DIR", str(tmp_path / "cache"))
    code = ('#include <cooperative_groups.h>\n'
            'extern "C" __global__ void ring(float* x, int n) {\n'
            '  namespace cg = cooperative_groups;\n'
            '  int i = blockIdx.x * blockDim.x + threadIdx.x;\n'
            '  float mine = x[i];\n'
            '  cg::this_grid().sync();\n'
            '  x[(i + 1) % n] = mine;  // every read happened before any write\n'
            '}\n')
    plain, coop = tmp_path / "plain.cu", tmp_path / "coop.cu"
    plain.write_text(code)
    coop.write_text("// dlcore: cooperative\n" + code)
    assert kernel_source(str(coop)).cooperative and not kernel_source(str(plain)).cooperative
    x = np.arange(64, dtype=np.float32)
    KernelRunner(Device("emu")).function(str(coop), "ring")((4,), (16,), (x, np.int32(64)))
    np.testing.assert_array_equal(x, np.roll(np.arange(64, dtype=np.float32), 1))
    from dlcore.kernels.emu import EmulatorError

    with pytest.raises(EmulatorError, match="cooperative"):
        KernelRunner(Device("emu")).function(str(plain), "ring")(
            (4,), (16,), (np.zeros(64, np.float32), np.int32(64)))

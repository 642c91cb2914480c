"""Kernel launch overhead: host time per launch through dlcore's launch layer.

Two cases, both tiny kernels whose work is negligible, so the figure is the per-launch cost
that every kernel-backed op pays on top of its arithmetic:

* ``launch_noop``  -- no arguments, one block of one thread: the fixed cost.
* ``launch_args4`` -- two arrays and two scalars, one block of 32 threads: adds argument
  marshalling (what most ops look like).

On ``cuda`` the figure is the host time of asynchronous launches; ``note`` adds the time with a
stream synchronisation after every launch (launch plus completion). On ``emu`` a launch runs the
kernel on the CPU, so the figure includes fiber setup; ``note`` records whether the
emulator's checked mode (``DLCORE_EMU_CHECK``) was on, as it adds guarded copies.

Host cost per op (``host <op>`` rows): a Tensor-level op with the launch itself stubbed out
(:func:`dlcore.kernels.stubbed_launches`: argument checks, shapes, allocations and marshalling
still run), on any kernel device: conv2d forward (N8 C16 16x16, 3x3 -> 32), max_pool2d
forward 2x2, one LSTM step (N8, H64; the cost a step adds: (T=9 - T=1) / 8) and an Adam step
on one 1,000-element parameter. The target is at most 10 us per op. On ``cuda`` the same ops
are also timed with the real launch (``host+launch`` rows).
"""

from __future__ import annotations

from typing import Any

import numpy as np

import dlcore
import dlcore.nn.functional as F
from dlcore.device import Device
from dlcore.kernels import KernelSource, stubbed_launches
from dlcore.kernels.emu import checked_mode
from dlcore.ops.rnn import rnn_layer

from .timing import time_host

SOURCE_CODE = """
extern "C" __global__ void launch_noop() {}

extern "C" __global__ void launch_args4(const float* __restrict__ x, float* __restrict__ y,
                                        float alpha, long long n) {
  const long long i = threadIdx.x;
  if (i < n) y[i] = alpha * x[i];
}
"""


def _source() -> Any:
    return KernelSource("bench_launch.cu", SOURCE_CODE)


def _cases(dev: Any) -> dict[str, Any]:
    src = _source()
    noop = dev.kernels.function(src, "launch_noop")
    args4 = dev.kernels.function(src, "launch_args4")
    x = dev.xp.ones(32, dtype=np.float32)
    y = dev.xp.empty_like(x)
    alpha, n = np.float32(2), np.int64(32)
    return {
        "launch_noop": lambda: noop((1,), (1,), ()),
        "launch_args4": lambda: args4((1,), (32,), (x, y, alpha, n)),
    }


def _op_cases(dev: Any) -> dict[str, Any]:
    """Tensor-level kernel ops, each a closure with its inputs made once."""
    dlcore.manual_seed(0)
    x = dlcore.randn(8, 16, 16, 16, device=dev)
    w = dlcore.randn(32, 16, 3, 3, device=dev)
    h0, c0 = dlcore.zeros(8, 64, device=dev), dlcore.zeros(8, 64, device=dev)
    w_ih, w_hh = dlcore.randn(256, 32, device=dev) * 0.1, dlcore.randn(256, 64, device=dev) * 0.1
    x1, x9 = dlcore.randn(1, 8, 32, device=dev), dlcore.randn(9, 8, 32, device=dev)
    p = dlcore.nn.Parameter(dlcore.randn(1000, device=dev))
    p.grad = dlcore.randn(1000, device=dev)
    opt = dlcore.optim.Adam([p])
    opt.step()  # the flat buffers are made on the first step
    return {
        "conv2d forward": lambda: F.conv2d(x, w, padding=1),
        "max_pool2d forward": lambda: F.max_pool2d(x, 2),
        "lstm step": (lambda: rnn_layer(x9, h0, c0, w_ih, w_hh, None, None, "lstm"),
                      lambda: rnn_layer(x1, h0, c0, w_ih, w_hh, None, None, "lstm")),
        "adam step": lambda: opt.step(),
    }


def _time_op(case: Any, reps: int) -> float:
    if isinstance(case, tuple):  # (T=9, T=1): the cost of 8 more steps, per step
        return (time_host(case[0], reps) - time_host(case[1], reps)) / 8
    return time_host(case, reps)


def _op_rows(dev: Any, quick: bool) -> list[dict]:
    reps = 100 if quick else 1000
    rows = []
    for case, fn in _op_cases(dev).items():
        with stubbed_launches():
            host = _time_op(fn, reps)
        rows.append({"suite": "launch", "case": f"host {case}", "median_us": round(host, 2),
                     "note": "launch stubbed; target <= 10 us"})
        if dev.is_cuda:
            full = _time_op(fn, reps)
            dev.synchronize()
            rows.append({"suite": "launch", "case": f"host+launch {case}",
                         "median_us": round(full, 2), "note": "async launch, host time"})
    return rows


def run(device: str, quick: bool = False) -> list[dict]:
    """Median host µs per launch for each case on ``device`` (``emu`` or ``cuda``; ``cpu`` runs
    no kernels and yields no rows)."""

    dev = Device(device)
    if not dev.runs_kernels:
        return []
    reps = 200 if quick else 2000
    rows = []
    for case, fn in _cases(dev).items():
        if dev.is_cuda:
            stream = dev.current_stream()

            def timed(fn: Any = fn, stream: Any = stream) -> None:
                fn()
                stream.synchronize()

            synced = time_host(timed, reps)
            median = time_host(fn, reps)
            stream.synchronize()
            note = f"async host time; with a stream sync per launch {synced:.1f} us"
        else:
            median = time_host(fn, reps)
            note = f"emulator, checked mode {'on' if checked_mode() else 'off'}"
        rows.append({"suite": "launch", "case": case, "median_us": round(median, 2),
                     "note": note})
    return rows + _op_rows(dev, quick)

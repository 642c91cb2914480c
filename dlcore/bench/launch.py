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
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dlcore.device import Device
from dlcore.kernels import KernelSource
from dlcore.kernels.emu import checked_mode

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
    return rows

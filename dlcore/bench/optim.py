"""Optimizer steps: achieved memory bandwidth of one fused update over many parameters.

An update is bandwidth bound, so the figure of merit is GB/s over the bytes the update must
move, counted per element in words of the parameters' dtype: Adam reads param, grad,
exp_avg, exp_avg_sq and writes param, exp_avg, exp_avg_sq (7 words), AdamW with amsgrad also
reads and writes max_exp_avg_sq (9), SGD with momentum reads param, grad, buffer and writes
param, buffer (5). The gradients come from backward, so they already sit in the optimizer's
flat gradient buffer and the step timed is the real one: no gather, one launch per bucket
(``note`` counts the launches on a kernel device). The reference is a plain copy
(``copyto``: 2 words) of the same size: what this machine's memory system delivers to NumPy,
or on cuda the device-to-device copy's bandwidth (not on emu, whose figures are no speed).
"""

from __future__ import annotations

from typing import Any

import numpy as np

import dlcore
from dlcore import optim
from dlcore.kernels import recorded_launches
from dlcore.nn.parameter import Parameter

from .timing import time_host

CASES = (
    # (case name, optimizer, options, words moved per element)
    ("adam", "Adam", {"lr": 1e-3}, 7),
    ("adamw amsgrad", "AdamW", {"lr": 1e-3, "amsgrad": True}, 9),
    ("sgd momentum", "SGD", {"lr": 0.1, "momentum": 0.9}, 5),
)


def _setup(device: str, optimizer: str, options: dict, numel: int,
           tensors: int) -> tuple[Any, int]:
    """The timed step and the kernel launches it makes."""
    size = numel // tensors
    params = [Parameter(dlcore.randn(size, device=device)) for _ in range(tensors)]
    opt = getattr(optim, optimizer)(params, **options)
    # backward of sum(p * g) brings gradient g into each parameter's slot
    dlcore.autograd.backward([(p * (dlcore.randn(size, device=device) * 1e-3)).sum()
                              for p in params])
    sync = dlcore.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def step() -> None:
        opt.step()
        sync()

    step()  # the first step (SGD's first momentum step reads no buffer)
    with recorded_launches() as launches:
        step()
    return step, len(launches)


def _copy_floor(numel: int, device: str = "cpu") -> float:
    """Microseconds of one copy of ``numel`` float32 words on ``device`` (the memory system's
    ceiling for an update; on cuda a device-to-device ``copyto`` with a synchronize, the
    ceiling METHOD.md asks to measure rather than take from a datasheet)."""
    dev = dlcore.device(device)
    xp = dev.xp
    with dev:
        a = xp.ones(numel, np.float32)
        b = xp.empty_like(a)
    if not dev.is_cuda:
        return time_host(lambda: np.copyto(b, a), 20, warmup=3, inner=1)

    def copy() -> None:
        xp.copyto(b, a)
        dev.synchronize()
    return time_host(copy, 20, warmup=3, inner=1)


def run(device: str = "cpu", quick: bool = False) -> list[dict]:
    numel = 1_000_000 if quick else 10_000_000
    reps = 10 if quick else 30
    rows = []
    word = np.dtype(np.float32).itemsize  # dlcore.randn's dtype
    copy_us = _copy_floor(numel, device) if device == "cpu" or device.startswith("cuda") \
        else None
    for tensors in (10, 1000):
        for case, optimizer, options, words in CASES:
            step, launches = _setup(device, optimizer, options, numel, tensors)
            us = time_host(step, reps, warmup=3, inner=1)
            gbs = words * word * numel / (us * 1e-6) / 1e9
            note = f"GB/s {gbs:.1f} over {words} words/param"
            if copy_us is not None:
                copy_gbs = 2 * word * numel / (copy_us * 1e-6) / 1e9
                note += f"; copyto {copy_gbs:.1f} GB/s ({gbs / copy_gbs:.0%})"
            if dlcore.device(device).runs_kernels:
                note += f"; {launches} launch{'es' if launches != 1 else ''}/step"
            rows.append({"suite": "optim", "case": f"{case} {numel / 1e6:g}M params "
                         f"in {tensors} tensors", "device": device, "median_us": us,
                         "note": note})
    return rows

"""Optimizer steps: achieved memory bandwidth of one fused update over many parameters.

An update is bandwidth bound, so the figure of merit is GB/s over the bytes the update must
touch: Adam reads param, grad, exp_avg, exp_avg_sq and writes param, exp_avg, exp_avg_sq
(7 words per element), SGD with momentum reads param, grad, buffer and writes param, buffer
(5 words). A step also gathers the gradients into the group's flat buffer (2 more words,
not counted as useful). The reference is a plain copy (``np.copyto``: 2 words) of the same
size: what this machine's memory system delivers to NumPy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import dlcore
from dlcore import optim
from dlcore.nn.parameter import Parameter

from .timing import time_host

CASES = (
    # (case name, optimizer, options, words touched per element)
    ("adam", "Adam", {"lr": 1e-3}, 7),
    ("adamw amsgrad", "AdamW", {"lr": 1e-3, "amsgrad": True}, 9),
    ("sgd momentum", "SGD", {"lr": 0.1, "momentum": 0.9}, 5),
)


def _setup(device: str, optimizer: str, options: dict, numel: int, tensors: int) -> Any:
    size = numel // tensors
    params = [Parameter(dlcore.randn(size, device=device)) for _ in range(tensors)]
    for p in params:
        p.grad = dlcore.randn(size, device=device) * 1e-3
    opt = getattr(optim, optimizer)(params, **options)
    sync = dlcore.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def step() -> None:
        opt.step()
        sync()

    return step


def _copy_floor(numel: int) -> float:
    a = np.ones(numel, np.float32)
    b = np.empty_like(a)
    return time_host(lambda: np.copyto(b, a), 20, warmup=3, inner=1)


def run(device: str = "cpu", quick: bool = False) -> list[dict]:
    numel = 1_000_000 if quick else 10_000_000
    reps = 10 if quick else 30
    rows = []
    copy_us = _copy_floor(numel) if device == "cpu" else None
    for tensors in (10, 1000):
        for case, optimizer, options, words in CASES:
            us = time_host(_setup(device, optimizer, options, numel, tensors), reps,
                           warmup=3, inner=1)
            gbs = words * 4 * numel / (us * 1e-6) / 1e9
            note = f"GB/s {gbs:.1f} over {words} words/param"
            if copy_us is not None:
                note += f"; np.copyto {2 * 4 * numel / (copy_us * 1e-6) / 1e9:.1f} GB/s"
            rows.append({"suite": "optim", "case": f"{case} {numel / 1e6:g}M params "
                         f"in {tensors} tensors", "device": device, "median_us": us,
                         "note": note})
    return rows

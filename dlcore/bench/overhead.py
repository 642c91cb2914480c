"""Framework overhead: a chain of small elementwise ops, forward + backward.

The chain is ``((x * 2 + 1).tanh() * x).sum()`` on a 16x16 float32 tensor: 4 ops, so the
figure per op is (forward + backward time) / 4. The floor is the same arithmetic done by
hand in raw NumPy (forward and the hand-written backward), i.e. what the array module
costs without any framework. PyTorch CPU eager runs the same chain when importable.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

import dlcore

from .timing import time_host

N_OPS = 4
SHAPE = (16, 16)


def _dlcore_step(device: str) -> Any:
    x = dlcore.randn(*SHAPE, device=device, requires_grad=True)

    def step() -> None:
        x.grad = None
        y = ((x * 2 + 1).tanh() * x).sum()
        y.backward()

    return step


def _numpy_step() -> Any:
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)

    def step() -> None:
        a = x * np.float32(2) + np.float32(1)
        t = np.tanh(a)
        y = t * x
        y.sum()
        g = np.ones_like(y)
        gt = g * x
        gx = g * t + gt * (1 - t * t) * np.float32(2)
        del gx

    return step


def _torch_step() -> Any:
    import torch  # optional: a comparison, never a dependency

    torch.set_num_threads(1)
    x = torch.randn(*SHAPE, requires_grad=True)

    def step() -> None:
        x.grad = None
        ((x * 2 + 1).tanh() * x).sum().backward()

    return step


def run(device: str = "cpu", quick: bool = False) -> list[dict]:
    reps = 200 if quick else 2000
    rows = []
    dl = time_host(_dlcore_step(device), reps)
    floor = time_host(_numpy_step(), reps)
    row = {"suite": "overhead", "case": "chain4 16x16 fwd+bwd", "device": device,
           "median_us": dl, "us_per_op": dl / N_OPS, "numpy_floor_us": floor}
    if device == "cpu" and importlib.util.find_spec("torch") is not None:
        ref = time_host(_torch_step(), reps)
        row["reference"] = "torch-cpu"
        row["reference_us"] = ref
        row["ratio"] = dl / ref
    rows.append(row)
    return rows

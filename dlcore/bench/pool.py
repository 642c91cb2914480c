"""Pooling forward + backward: max 2x2/2 and 3x3/2 (pad 1) on N=32, 64ch 112x112, and a
global average (adaptive 1x1) on N=32, 512ch 7x7. Bandwidth counts the minimum traffic:
read x and write y forward, read gy and write gx backward (float32). PyTorch CPU runs the
same step when importable. ``peak_mb`` as in the conv suite (tracemalloc sees NumPy buffers).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import dlcore
from dlcore.ops import pool

from .conv import peak_mb
from .timing import time_host

# name, (N, C, H, W), function name, kwargs
CASES = [
    ("max 2x2/2 64ch 112x112", (32, 64, 112, 112), "max_pool2d",
     {"kernel_size": 2, "stride": 2}),
    ("max 3x3/2 pad1 64ch 112x112", (32, 64, 112, 112), "max_pool2d",
     {"kernel_size": 3, "stride": 2, "padding": 1}),
    ("global avg 512ch 7x7", (32, 512, 7, 7), "adaptive_avg_pool2d", {"output_size": 1}),
]
QUICK_SHAPE = (8, 16, 32, 32)


def _dlcore_step(device: str, shape: tuple, fn: str, kw: dict) -> tuple[Any, int]:
    op = getattr(pool, fn)
    x = dlcore.randn(*shape, device=device, requires_grad=True)
    gy = dlcore.randn(*op(x, **kw).shape, device=device)

    def step() -> None:
        x.grad = None
        op(x, **kw).backward(gy)
        if device.startswith("cuda"):
            dlcore.cuda.synchronize()

    return step, 4 * 2 * (x.numel() + gy.numel())


def _torch_step(shape: tuple, fn: str, kw: dict) -> Any:
    import torch  # optional: a comparison, never a dependency

    op = getattr(torch.nn.functional, fn)
    x = torch.randn(*shape, requires_grad=True)
    gy = torch.randn_like(op(x, **kw))

    def step() -> None:
        x.grad = None
        op(x, **kw).backward(gy)

    return step


def run(device: str = "cpu", quick: bool = False) -> list[dict]:
    torch_ok = device == "cpu" and importlib.util.find_spec("torch") is not None
    rows = []
    for name, shape, fn, kw in CASES:
        if quick:
            shape = QUICK_SHAPE
            name = f"{name.split(' ')[0]} {name.split(' ')[1]} 8x16x32x32"
        reps, inner = (20, 5) if quick else (5, 1)
        step, nbytes = _dlcore_step(device, shape, fn, kw)
        us = time_host(step, reps, warmup=2, inner=inner)
        row = {"suite": "pool", "case": name + " fwd+bwd", "device": device, "median_us": us,
               "gbps": nbytes / us / 1e3, "peak_mb": peak_mb(step)}
        if torch_ok:
            ref = time_host(_torch_step(shape, fn, kw), reps, warmup=2, inner=inner)
            row.update(reference="torch-cpu", reference_us=ref, ratio=us / ref)
        rows.append(row)
    return rows

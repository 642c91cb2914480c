"""Convolution forward + backward (gradients for input and weight) on the bench shapes.

Cases: ResNet 3x3 layers (N=32: 64ch 56x56, 128ch 28x28, 256ch 14x14, 512ch 7x7), a 1x1
(256->64, 56x56), the strided 7x7 stem (3->64, 224x224, stride 2), a depthwise 3x3
(128ch, 56x56) and the digits CNN layers (N=64: 1->16 8x8, 16->32 4x4, 3x3 pad 1).
FLOPs: 3 * 2*N*O*OH*OW*(C/G)*kH*kW (forward, data and weight gradients). PyTorch CPU runs
the same step when importable (never a dependency). ``peak_mb``: tracemalloc's peak over one
step; NumPy reports its data buffers to tracemalloc (checked: a 100 MB np.empty shows as
100 MB), so this is the framework's host-array peak, not the process RSS.
"""

from __future__ import annotations

import importlib.util
import tracemalloc
from typing import Any

from .timing import time_host

# name, N, C, O, H, k, stride, padding, groups
CASES = [
    ("resnet3x3 64ch 56x56", 32, 64, 64, 56, 3, 1, 1, 1),
    ("resnet3x3 128ch 28x28", 32, 128, 128, 28, 3, 1, 1, 1),
    ("resnet3x3 256ch 14x14", 32, 256, 256, 14, 3, 1, 1, 1),
    ("resnet3x3 512ch 7x7", 32, 512, 512, 7, 3, 1, 1, 1),
    ("1x1 256->64 56x56", 32, 256, 64, 56, 1, 1, 0, 1),
    ("stem 7x7/2 3->64 224x224", 32, 3, 64, 224, 7, 2, 3, 1),
    ("depthwise3x3 128ch 56x56", 32, 128, 128, 56, 3, 1, 1, 128),
    ("digits 1->16 8x8", 64, 1, 16, 8, 3, 1, 1, 1),
    ("digits 16->32 4x4", 64, 16, 32, 4, 3, 1, 1, 1),
]
QUICK = ("resnet3x3 512ch 7x7", "digits 1->16 8x8", "digits 16->32 4x4")


def _flops(n: int, c: int, o: int, h: int, k: int, s: int, p: int, g: int) -> float:
    out = (h + 2 * p - k) // s + 1
    return 3 * 2 * n * o * out * out * (c // g) * k * k


def _dlcore_step(device: str, n: int, c: int, o: int, h: int, k: int, s: int, p: int,
                 g: int) -> Any:
    import dlcore
    from dlcore.ops.conv import conv2d

    x = dlcore.randn(n, c, h, h, device=device, requires_grad=True)
    w = dlcore.randn(o, c // g, k, k, device=device, requires_grad=True)
    gy = dlcore.randn(*conv2d(x, w, stride=s, padding=p, groups=g).shape, device=device)

    def step() -> None:
        x.grad = w.grad = None
        conv2d(x, w, stride=s, padding=p, groups=g).backward(gy)
        if device.startswith("cuda"):
            dlcore.cuda.synchronize()

    return step


def _torch_step(n: int, c: int, o: int, h: int, k: int, s: int, p: int, g: int) -> Any:
    import torch

    x = torch.randn(n, c, h, h, requires_grad=True)
    w = torch.randn(o, c // g, k, k, requires_grad=True)
    gy = torch.randn_like(torch.nn.functional.conv2d(x, w, stride=s, padding=p, groups=g))

    def step() -> None:
        x.grad = w.grad = None
        torch.nn.functional.conv2d(x, w, stride=s, padding=p, groups=g).backward(gy)

    return step


def peak_mb(step: Any) -> float:
    """Peak traced host allocation (MB) over one call of ``step``."""
    tracemalloc.start()
    try:
        step()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def run(device: str = "cpu", quick: bool = False) -> list[dict]:
    reps = 3 if quick else 5
    torch_ok = device == "cpu" and importlib.util.find_spec("torch") is not None
    rows = []
    for name, *shape in CASES:
        if quick and name not in QUICK:
            continue
        small = shape[0] * shape[1] * shape[3] ** 2 < 2**16
        r, inner = (50, 10) if small else (reps, 1)
        step = _dlcore_step(device, *shape)
        us = time_host(step, r, warmup=2, inner=inner)
        row = {"suite": "conv", "case": name + " fwd+bwd", "device": device, "median_us": us,
               "gflops": _flops(*shape) / us / 1e3, "peak_mb": peak_mb(step)}
        if torch_ok:
            ref = time_host(_torch_step(*shape), r, warmup=2, inner=inner)
            row.update(reference="torch-cpu", reference_us=ref, ratio=us / ref)
        rows.append(row)
    return rows

"""Convolution on the bench shapes: forward + backward through autograd on every device, and on
the kernel devices each conv2d kernel on its own.

Shapes: x (N, C, H, W), w (O, C/G, k, k), y (N, O, OH, OW), G groups. Cases: ResNet 3x3 layers
(N=32: 64ch 56x56, 128ch 28x28, 256ch 14x14, 512ch 7x7), the strided 3x3 downsample (128->256,
28x28, stride 2), a 1x1 (256->64, 56x56), the strided 7x7 stem (3->64, 224x224, stride 2), a
depthwise 3x3 (128ch, 56x56) and the digits CNN layers (N=64: 1->16 8x8, 16->32 4x4, 3x3 pad 1).

``fwd+bwd`` rows: conv2d and its gradients for input and weight through autograd, FLOPs
3 * 2*N*O*OH*OW*(C/G)*kH*kW. PyTorch runs the same step when importable (never a
dependency): on the CPU, and on cuda with cuDNN. ``peak_mb``: tracemalloc's peak over one
step; NumPy reports its data buffers to tracemalloc (checked: a 100 MB np.empty shows as
100 MB), so this is the framework's host-array peak, not the process RSS.

Kernel rows (``cuda`` and ``emu``): ``conv2d_forward``, ``conv2d_backward_data`` and
``conv2d_backward_weight`` of :mod:`dlcore.ops.conv_cuda` timed one by one on float32 arrays,
no autograd, each 2*N*O*OH*OW*(C/G)*kH*kW FLOPs, the kernels that ran in ``note`` (TF32 tensor
cores by default, as cuDNN under PyTorch's defaults; SIMT with
``dlcore.backends.cudnn.allow_tf32 = False``); on cuda next to cuDNN doing the same
(``torch.nn.functional.conv2d``, ``torch.nn.grad.conv2d_input`` / ``conv2d_weight``). The
fraction of peak is left to the reader's card (H100 SXM: about 60 TFLOP/s fp32 without tensor
cores). The emulator runs one tiny layer: a smoke run of the launch path, not a speed figure.
"""

from __future__ import annotations

import importlib.util
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

import dlcore
from dlcore.device import Device
from dlcore.kernels import recorded_launches
from dlcore.ops import conv_cuda
from dlcore.ops.conv import conv2d, conv2d_out_size

from .timing import time_host, time_pair

# name, N, C, O, H, k, stride, padding, groups
CASES = [
    ("resnet3x3 64ch 56x56", 32, 64, 64, 56, 3, 1, 1, 1),
    ("resnet3x3 128ch 28x28", 32, 128, 128, 28, 3, 1, 1, 1),
    ("resnet3x3/2 128->256 28x28", 32, 128, 256, 28, 3, 2, 1, 1),
    ("resnet3x3 256ch 14x14", 32, 256, 256, 14, 3, 1, 1, 1),
    ("resnet3x3 512ch 7x7", 32, 512, 512, 7, 3, 1, 1, 1),
    ("1x1 256->64 56x56", 32, 256, 64, 56, 1, 1, 0, 1),
    ("stem 7x7/2 3->64 224x224", 32, 3, 64, 224, 7, 2, 3, 1),
    ("depthwise3x3 128ch 56x56", 32, 128, 128, 56, 3, 1, 1, 128),
    ("depthwise3x3/2 96ch 112x112", 32, 96, 96, 112, 3, 2, 1, 96),
    ("depthwise5x5 240ch 28x28", 32, 240, 240, 28, 5, 1, 2, 240),
    ("digits 1->16 8x8", 64, 1, 16, 8, 3, 1, 1, 1),
    ("digits 16->32 4x4", 64, 16, 32, 4, 3, 1, 1, 1),
]
QUICK = ("resnet3x3 512ch 7x7", "digits 1->16 8x8", "digits 16->32 4x4")
# The emulator's only kernel case: it runs every thread as a fiber on the CPU.
EMU_KERNEL_CASE = ("tiny 4->8 9x9", 1, 4, 8, 9, 3, 1, 1, 1)
KERNELS = ("conv2d_forward", "conv2d_backward_data", "conv2d_backward_weight")


def _direction_flops(n: int, c: int, o: int, h: int, k: int, s: int, p: int, g: int) -> float:
    """One multiply-add per GEMM term of one direction (forward, data or weight gradient)."""
    out = conv2d_out_size(h, k, s, p, 1)
    return 2 * n * o * out * out * (c // g) * k * k


def _torch_device(device: str) -> str | None:
    """The torch device that runs the reference for ``device``: the CPU for cpu, the same GPU
    (cuDNN) for cuda when torch has CUDA; ``None`` without torch, and on emu."""
    if importlib.util.find_spec("torch") is None:
        return None
    if device == "cpu":
        return "cpu"
    if not device.startswith("cuda"):
        return None
    import torch  # optional: a comparison, never a dependency

    if not torch.cuda.is_available():
        return None
    # NOTE: cuDNN under the same TF32 setting as dlcore's convolutions (both default to TF32
    # tensor cores for float32, as PyTorch does): like with like
    torch.backends.cudnn.allow_tf32 = bool(dlcore.backends.cudnn.allow_tf32)
    return device


def _synced(fn: Callable[[], object], sync: Callable[[], None]) -> Callable[[], None]:
    def step() -> None:
        fn()
        sync()

    return step


def _dlcore_sync(device: str) -> Callable[[], None]:
    """Wait for ``device``'s queued work (a no-op off the GPU, where launches are synchronous)."""
    return Device(device).synchronize


def _torch_sync(torch_device: str) -> Callable[[], None]:
    import torch  # optional: a comparison, never a dependency

    if torch_device.startswith("cuda"):
        return lambda: torch.cuda.synchronize(torch_device)
    return lambda: None


def _dlcore_step(device: str, n: int, c: int, o: int, h: int, k: int, s: int, p: int,
                 g: int) -> Callable[[], None]:

    x = dlcore.randn(n, c, h, h, device=device, requires_grad=True)
    w = dlcore.randn(o, c // g, k, k, device=device, requires_grad=True)
    gy = dlcore.randn(*conv2d(x, w, stride=s, padding=p, groups=g).shape, device=device)

    def step() -> None:
        x.grad = w.grad = None
        conv2d(x, w, stride=s, padding=p, groups=g).backward(gy)

    return _synced(step, _dlcore_sync(device))


def _torch_step(torch_device: str, n: int, c: int, o: int, h: int, k: int, s: int, p: int,
                g: int) -> Callable[[], None]:
    import torch  # optional: a comparison, never a dependency

    x = torch.randn(n, c, h, h, device=torch_device, requires_grad=True)
    w = torch.randn(o, c // g, k, k, device=torch_device, requires_grad=True)
    gy = torch.randn_like(torch.nn.functional.conv2d(x, w, stride=s, padding=p, groups=g))

    def step() -> None:
        x.grad = w.grad = None
        torch.nn.functional.conv2d(x, w, stride=s, padding=p, groups=g).backward(gy)

    return _synced(step, _torch_sync(torch_device))


def _dlcore_kernels(dev: Any, n: int, c: int, o: int, h: int, k: int, s: int, p: int,
                    g: int) -> dict[str, Callable[[], object]]:
    """Each conv2d kernel of ``dev`` on random float32 arrays of one layer."""
    rng = np.random.default_rng(0)
    out = conv2d_out_size(h, k, s, p, 1)
    with dev.use():
        x = dev.xp.asarray(rng.standard_normal((n, c, h, h), dtype=np.float32))
        w = dev.xp.asarray(rng.standard_normal((o, c // g, k, k), dtype=np.float32))
        gy = dev.xp.asarray(rng.standard_normal((n, o, out, out), dtype=np.float32))
    args = ((s, s), (p, p), (1, 1), g)  # stride, padding, dilation, groups
    return {
        "conv2d_forward": lambda: conv_cuda.conv2d_forward(dev, x, w, (out, out), *args),
        "conv2d_backward_data": lambda: conv_cuda.conv2d_backward_data(dev, gy, w, x.shape,
                                                                       *args),
        "conv2d_backward_weight": lambda: conv_cuda.conv2d_backward_weight(dev, x, gy, w.shape,
                                                                           *args),
    }


def _torch_kernels(torch_device: str, n: int, c: int, o: int, h: int, k: int, s: int, p: int,
                   g: int) -> dict[str, Callable[[], object]]:
    """The same three computations in PyTorch (cuDNN on a GPU)."""
    import torch  # optional: a comparison, never a dependency
    from torch.nn import grad  # optional: a comparison, never a dependency

    out = conv2d_out_size(h, k, s, p, 1)
    x = torch.randn(n, c, h, h, device=torch_device)
    w = torch.randn(o, c // g, k, k, device=torch_device)
    gy = torch.randn(n, o, out, out, device=torch_device)
    return {
        "conv2d_forward": lambda: torch.nn.functional.conv2d(x, w, stride=s, padding=p,
                                                             groups=g),
        "conv2d_backward_data": lambda: grad.conv2d_input(x.shape, w, gy, stride=s, padding=p,
                                                          groups=g),
        "conv2d_backward_weight": lambda: grad.conv2d_weight(x, w.shape, gy, stride=s,
                                                             padding=p, groups=g),
    }


def peak_mb(step: Any) -> float:
    """Peak traced host allocation (MB) over one call of ``step``."""
    tracemalloc.start()
    try:
        step()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def _step_rows(device: str, quick: bool, torch_device: str | None) -> list[dict]:
    reps = 3 if quick else 5
    rows = []
    for name, *shape in CASES:
        if quick and name not in QUICK:
            continue
        small = shape[0] * shape[1] * shape[3] ** 2 < 2**16
        r, inner = (50, 10) if small else (reps, 1)
        step = _dlcore_step(device, *shape)
        if torch_device is None:
            us, ref = time_host(step, r, warmup=2, inner=inner), None
        else:  # samples alternate with PyTorch's (timing.time_pair)
            us, ref = time_pair(step, _torch_step(torch_device, *shape), r, warmup=2,
                                inner=inner)
        row = {"suite": "conv", "case": name + " fwd+bwd", "device": device, "median_us": us,
               "gflops": 3 * _direction_flops(*shape) / us / 1e3, "peak_mb": peak_mb(step)}
        if ref is not None:
            row.update(reference="torch-cpu" if torch_device == "cpu" else "torch-cudnn",
                       reference_us=ref, ratio=us / ref)
        rows.append(row)
    return rows


def _kernel_rows(device: str, quick: bool, torch_device: str | None) -> list[dict]:
    dev = Device(device)
    if not dev.runs_kernels:
        return []
    if not dev.is_cuda:  # the emulator: one tiny layer
        cases, reps = [EMU_KERNEL_CASE], 3
    else:
        cases = [case for case in CASES if not quick or case[0] in QUICK]
        reps = 5 if quick else 20
    sync = _dlcore_sync(device)
    rows = []
    for name, *shape in cases:
        flops = _direction_flops(*shape)
        kernels = _dlcore_kernels(dev, *shape)
        refs = _torch_kernels(torch_device, *shape) if torch_device is not None else {}
        for kernel in KERNELS:
            with recorded_launches() as launched:
                kernels[kernel]()
            ran = sorted({rec.kernel.partition(":")[2] for rec in launched}) or ["cuBLAS"]
            us = time_host(_synced(kernels[kernel], sync), reps, warmup=2, inner=1)
            row = {"suite": "conv", "case": f"{name} {kernel}", "device": device,
                   "median_us": us, "gflops": flops / us / 1e3, "note": " + ".join(ran)}
            if torch_device is not None:
                ref = time_host(_synced(refs[kernel], _torch_sync(torch_device)), reps,
                                warmup=2, inner=1)
                row.update(reference="torch-cudnn", reference_us=ref, ratio=us / ref)
            rows.append(row)
    return rows


def run(device: str = "cpu", quick: bool = False) -> list[dict]:
    torch_device = _torch_device(device)
    return _step_rows(device, quick, torch_device) + _kernel_rows(device, quick, torch_device)

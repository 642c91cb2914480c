"""Pooling on the bench shapes: forward + backward through autograd on every device, and on the
kernel devices each pool2d kernel on its own, with the bandwidth each one reaches.

Shapes: x (N, C, H, W), y (N, C, OH, OW). Cases: max 2x2/2 and 3x3/2 (pad 1, the ResNet stem's)
and average 3x3/2 (pad 1) on N=32, 64ch 112x112, max 3x3/2 (pad 1) on 64ch 56x56, and a global
average (adaptive 1x1, a mean) on N=32, 512ch 7x7.

Bytes are the minimum traffic of each computation, every array once, at its element size:
max forward reads x and writes y and the int32 indices (4 bytes each); max backward reads gy
and the indices and writes gx; average pooling reads x and writes y, then reads gy and writes
gx. ``gbps`` is those bytes over the median time, so a kernel at its floor shows the memory
bandwidth it sustains (H100 SXM: about 3.35 TB/s; H200: about 4.8 TB/s). ``fwd+bwd`` rows count
the forward and backward bytes together and time the autograd step, whose gradient copy into
``x.grad`` is extra traffic the figure does not count. PyTorch runs the same step when
importable (never a dependency): on the CPU, and on cuda next to the kernel rows
(``max_pool2d_with_indices`` and its backward, whose indices are int64). ``peak_mb`` as in the
conv suite (tracemalloc sees NumPy buffers). The emulator runs the kernel rows on one small
layer: a smoke run of the launch path, not a speed figure.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from typing import Any

import numpy as np

import dlcore
from dlcore.device import Device
from dlcore.ops import pool, pool_cuda

from .conv import peak_mb
from .timing import time_host, time_pair

# name, (N, C, H, W), function name, kwargs
CASES = [
    ("max 2x2/2 64ch 112x112", (32, 64, 112, 112), "max_pool2d",
     {"kernel_size": 2, "stride": 2}),
    ("max 3x3/2 pad1 64ch 112x112", (32, 64, 112, 112), "max_pool2d",
     {"kernel_size": 3, "stride": 2, "padding": 1}),
    ("max 3x3/2 pad1 64ch 56x56", (32, 64, 56, 56), "max_pool2d",
     {"kernel_size": 3, "stride": 2, "padding": 1}),
    ("avg 3x3/2 pad1 64ch 112x112", (32, 64, 112, 112), "avg_pool2d",
     {"kernel_size": 3, "stride": 2, "padding": 1}),
    ("global avg 512ch 7x7", (32, 512, 7, 7), "adaptive_avg_pool2d", {"output_size": 1}),
]
QUICK_SHAPE = (8, 16, 32, 32)
EMU_SHAPE = (2, 4, 15, 15)
# The dtypes of the kernel rows; float16 stores half the bytes of float32.
KERNEL_DTYPES = (np.float32, np.float16)


def _traffic(fn: str, x_shape: tuple[int, ...], y_shape: tuple[int, ...],
             itemsize: int) -> tuple[int, int]:
    """(forward, backward) minimum bytes, as the module docstring counts them."""
    x, y = math.prod(x_shape) * itemsize, math.prod(y_shape) * itemsize
    indices = math.prod(y_shape) * np.dtype(pool_cuda.INDEX_DTYPE).itemsize
    if fn == "max_pool2d":
        return x + y + indices, y + indices + x
    return x + y, y + x


def _sync(device: str) -> Callable[[], None]:
    return Device(device).synchronize


def _dlcore_step(device: str, shape: tuple, fn: str, kw: dict) -> tuple[Any, int]:
    op = getattr(pool, fn)
    x = dlcore.randn(*shape, device=device, requires_grad=True)
    y = op(x, **kw)
    gy = dlcore.randn(*y.shape, device=device)
    sync = _sync(device)

    def step() -> None:
        x.grad = None
        op(x, **kw).backward(gy)
        sync()

    return step, sum(_traffic(fn, tuple(x.shape), tuple(y.shape), 4))


def _torch_step(shape: tuple, fn: str, kw: dict) -> Any:
    import torch  # optional: a comparison, never a dependency

    op = getattr(torch.nn.functional, fn)
    x = torch.randn(*shape, requires_grad=True)
    gy = torch.randn_like(op(x, **kw))

    def step() -> None:
        x.grad = None
        op(x, **kw).backward(gy)

    return step


def _step_rows(device: str, quick: bool) -> list[dict]:
    torch_ok = device == "cpu" and importlib.util.find_spec("torch") is not None
    rows: list[dict] = []
    for name, shape, fn, kw in CASES:
        if quick or Device(device).type == "emu":  # the emulator: a smoke run
            shape = QUICK_SHAPE
            name = f"{name.rsplit(' ', 2)[0]} {'x'.join(map(str, shape))}"
            if any(row["case"] == name + " fwd+bwd" for row in rows):
                continue  # the 56x56 case is the 112x112 one on the quick shape
        reps, inner = (20, 5) if quick else (5, 1)
        step, nbytes = _dlcore_step(device, shape, fn, kw)
        if torch_ok:  # samples alternate with PyTorch's (timing.time_pair)
            us, ref = time_pair(step, _torch_step(shape, fn, kw), reps, warmup=2, inner=inner)
        else:
            us, ref = time_host(step, reps, warmup=2, inner=inner), None
        gbps = nbytes / us / 1e3
        row = {"suite": "pool", "case": name + " fwd+bwd", "device": device, "median_us": us,
               "gbps": gbps, "note": f"{gbps:.3g} GB/s", "peak_mb": peak_mb(step)}
        if ref is not None:
            row.update(reference="torch-cpu", reference_us=ref, ratio=us / ref)
        rows.append(row)
    return rows


Pair = tuple[int, int]


def _window(kw: dict) -> tuple[Pair, Pair, Pair]:
    k, s, p = kw["kernel_size"], kw.get("stride", kw["kernel_size"]), kw.get("padding", 0)
    return (k, k), (s, s), (p, p)


def _synced(fn: Callable[[], object], sync: Callable[[], None]) -> Callable[[], None]:
    def step() -> None:
        fn()
        sync()

    return step


def _kernels(dev: Device, shape: tuple[int, int, int, int], fn: str, kw: dict,
             dtype: type) -> tuple[dict[str, Callable[[], object]], tuple[int, ...]]:
    """The two pool2d kernels of one layer on random arrays of ``dtype``, and y's shape."""
    kernel, stride, padding = _window(kw)
    out = (pool.pool2d_out_size(shape[2], kernel[0], stride[0], padding[0], 1, False),
           pool.pool2d_out_size(shape[3], kernel[1], stride[1], padding[1], 1, False))
    rng = np.random.default_rng(0)
    with dev.use():
        x = dev.xp.asarray(rng.standard_normal(shape).astype(dtype))
        gy = dev.xp.asarray(rng.standard_normal(shape[:2] + out).astype(dtype))
    if fn == "max_pool2d":
        _, indices = pool_cuda.max_pool2d_forward(dev, x, out, kernel, stride, padding, (1, 1))
        return {"maxpool2d_forward": lambda: pool_cuda.max_pool2d_forward(
                    dev, x, out, kernel, stride, padding, (1, 1)),
                "maxpool2d_backward": lambda: pool_cuda.max_pool2d_backward(
                    dev, gy, indices, shape, kernel, stride, padding, (1, 1))}, gy.shape
    return {"avgpool2d_forward": lambda: pool_cuda.avg_pool2d_forward(
                dev, x, out, kernel, stride, padding, True, None),
            "avgpool2d_backward": lambda: pool_cuda.avg_pool2d_backward(
                dev, gy, shape, kernel, stride, padding, True, None)}, gy.shape


def _torch_kernels(device: str, shape: tuple, fn: str, kw: dict,
                   dtype: type) -> dict[str, Callable[[], object]]:
    """The same computations in PyTorch on the same GPU."""
    import torch  # optional: a comparison, never a dependency

    kernel, stride, padding = _window(kw)
    tdtype = getattr(torch, np.dtype(dtype).name)
    x = torch.randn(*shape, device=device, dtype=tdtype)
    if fn == "max_pool2d":
        y, idx = torch.nn.functional.max_pool2d(x, kernel, stride, padding, return_indices=True)
        gy = torch.randn_like(y)
        back = torch.ops.aten.max_pool2d_with_indices_backward
        return {"maxpool2d_forward": lambda: torch.nn.functional.max_pool2d(
                    x, kernel, stride, padding, return_indices=True),
                "maxpool2d_backward": lambda: back(gy, x, kernel, stride, padding, (1, 1),
                                                   False, idx)}
    gy = torch.randn_like(torch.nn.functional.avg_pool2d(x, kernel, stride, padding))
    back = torch.ops.aten.avg_pool2d_backward
    return {"avgpool2d_forward": lambda: torch.nn.functional.avg_pool2d(x, kernel, stride,
                                                                        padding),
            "avgpool2d_backward": lambda: back(gy, x, kernel, stride, padding, False, True,
                                               None)}


def _torch_cuda(device: str) -> bool:
    if not device.startswith("cuda") or importlib.util.find_spec("torch") is None:
        return False
    import torch  # optional: a comparison, never a dependency

    return bool(torch.cuda.is_available())


def _kernel_rows(device: str, quick: bool) -> list[dict]:
    dev = Device(device)
    if not dev.runs_kernels:
        return []
    cases = [(n, s, f, kw) for n, s, f, kw in CASES if f in ("max_pool2d", "avg_pool2d")]
    reps = 3 if not dev.is_cuda else 5 if quick else 20
    torch_ok = _torch_cuda(device)
    sync = _sync(device)
    rows = []
    for name, shape, fn, kw in cases:
        if quick or not dev.is_cuda:
            shape = QUICK_SHAPE if dev.is_cuda else EMU_SHAPE
            name = f"{name.rsplit(' ', 2)[0]} {'x'.join(map(str, shape))}"
        for dtype in KERNEL_DTYPES:
            kernels, y_shape = _kernels(dev, shape, fn, kw, dtype)
            fwd, bwd = _traffic(fn, shape, y_shape, np.dtype(dtype).itemsize)
            refs = _torch_kernels(device, shape, fn, kw, dtype) if torch_ok else {}
            for (kernel, run), nbytes in zip(kernels.items(), (fwd, bwd)):
                us = time_host(_synced(run, sync), reps, warmup=2, inner=1)
                gbps = nbytes / us / 1e3
                row = {"suite": "pool", "case": f"{name} {np.dtype(dtype).name} {kernel}",
                       "device": device, "median_us": us, "gbps": gbps,
                       "note": f"{gbps:.3g} GB/s"}
                if kernel in refs:
                    ref = time_host(_synced(refs[kernel], sync), reps, warmup=2, inner=1)
                    row.update(reference="torch-cuda", reference_us=ref, ratio=us / ref)
                rows.append(row)
    return rows


def run(device: str = "cpu", quick: bool = False) -> list[dict]:
    return _step_rows(device, quick) + _kernel_rows(device, quick)

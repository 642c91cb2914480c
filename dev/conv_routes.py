"""Every convolution kernel path on every bench shape and direction, timed side by side: the
data a routing decision in dlcore/ops/conv_cuda.py needs (which of the TF32 tensor-core
implicit GEMM, the SIMT implicit GEMM and the depthwise kernels is fastest where several
serve). The H200 run of 2026-12-04 found the stem's input gradient (7x7/2, 3 channels) at
31.9 ms on the tensor-core kernel, 57x cuDNN: its 128-column tiles hold 3 channels and its
strided taps are 3/4 zeros. A developer's tool, not a bench suite:

    python dev/conv_routes.py [--device cuda] [--reps 20] [--json FILE] [CASE-SUBSTRING ...]

float32 throughout; the tensor-core path runs TF32 (its operands rounded to 10 bits), the SIMT
path full float32, so a faster tensor-core time is the price of TF32, as in cuDNN.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import dlcore
from dlcore.backends import cudnn
from dlcore.bench.conv import CASES, EMU_KERNEL_CASE
from dlcore.device import Device
from dlcore.ops import conv_depthwise_cuda, conv_gemm_cuda, conv_tc_cuda
from dlcore.ops.conv import conv2d_out_size

DIRECTIONS = ("conv2d_forward", "conv2d_backward_data", "conv2d_backward_weight")


def _paths(dev: Device, shape: tuple[int, ...]) -> dict[str, Any]:
    n, c, o, h, k, s, p, g = shape
    x_shape, w_shape = (n, c, h, h), (o, c // g, k, k)
    out = conv2d_out_size(h, k, s, p, 1)
    paths: dict[str, Any] = {"simt": conv_gemm_cuda}
    if conv_tc_cuda.serves(dev, np.float32, x_shape, w_shape, g, (out, out), (s, s)):
        paths["tensor cores (tf32)"] = conv_tc_cuda
    if conv_depthwise_cuda.serves(x_shape, w_shape, g):
        paths["depthwise"] = conv_depthwise_cuda
    return paths


def _calls(dev: Device, module: Any, shape: tuple[int, ...]) -> dict[str, Callable[[], Any]]:
    n, c, o, h, k, s, p, g = shape
    out = conv2d_out_size(h, k, s, p, 1)
    rng = np.random.default_rng(0)
    xp = dev.xp
    with dev:
        x = xp.asarray(rng.standard_normal((n, c, h, h), dtype=np.float32))
        w = xp.asarray(rng.standard_normal((o, c // g, k, k), dtype=np.float32))
        gy = xp.asarray(rng.standard_normal((n, o, out, out), dtype=np.float32))
    geo = ((s, s), (p, p), (1, 1), g)
    return {"conv2d_forward": lambda: module.conv2d_forward(dev, x, w, (out, out), *geo),
            "conv2d_backward_data": lambda: module.conv2d_backward_data(dev, gy, w, x.shape,
                                                                        *geo),
            "conv2d_backward_weight": lambda: module.conv2d_backward_weight(dev, x, gy, w.shape,
                                                                            *geo)}


def _time(dev: Device, fn: Callable[[], Any], reps: int) -> float:
    """Median microseconds of ``fn`` with the device synchronised around each call."""
    for _ in range(2):
        fn()
    dev.synchronize()
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        dev.synchronize()
        samples.append(time.perf_counter() - t0)
    return float(np.median(samples) * 1e6)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cases", nargs="*", help="substrings of the bench's case names (default all)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--json", dest="json_path")
    args = ap.parse_args(argv)
    dev = Device(args.device)
    cases = [EMU_KERNEL_CASE] if dev.type == "emu" else [
        c for c in CASES if not args.cases or any(s in c[0] for s in args.cases)]
    previous = cudnn.allow_tf32
    cudnn.allow_tf32 = True  # the tensor-core path serves float32 only with TF32 allowed
    rows = []
    try:
        for name, *shape in cases:
            for label, module in _paths(dev, tuple(shape)).items():
                calls = _calls(dev, module, tuple(shape))
                for direction in DIRECTIONS:
                    us = _time(dev, calls[direction], args.reps)
                    rows.append({"case": name, "path": label, "direction": direction,
                                 "median_us": us})
                    print(f"{name:<30} {direction:<24} {label:<20} {us:>10.1f} us", flush=True)
    finally:
        cudnn.allow_tf32 = previous
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump({"device": str(dev), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                 time.gmtime()),
                       "dlcore": dlcore.__version__, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

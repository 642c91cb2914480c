"""Time the conv2d kernels (dlcore.ops.conv_cuda) and report GFLOP/s, next to PyTorch/cuDNN
when torch is importable. A kernel experiment, not a test: run it where a GPU is::

    python dev/conv2d_bench.py                       # cuda, ResNet-ish layers
    python dev/conv2d_bench.py --device emu --tiny   # smoke run of the script on the emulator

FLOPs are 2 * N*Ho*Wo * F * Cg*KH*KW per direction (one multiply-add per GEMM term); the
fraction of peak is left to the reader's card (H100 SXM: about 60 TFLOP/s fp32 without tensor
cores).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from dlcore.device import Device
from dlcore.ops import conv_cuda

# (N, C, H, W, F, K, stride, padding, groups)
LAYERS = [(32, 64, 56, 56, 64, 3, 1, 1, 1), (32, 128, 28, 28, 256, 3, 2, 1, 1),
          (32, 256, 14, 14, 256, 1, 1, 0, 1), (32, 64, 56, 56, 64, 3, 1, 1, 64)]
TINY = [(1, 4, 9, 9, 8, 3, 1, 1, 1)]


def _median_seconds(dev: Device, fn: Callable[[], object], repeats: int) -> float:
    sync = dev.xp.cuda.Stream.null.synchronize if dev.type == "cuda" else (lambda: None)
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="one small layer (emulator smoke)")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    dev = Device(args.device)
    try:
        import torch  # optional comparison, never a dependency
        torch.backends.cudnn.allow_tf32 = False  # compare fp32 with fp32, not TF32
    except ImportError:
        torch = None
    print(f"{'layer':<36} {'direction':<16} {'ms':>8} {'GFLOP/s':>9} {'torch ms':>9}")
    for n, c, h, w, f, k, s, p, g in TINY if args.tiny else LAYERS:
        rng = np.random.default_rng(0)
        x = dev.xp.asarray(rng.standard_normal((n, c, h, w), dtype=np.float32))
        wt = dev.xp.asarray(rng.standard_normal((f, c // g, k, k), dtype=np.float32))
        conv = ((s, s), (p, p), (1, 1), g)
        y = conv_cuda.conv2d_forward(dev, x, wt, *conv)
        flops = 2.0 * y.size * (c // g) * k * k
        runs = {
            "forward": lambda: conv_cuda.conv2d_forward(dev, x, wt, *conv),
            "backward_data": lambda: conv_cuda.conv2d_backward_data(dev, y, wt, x.shape, *conv),
            "backward_weight": lambda: conv_cuda.conv2d_backward_weight(dev, x, y, wt.shape,
                                                                        *conv),
        }
        for direction, fn in runs.items():
            seconds = _median_seconds(dev, fn, args.repeats)
            ref = ""
            if torch is not None and dev.type == "cuda" and direction == "forward":
                tx, tw = torch.as_tensor(x, device="cuda"), torch.as_tensor(wt, device="cuda")
                seconds_ref = _median_seconds(
                    dev, lambda: torch.nn.functional.conv2d(tx, tw, stride=s, padding=p, groups=g),
                    args.repeats)
                ref = f"{seconds_ref * 1e3:9.3f}"
            layer = f"{n}x{c}x{h}x{w} F{f} k{k} s{s} g{g}"
            print(f"{layer:<36} {direction:<16} {seconds * 1e3:8.3f} "
                  f"{flops / seconds / 1e9:9.1f} {ref:>9}")


if __name__ == "__main__":
    main()

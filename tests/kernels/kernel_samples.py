"""Launch wrappers for tests/kernels/cu/samples.cu and their NumPy twins, shared by the emulator
tests and the CUDA agreement tests. ``xp`` is the device's array module; launches go through the
device's kernel runner, as product ops do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dlcore.kernels import ceil_div, grid_1d

CU_DIR = Path(__file__).resolve().parent / "cu"
SAMPLES = CU_DIR / "samples.cu"
PLANTED_BUGS = CU_DIR / "planted_bugs.cu"
SEEDS = (1, 2, 3)  # fiber-order seeds every emulator test runs under
TILE, ROWS = 32, 8


def block_sum(dev: Any, x: Any, blocks: int = 4, block: int = 256,
              source: Path = SAMPLES, name: str | None = None) -> Any:
    name = name or f"block_sum<{'float' if x.dtype == np.float32 else 'double'}>"
    partial = dev.xp.zeros(blocks, dtype=x.dtype)
    dev.kernels.function(source, name)((blocks,), (block,), (x, partial, np.int64(x.size)))
    return partial


def warp_block_sum(dev: Any, x: Any, blocks: int = 3, block: int = 128) -> Any:
    partial = dev.xp.zeros(blocks, dtype=np.float32)
    dev.kernels.function(SAMPLES, "warp_block_sum")((blocks,), (block,),
                                                    (x, partial, np.int64(x.size)))
    return partial


def count_positive(dev: Any, x: Any) -> Any:
    count = dev.xp.zeros(1, dtype=np.int32)
    dev.kernels.function(SAMPLES, "count_positive")(grid_1d(x.size, 64, 8), (64,),
                                                     (x, count, np.int64(x.size)))
    return count


def transpose(dev: Any, a: Any) -> Any:
    rows, cols = a.shape
    out = dev.xp.empty((cols, rows), dtype=a.dtype)
    grid = (ceil_div(cols, TILE), ceil_div(rows, TILE))
    dev.kernels.function(SAMPLES, "transpose_tiled<float>")(
        grid, (TILE, ROWS), (a, out, np.int32(rows), np.int32(cols)),
        shared_mem=TILE * (TILE + 1) * a.itemsize)
    return out


def histogram(dev: Any, labels: Any, bins: int) -> Any:
    counts = dev.xp.zeros(bins, dtype=np.int32)
    dev.kernels.function(SAMPLES, "histogram")((3,), (96,), (labels, counts, np.int64(labels.size),
                                                             np.int32(bins)))
    return counts


def scale(dev: Any, x: Any, alpha: float) -> Any:
    t = "float" if x.dtype == np.float32 else "double"
    y = dev.xp.empty_like(x)
    dev.kernels.function(SAMPLES, f"scale<{t}>")(grid_1d(x.size, 128, 4), (128,),
                                                  (x, y, x.dtype.type(alpha), np.int64(x.size)))
    return y

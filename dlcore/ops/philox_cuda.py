"""Graph-safe random numbers on cuda and emu: launches of kernels/philox.cu.

A CUDA graph replays its kernels' arguments as captured, so a draw from the devices' usual
generators would repeat itself on every replay. While a graph is captured or replayed,
``dlcore.random.uniform_array``/``normal_array`` draw from the graph's :class:`PhiloxStream`
instead: Philox4x64-10 blocks counted from a start kept in device memory, which the graph's
last node advances. The NumPy twin, and the tests' oracle, is :mod:`.philox_cpu`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import kernels
from ..device import Device

__all__ = ["SOURCE", "THREADS", "PhiloxStream"]

SOURCE = "philox.cu"
THREADS = 256
_PHILOX_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double",
                 np.dtype(np.float16): "__half"}


class PhiloxStream:
    """One graph's random numbers: Philox4x64-10 blocks from a start counter kept in device
    memory (``base``), so a captured draw reads where it starts at replay time. ``consumed``
    counts the blocks the graph's draws take in capture order (each draw's offset is frozen
    into the graph; the same order replays the same offsets), and :meth:`advance` moves
    ``base`` past them: the graph's last node, so every replay draws new numbers."""

    def __init__(self, device: Device, key: tuple[int, int]) -> None:
        self.device = device
        self.key = (np.uint64(key[0] % 2**64), np.uint64(key[1] % 2**64))
        with device:
            self.base = device.xp.zeros(1, np.uint64)
        self.consumed = 0

    def draw(self, kind: str, shape: tuple[int, ...], a: float, b: float,
             dtype: np.dtype) -> Any:
        dtype = np.dtype(dtype)
        ctype = _PHILOX_TYPES.get(dtype)
        if ctype is None:
            raise TypeError(f"{kind} random numbers of dtype {dtype} inside CUDA graph capture "
                            "are not supported (graph-safe draws take float16, float32 or "
                            "float64)")
        n = int(math.prod(shape))
        blocks = (n + 3) // 4
        xp = self.device.xp
        with self.device:
            out = xp.empty(n, dtype)
            if blocks:
                kernels.launch(self.device, SOURCE, f"philox_{kind}<{ctype}>",
                               kernels.grid_1d(blocks, THREADS, max_blocks=4096), (THREADS,),
                               (out, np.int64(n), *self.key, self.base,
                                np.uint64(self.consumed), np.float64(a), np.float64(b)))
        self.consumed += blocks
        return out.reshape(shape)

    def advance(self) -> None:
        if self.consumed:
            with self.device:
                kernels.launch(self.device, SOURCE, "philox_advance",
                               kernels.grid_1d(1, THREADS), (THREADS,),  # thread 0 acts
                               (self.base, np.uint64(self.consumed)))

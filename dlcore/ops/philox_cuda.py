"""Graph-safe random numbers on cuda and emu: launches of kernels/philox.cu.

A CUDA graph replays its kernels' arguments as captured, so a draw from the devices' usual
generators would repeat itself on every replay. While a graph is captured or replayed,
``dlcore.random.uniform_array``/``normal_array`` draw from the graph's :class:`PhiloxStream`
instead: Philox4x64-10 blocks counted from a start kept in device memory, which the graph's
last node advances. The NumPy twin, and the tests' oracle, is :mod:`.philox_cpu`.
"""

from __future__ import annotations

import numpy as np

from .. import kernels
from ..random import PHILOX_SOURCE as SOURCE
from ..random import PHILOX_THREADS as THREADS
from ..random import PhiloxGenerator

__all__ = ["SOURCE", "THREADS", "PhiloxStream"]


class PhiloxStream(PhiloxGenerator):
    """One graph's random numbers: Philox4x64-10 blocks from a start counter kept in device
    memory (``base``), so a captured draw reads where it starts at replay time. ``consumed``
    counts the blocks the graph's draws take in capture order (each draw's offset is frozen
    into the graph; the same order replays the same offsets), and :meth:`advance` moves
    ``base`` past them: the graph's last node, so every replay draws new numbers. The draws
    themselves are :class:`dlcore.random.PhiloxGenerator`'s (each device's eager generator
    on cuda is one too)."""

    def advance(self) -> None:
        if self.consumed:
            with self.device:
                kernels.launch(self.device, SOURCE, "philox_advance",
                               kernels.grid_1d(1, THREADS), (THREADS,),  # thread 0 acts
                               (self.base, np.uint64(self.consumed)))

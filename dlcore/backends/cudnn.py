"""``dlcore.backends.cudnn``: PyTorch's cuDNN switches, under their names.

dlcore runs its own convolution kernels, not cuDNN; these flags are what those kernels
consult, with PyTorch's defaults, so ported programs keep their meaning:

* ``benchmark``: the first call of each float32 convolution shape times the kernels' tile
  configurations and keeps the fastest per device (:mod:`dlcore.ops.conv_cuda`). The choice
  never changes a result's bits.
* ``deterministic``: always satisfied; no dlcore kernel uses atomics or a run-dependent
  reduction order, with or without ``benchmark``.
* ``allow_tf32``: whether float32 convolutions may run on tensor cores in TF32 (10-bit
  mantissa inputs, float32 accumulation).
"""

from __future__ import annotations

enabled = True
allow_tf32 = True  # PyTorch's default for convolutions
benchmark = False
deterministic = False


def is_available() -> bool:
    """Whether the cuDNN switches are honoured: dlcore's own kernels stand in for cuDNN."""
    return True

"""``dlcore.backends.cudnn``: PyTorch's cuDNN switches, under their names.

dlcore runs its own convolution kernels, not cuDNN; these flags are what those kernels will
consult (TF32 tensor-core math, per-shape autotuning, determinism), with PyTorch's defaults.
Today every dlcore kernel is deterministic and uses no TF32, so setting them changes nothing
yet; they are accepted so that ported programs run unchanged.
"""

from __future__ import annotations

enabled = True
allow_tf32 = True  # PyTorch's default for convolutions
benchmark = False
deterministic = False


def is_available() -> bool:
    """Whether the cuDNN switches are honoured: dlcore's own kernels stand in for cuDNN."""
    return True

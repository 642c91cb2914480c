"""Host memory: how the CPU path's arrays get their memory from glibc's malloc.

NumPy takes every array's buffer from ``malloc``. glibc serves blocks above its mmap threshold
(128 KiB at first, then the size of the largest mapped block freed so far, at most 32 MiB on
64-bit) with a fresh ``mmap``, and gives the top of its heap back to the system once more than
its trim threshold (twice the mmap threshold) is free there. A training step allocates and
frees the same few hundred arrays of up to tens of MiB every time, so with those adaptive
defaults a large part of them are fresh pages again on every step, each page (4 KiB, or a
larger folio) a fault into the kernel on first touch. Measured on the 2-core VM of the
README's CPU table (2026-12-03, one BLAS thread, 20 steps after 5 warm-up steps): the
ResNet-8 step (``dlcore bench models``) took about 7900 minor page faults and 20 ms of system
time per step (PyTorch's step beside it 4000 and 13 ms); with the thresholds below, 2 faults
and no system time (PyTorch's 77). LeNet, the LSTM classifier and the GAN step (arrays of at
most a few hundred KiB) had none either way.

So at ``import dlcore`` on glibc, unless the user chose otherwise, dlcore sets (``mallopt``)

* ``M_MMAP_THRESHOLD`` to 32 MiB, glibc's own upper bound for its adaptive threshold: blocks
  up to that come from the heap, whose freed memory is reused by the next step's arrays;
* ``M_TRIM_THRESHOLD`` to 1 GiB: up to that much free memory at the top of the heap stays
  with the process instead of being handed back and faulted in again.

The cost is memory the process keeps after a peak, as PyTorch's CUDA caching allocator keeps
device memory: :func:`release` (glibc's ``malloc_trim``) hands the free memory back now.
Blocks above 32 MiB are still mapped and unmapped each time (glibc refuses a larger
threshold).

The user's choice wins, as for the thread count (:mod:`dlcore.threads`): with any of glibc's
own ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_`` or
``GLIBC_TUNABLES`` in the environment, or ``DLCORE_HOST_MALLOC=system``, dlcore changes
nothing. Elsewhere than glibc (macOS, Windows, musl) this module does nothing. The settings
hold for the whole process, as ``import dlcore``'s BLAS thread count does.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

__all__ = ["describe", "release", "settings"]

MMAP_THRESHOLD = 32 * 2**20
TRIM_THRESHOLD = 2**30
# glibc's malloc.h
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
USER_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
            "GLIBC_TUNABLES")
OPT_OUT = "DLCORE_HOST_MALLOC"

_state: dict[str, Any] = {"applied": False, "reason": "not applied yet"}


def _libc() -> Any:
    """glibc's handle, or None on any other C library."""
    try:  # "glibc 2.39" on glibc; raises or differs on other C libraries
        if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
            return None
    except (AttributeError, ValueError, OSError):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def user_choice() -> str | None:
    """What the user chose for malloc (``"NAME=value"`` of the environment), or None."""
    if os.environ.get(OPT_OUT, "").strip().lower() == "system":
        return f"{OPT_OUT}=system"
    for name in USER_ENV:
        if os.environ.get(name, "").strip():
            return f"{name}={os.environ[name]}"
    return None


def apply_default() -> None:
    """Set the thresholds above unless the user chose, or the C library is not glibc (done
    at import)."""
    choice = user_choice()
    if choice is not None:
        _state.update(applied=False, reason=f"the user's choice: {choice}")
        return
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        _state.update(applied=False, reason="not glibc: malloc left as it is")
        return
    ok = (libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
          and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
    if ok:
        _state.update(applied=True, reason="dlcore's default",
                      mmap_threshold=MMAP_THRESHOLD, trim_threshold=TRIM_THRESHOLD)
    else:
        _state.update(applied=False, reason="glibc refused mallopt")


def settings() -> dict[str, Any]:
    """Whether dlcore set malloc's thresholds in this process, why (not), and the values."""
    return dict(_state)


def describe() -> str:
    """One line for ``dlcore info``: the thresholds dlcore set, or why it set none."""
    if _state["applied"]:
        return (f"glibc, mmap threshold {MMAP_THRESHOLD // 2**20} MiB, trim threshold "
                f"{TRIM_THRESHOLD // 2**20} MiB (dlcore's default; {OPT_OUT}=system opts out)")
    return f"left as it is: {_state['reason']}"


def release() -> bool:
    """Hand the free memory malloc keeps back to the system now (glibc's ``malloc_trim(0)``);
    True if any was released. Nothing to do (False) elsewhere than glibc."""
    libc = _libc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return False
    return bool(libc.malloc_trim(0))


apply_default()

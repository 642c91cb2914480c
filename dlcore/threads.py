"""CPU threads: ``dlcore.set_num_threads`` / ``get_num_threads``, PyTorch's names.

The CPU path's arithmetic runs in NumPy's BLAS (OpenBLAS, MKL), which starts its own thread
pool; threadpoolctl (a small well-kept library) is how its size is set without restarting
the process. On a busy or small machine one thread is often fastest: BLAS's spinning threads
compete with everything else (measured: a DCGAN example took 26-39 s instead of 5 s with two
BLAS threads beside other jobs on a 2-core VM).
"""

from __future__ import annotations

from typing import Any

from threadpoolctl import threadpool_info, threadpool_limits

__all__ = ["get_num_threads", "set_num_threads"]

_limits: Any = None  # the threadpool_limits in force (kept alive: it holds the setting)


def set_num_threads(n: int) -> None:
    """Use ``n`` threads for the CPU path's BLAS from now on (in this process)."""
    global _limits
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_num_threads: expected an int >= 1, got {n!r}")
    _limits = threadpool_limits(limits=n, user_api="blas")


def get_num_threads() -> int:
    """The number of threads the CPU path's BLAS uses (1 when NumPy has no threaded BLAS)."""
    pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
    return max((int(p["num_threads"]) for p in pools), default=1)

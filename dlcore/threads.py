"""CPU threads: ``dlcore.set_num_threads`` / ``get_num_threads``, PyTorch's names, and dlcore's
thread budget (the BLAS default, and the share the DataLoader's threads take of it).

The CPU path's arithmetic runs in NumPy's BLAS (OpenBLAS, MKL), which starts its own thread
pool; threadpoolctl (a small well-kept library) is how its size is set without restarting
the process.

The default (when the user chose nothing): **one BLAS thread on a machine with at most two
usable CPUs** (``os.sched_getaffinity``, so a ``taskset`` or container mask counts, not the
host's cores), else one per usable CPU (the BLAS's own default, sized to the mask). Why:
a multi-threaded BLAS call ends at a barrier, so it runs at the speed of its slowest thread;
OpenBLAS's threads also spin while they wait. On a shared machine one of them is soon
descheduled and every call waits a scheduler time slice for it. Measured on the 2-core VM
this was written on, itself loaded by other jobs (load average 2-6), the LeNet training
step (``dlcore.bench.models``, ``dlcore bench load``): 15-24 ms with one BLAS thread, 52-226
ms with two; beside two CPU-bound neighbours in their own sessions 23-36 ms (median slowdown
1.45-1.6x over 4 rounds, the pure-Python floor 1.4-1.9x) against 198-315 ms with two
threads; a DCGAN example took 26-39 s instead of 5 s. On two CPUs a second thread can at
best halve a large matmul's time, while under load it costs 3-10x, and dlcore's CPU ops
are mostly small (overhead-bound) anyway. ``OPENBLAS_THREAD_TIMEOUT=4`` (shorter spinning;
read only when OpenBLAS loads) did not help: 112-114 ms quiet, 290-490 ms loaded, two
threads. Larger machines keep a thread per CPU, as BLAS would (not measured here; on a
busy one the same stalls apply: set ``set_num_threads(1)`` or ``OMP_NUM_THREADS=1``).

An explicit choice always wins and is never changed by dlcore: ``set_num_threads(n)``, or
any of ``OMP_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS`` / ``MKL_NUM_THREADS`` /
``BLIS_NUM_THREADS`` in the environment (then dlcore leaves BLAS as the library set it up).

The default applies at ``import dlcore`` to the BLAS libraries loaded then (NumPy's), so it
changes NumPy's thread count in the whole process, as ``torch.set_num_threads`` would if
PyTorch ran on NumPy.

PyTorch's ``get_num_interop_threads`` / ``set_num_interop_threads`` have no counterpart:
dlcore runs ops one after another in the calling thread and has no inter-op pool to size.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from threadpoolctl import ThreadpoolController, threadpool_info, threadpool_limits

__all__ = ["get_num_threads", "set_num_threads"]

# Environment variables that name a BLAS or OpenMP thread count: any of them set is the
# user's choice, which dlcore leaves alone.
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")

_limits: Any = None  # the threadpool_limits in force (kept alive: it holds the setting)
_user_set = False  # set_num_threads was called: the user's number, never adjusted

# The DataLoader's share (loader_threads_started): loader threads running in this process,
# and the BLAS thread count from before the loaders lowered it (None: not lowered).
_lock = threading.RLock()  # re-entrant: a dropped loader's finalizer may run inside (gc)
_loader_threads = 0
_saved: int | None = None
_controller: ThreadpoolController | None = None  # cached: a fresh one scans all libraries
_scanned_modules = -1  # len(sys.modules) at that scan: more modules may mean more libraries


def set_num_threads(n: int) -> None:
    """Use ``n`` threads for the CPU path's BLAS from now on (in this process). An explicit
    setting: dlcore's defaults and the DataLoader's budget leave it alone from then on."""
    global _limits, _user_set, _saved
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_num_threads: expected an int >= 1, got {n!r}")
    with _lock:
        _user_set, _saved = True, None
        _limits = threadpool_limits(limits=n, user_api="blas")


@contextlib.contextmanager
def limit(n: int) -> Iterator[None]:
    """Within it, BLAS uses ``n`` threads as if set by :func:`set_num_threads` (an explicit
    choice: the DataLoader's budget leaves it alone); the count and whether the user had
    chosen are restored on leaving."""
    global _user_set
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"limit: expected an int >= 1, got {n!r}")
    with _lock:
        was_set = _user_set
        _user_set = True
        limiter = threadpool_limits(limits=n, user_api="blas")
    try:
        yield
    finally:
        with _lock:
            limiter.restore_original_limits()
            _user_set = was_set


def get_num_threads() -> int:
    """The number of threads the CPU path's BLAS uses (1 when NumPy has no threaded BLAS)."""
    pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
    return max((int(p["num_threads"]) for p in pools), default=1)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask; ``os.cpu_count()`` where the
    platform has no ``sched_getaffinity``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def user_choice() -> str | None:
    """What the user chose for the thread count (``"set_num_threads"`` or ``"NAME=value"``
    of the environment), or ``None`` when dlcore's defaults apply."""
    if _user_set:
        return "set_num_threads"
    for name in THREAD_ENV:
        if os.environ.get(name, "").strip():
            return f"{name}={os.environ[name]}"
    return None


def default_num_threads(cpus: int | None = None) -> int:
    """dlcore's default BLAS thread count for ``cpus`` usable CPUs (default: this process's):
    1 on at most two, else one per CPU (the module docstring says why)."""
    cpus = usable_cpus() if cpus is None else cpus
    return 1 if cpus <= 2 else cpus


def apply_default() -> None:
    """Set BLAS to :func:`default_num_threads` unless the user chose (done at import)."""
    global _limits
    if user_choice() is not None:
        return
    n = default_num_threads()
    if _blas_threads(fresh=True) != n:
        _limits = threadpool_limits(limits=n, user_api="blas")


def _blas(fresh: bool = False) -> Any:
    """The BLAS libraries loaded (rescanned, about 1.5 ms, only when an import happened since:
    SciPy, for one, brings its own OpenBLAS)."""
    global _controller, _scanned_modules
    if _controller is None or fresh or len(sys.modules) != _scanned_modules:
        _controller = ThreadpoolController()
        _scanned_modules = len(sys.modules)
    return _controller.select(user_api="blas")


def _blas_threads(fresh: bool = False) -> int:
    return max((int(lib.num_threads) for lib in _blas(fresh).lib_controllers), default=1)


def loader_threads_started(count: int) -> Callable[[], None]:
    """``count`` DataLoader threads start in this process; returns the function to call when
    they are done (calling it again does nothing).

    The policy: loader threads and BLAS threads together never ask for more than the usable
    CPUs. While ``k`` loader threads run, BLAS gets at most ``max(1, cpus - k)`` threads; the
    count from before is restored when the last loader finishes. It only ever lowers BLAS's
    count, never raises it (a lower count someone set, e.g. ``dlcore train --threads 1``,
    stays), and does nothing when the user chose (:func:`user_choice`). Loader threads do
    the Python side of loading (indexing, collation), which holds the GIL for much of the
    time, yet each is a runnable thread the scheduler must place: on a 2-core machine the
    default of one BLAS thread already leaves room for one loader thread.
    """
    global _loader_threads, _saved
    with _lock:
        _loader_threads += count
        if user_choice() is None:
            budget = max(1, usable_cpus() - _loader_threads)
            current = _blas_threads()
            if current > budget:
                _saved = current if _saved is None else _saved
                _blas().limit(limits=budget)
    done = False

    def finished() -> None:
        global _loader_threads, _saved
        nonlocal done
        with _lock:
            if done:
                return
            done = True
            _loader_threads -= count
            if _saved is None:
                return
            if user_choice() is not None:  # the user chose meanwhile: theirs stands
                _saved = None
                return
            target = min(_saved, max(1, usable_cpus() - _loader_threads))
            if _blas_threads() != target:
                _blas().limit(limits=target)
            if _loader_threads == 0:
                _saved = None

    return finished


def active_loader_threads() -> int:
    """DataLoader threads running in this process now (:func:`loader_threads_started`)."""
    return _loader_threads


apply_default()

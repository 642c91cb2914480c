"""Load: the LeNet training step (the ``models`` suite's) on a quiet machine, then beside
``NEIGHBOURS`` CPU-bound processes (``while True: pass``), and the slowdown.

What it shows is how the CPU threads behave when the machine is shared: a BLAS whose
threads wait at a barrier for one that is descheduled turns a small slowdown into a large
one (``dlcore.threads`` says how dlcore sizes them). Rows:

* ``lenet ... beside K neighbours``: ``quiet_us``, ``loaded_us`` (= ``median_us``) and
  ``slowdown`` (loaded / quiet) for dlcore, with ``blas_threads``; PyTorch's step as the
  reference (``reference_quiet_us``, ``reference_us`` loaded, ``reference_slowdown``, its
  ``torch_threads``) when importable and the device is the cpu.
* ``python loop ...``: the same for a pure-Python loop as long as dlcore's quiet step, one
  thread that never waits for another: the slowdown the scheduler alone gives this
  process, the floor for the others.

The neighbours run in their own sessions (``start_new_session``), as other jobs on the machine
do: on Linux with ``sched_autogroup`` (most desktops and VMs) processes in one session share
one group's CPU share, so neighbours started in this process's session would slow any
single-threaded program about (K+1)x whatever its threads do. Each neighbour also exits by
itself once this process is gone, and the suite always stops them (``finally``).
``"quiet"`` is the machine as it was: on a shared one other jobs run in both measurements.
"""

from __future__ import annotations

import importlib.util
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import dlcore

from . import models

NEIGHBOURS = 2
CASE = "lenet digits 1x8x8"

# A neighbour: spin, and stop once its parent (this process) is gone.
_SPIN = ("import os\np = os.getppid()\nwhile os.getppid() == p:\n"
         "    for _ in range(1000000): pass\n")

neighbour_pids: list[int] = []  # the last run's neighbours (for tests: none may remain)


@contextmanager
def neighbours(k: int, new_session: bool = True) -> Iterator[list[subprocess.Popen]]:
    """``k`` CPU-bound processes running while inside; terminated (then killed) and waited
    for on leaving, however it is left."""
    procs: list[subprocess.Popen] = []
    neighbour_pids.clear()
    try:
        for _ in range(k):
            procs.append(subprocess.Popen([sys.executable, "-c", _SPIN],
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL,
                                          start_new_session=new_session))
            neighbour_pids.append(procs[-1].pid)
        time.sleep(0.2)  # let them start spinning
        yield procs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _time(step: Callable[[], None], quick: bool) -> float:
    """Median microseconds per call over about 0.25 s (quick) or 1.5 s, at least 3 calls
    after one warm-up (a step that takes long under load stays short in time, not in
    calls)."""
    budget = 0.25 if quick else 1.5
    step()
    samples: list[float] = []
    end = time.perf_counter() + budget
    while len(samples) < 3 or time.perf_counter() < end:
        t0 = time.perf_counter()
        step()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e6


def _python_loop(n: int = 20000) -> None:
    s = 0
    for i in range(n):
        s += i


def _python_loop_like(us: float) -> Callable[[], None]:
    """A pure-Python loop that takes about ``us`` microseconds now: the floor must span as
    many scheduler time slices as the step, or its median would miss the preemptions."""
    per_call = statistics.median(_timed(_python_loop) for _ in range(5))
    n = int(min(max(20000 * us / max(per_call, 1e-3), 20000), 5e7))
    return lambda: _python_loop(n)


def _timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e6


def _torch_threads() -> int | None:
    import torch  # optional: a comparison, never a dependency

    return int(torch.get_num_threads())


def run(device: str = "cpu", quick: bool = False, k: int = NEIGHBOURS) -> list[dict]:
    dlcore.manual_seed(0)
    batch, build = models._dlcore_cases(device, quick)[CASE]
    steps: dict[str, Callable[[], None]] = {"dlcore": build()}
    quiet = {"dlcore": _time(steps["dlcore"], quick)}
    steps["python"] = _python_loop_like(quiet["dlcore"])
    if device == "cpu" and importlib.util.find_spec("torch"):
        steps["torch"] = models._torch_cases(8)[CASE]()
    quiet.update({name: _time(step, quick) for name, step in steps.items() if name != "dlcore"})
    with neighbours(k):
        loaded = {name: _time(step, quick) for name, step in steps.items()}
    where = f"beside {k} neighbours"
    row: dict[str, Any] = {
        "suite": "load", "case": f"{CASE} N={batch} train step {where}", "device": device,
        "median_us": loaded["dlcore"], "quiet_us": quiet["dlcore"],
        "loaded_us": loaded["dlcore"], "slowdown": loaded["dlcore"] / quiet["dlcore"],
        "neighbours": k, "blas_threads": dlcore.get_num_threads()}
    if "torch" in steps:
        row.update(reference="torch-cpu", reference_us=loaded["torch"],
                   reference_quiet_us=quiet["torch"],
                   reference_slowdown=loaded["torch"] / quiet["torch"],
                   ratio=loaded["dlcore"] / loaded["torch"], torch_threads=_torch_threads())
    floor = {"suite": "load", "case": f"python loop (one thread) {where}", "device": "cpu",
             "median_us": loaded["python"], "quiet_us": quiet["python"],
             "loaded_us": loaded["python"], "slowdown": loaded["python"] / quiet["python"],
             "neighbours": k}
    return [row, floor]

"""Timing helpers: warm-up, then the median of many repetitions; and the energy of each
timed loop where a meter can be read (``dlcore.energy``), so the runner can give each case
its joules per call."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..energy import EnergyMeter

# While the runner runs a suite (:func:`energy_per_case`): the device whose meter to read
# around each timed loop, and what each loop measured, by the median it returned (a row's
# ``median_us`` or ``reference_us`` is that value unchanged; a figure derived from several
# loops has no entry, so no made-up joules).
_meter_device: str | None = None
_measured: dict[float, float] = {}


@contextlib.contextmanager
def energy_per_case(device: str) -> Iterator[dict[float, float]]:
    """Within it, :func:`time_host` meters its timed loops on ``device``; yields the map
    from each returned median (µs) to the joules per call of its loop (where readable)."""
    global _meter_device
    _measured.clear()
    _meter_device = device
    try:
        yield _measured
    finally:
        _meter_device = None


def time_host(fn: Callable[[], None], reps: int, warmup: int | None = None,
              inner: int = 10) -> float:
    """Median host wall time of ``fn`` in microseconds (``inner`` calls per sample)."""
    for _ in range(warmup if warmup is not None else max(10, reps // 10)):
        fn()
    meter: Any = EnergyMeter(_meter_device) if _meter_device is not None else None
    samples = []
    with meter if meter is not None else contextlib.nullcontext():
        for _ in range(max(1, reps // inner)):
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            samples.append((time.perf_counter() - t0) / inner)
    us = statistics.median(samples) * 1e6
    if meter is not None and meter.joules is not None:
        _measured[us] = meter.joules / (len(samples) * inner)
    return us


def time_pair(fn: Callable[[], None], ref: Callable[[], None], reps: int,
              warmup: int | None = None, inner: int = 10) -> tuple[float, float]:
    """Median host wall times (µs) of ``fn`` and of the reference ``ref``, their samples
    taken alternately (``inner`` calls of one, then of the other): on a shared machine whose
    speed drifts over seconds (the project's VMs: PyTorch's own step times moved 1.1-2.7x
    within a day), two loops run one after the other see different machines and their ratio
    moves with the drift; alternating samples see the same one. While energy is metered
    (:func:`energy_per_case`) each loop has to be metered alone, so the two are timed one
    after the other by :func:`time_host`."""
    if _meter_device is not None:
        return time_host(fn, reps, warmup, inner), time_host(ref, reps, warmup, inner)
    for _ in range(warmup if warmup is not None else max(10, reps // 10)):
        fn()
        ref()
    a: list[float] = []
    b: list[float] = []
    for _ in range(max(1, reps // inner)):
        for f, out in ((fn, a), (ref, b)):
            t0 = time.perf_counter()
            for _ in range(inner):
                f()
            out.append((time.perf_counter() - t0) / inner)
    return statistics.median(a) * 1e6, statistics.median(b) * 1e6

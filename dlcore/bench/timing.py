"""Timing helpers: warm-up, then the median of many repetitions."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def time_host(fn: Callable[[], None], reps: int, warmup: int | None = None,
              inner: int = 10) -> float:
    """Median host wall time of ``fn`` in microseconds (``inner`` calls per sample)."""
    for _ in range(warmup if warmup is not None else max(10, reps // 10)):
        fn()
    samples = []
    for _ in range(max(1, reps // inner)):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t0) / inner)
    return statistics.median(samples) * 1e6

"""Recurrent layers: one-layer LSTM and GRU, forward + backward over T=50 steps.

Cases: hidden 256/512/1024 (input size = hidden) x batch 1/4/16/64 (quick: hidden 256, batch 1
and 16). The loss is ``output.sum() + h_n.sum()``, so backward runs through every step. FLOPs
per iteration are about 3x the forward GEMMs, ``3 * 2 * T * N * (I + H) * G * H`` (G = 4 for
LSTM, 3 for GRU), reported as ``gflop_s``: at batch 1 the per-step GEMMs are matrix-vector
products and the figure shows the per-step overhead; at batch 64 it approaches BLAS speed.
PyTorch CPU (``torch.nn.LSTM``/``GRU``) runs the same case when importable, with
``$OMP_NUM_THREADS`` threads (default: all cores, as NumPy's BLAS uses). NOTE: on a small shared
VM multi-threaded BLAS can be many times slower than one thread (contention); compare with
``OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1`` there.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import dlcore
from dlcore.nn.rnn import GRU, LSTM

from .timing import time_host, time_pair

T = 50
GATES = {"lstm": 4, "gru": 3}


def _dlcore_step(mode: str, hidden: int, batch: int, device: str) -> Callable[[], None]:
    dlcore.manual_seed(0)
    layer = (LSTM if mode == "lstm" else GRU)(hidden, hidden).to(device)
    x = dlcore.randn(T, batch, hidden, device=device, requires_grad=True)

    def step() -> None:
        x.grad = None
        out, state = layer(x)
        h_n = state[0] if mode == "lstm" else state
        (out.sum() + h_n.sum()).backward()

    return step


def _torch_step(mode: str, hidden: int, batch: int) -> Callable[[], None]:
    import torch  # optional: a comparison, never a dependency

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1))
    torch.manual_seed(0)
    layer = (torch.nn.LSTM if mode == "lstm" else torch.nn.GRU)(hidden, hidden)
    x = torch.randn(T, batch, hidden, requires_grad=True)

    def step() -> None:
        x.grad = None
        out, state = layer(x)
        h_n = state[0] if mode == "lstm" else state
        (out.sum() + h_n.sum()).backward()

    return step


def _reps(step: Callable[[], None], quick: bool) -> int:
    """Repetitions sized so each case takes about a second or two."""
    t0 = time.perf_counter()
    step()
    once = time.perf_counter() - t0
    return int(np.clip((0.5 if quick else 2.0) / max(once, 1e-6), 3, 200))


def _time(step: Callable[[], None], quick: bool,
          ref: Callable[[], None] | None = None) -> tuple[float, float | None]:
    """Median microseconds, and the reference's when given (alternating samples:
    :func:`~dlcore.bench.timing.time_pair`)."""
    reps = _reps(step, quick) if ref is None else min(_reps(step, quick), _reps(ref, quick))
    inner = 1 if reps < 30 else 5
    warmup = 1 if reps < 30 else 3
    if ref is None:
        return time_host(step, reps, warmup=warmup, inner=inner), None
    return time_pair(step, ref, reps, warmup=warmup, inner=inner)


def run(device: str = "cpu", quick: bool = False) -> list[dict]:
    hiddens, batches = ((256,), (1, 16)) if quick else ((256, 512, 1024), (1, 4, 16, 64))
    has_torch = device == "cpu" and importlib.util.find_spec("torch") is not None
    rows: list[dict] = []
    for mode in ("lstm", "gru"):
        for hidden in hiddens:
            for batch in batches:
                us, ref = _time(_dlcore_step(mode, hidden, batch, device), quick,
                                _torch_step(mode, hidden, batch) if has_torch else None)
                flops = 3 * 2 * T * batch * 2 * hidden * GATES[mode] * hidden
                row: dict[str, Any] = {
                    "suite": "rnn", "case": f"{mode} H={hidden} N={batch} T={T} fwd+bwd",
                    "device": device, "median_us": us, "us_per_step": us / T,
                    "gflop_s": flops / us / 1e3}
                if ref is not None:
                    row.update(reference="torch-cpu", reference_us=ref, ratio=us / ref)
                rows.append(row)
    return rows

"""Training steps at small batches, eager and as CUDA graphs: where per-op host cost rules.

Cases: the small CNN (LeNet on 1x8x8 digits, dropout off: capture refuses random ops) and
the LSTM classifier (T=8 rows of 8), at N = 1, 4 and 64, each in three modes:

* ``float32``: the eager step (forward, loss, backward, Adam);
* ``autocast``: forward and loss under ``dlcore.autocast`` (float16) with a GradScaler;
* ``autocast+graphs``: that step captured once as a CUDA graph and replayed per batch
  (``dlcore.cuda.graph``; Adam with ``capturable=True``, the batch copied into the graph's
  static input first).

``samples_s`` is training samples per second; ``speedup`` is the eager float32 step's time
over the case's. On a GPU the graph removes the Python dispatch and launch cost of every op
(published gains at batch 1-4: 1.3-1.8x). On ``emu`` these run the same code paths for
correctness (replay re-runs dlcore's recorded ops in Python, so emu times say nothing about
GPU gains); on ``cpu`` only the eager modes exist, autocast being bfloat16 there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dlcore
from dlcore import graphs, models, optim
from dlcore.nn import functional as F

from .models import _time

Step = Callable[[], None]
BATCHES = (1, 4, 64)


def _model(name: str) -> Any:
    if name == "lenet":
        return models.LeNet(dropout=0.0)
    return models.LSTMClassifier(8, 10)


def _inputs(name: str, n: int, device: str) -> tuple[Any, Any]:
    x = dlcore.rand(n, 1, 8, 8) if name == "lenet" else dlcore.rand(n, 8, 8)
    return x.to(device), dlcore.randint(0, 10, (n,)).to(device)


def build(name: str, n: int, mode: str, device: str) -> Step:
    """The step closure of one case (also used by the tests, which check the graphed step
    against the eager one)."""
    dev = dlcore.device(device)
    sync = dlcore.cuda.synchronize if dev.is_cuda else (lambda: None)
    dlcore.manual_seed(0)
    model = _model(name).to(device)
    use_graph = mode.endswith("graphs")
    opt = optim.Adam(model.parameters(), lr=1e-3, capturable=use_graph)
    amp = mode.startswith("autocast")
    low = dlcore.bfloat16 if dev.type == "cpu" else dlcore.float16
    scaler = dlcore.amp.GradScaler(dev.type, enabled=amp and low == dlcore.float16)
    x, y = _inputs(name, n, device)

    def step() -> Any:
        opt.zero_grad()
        with dlcore.autocast(dev.type, dtype=low, enabled=amp):
            loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss

    if not use_graph:
        def eager() -> None:
            step()
            sync()
        return eager
    for _ in range(3):  # warm-up: optimizer state, kernel caches
        step()
    g = graphs.CUDAGraph()
    with graphs.graph(g, device=device):
        step()

    def replay() -> None:
        g.replay()
        sync()
    return replay


def run(device: str = "cpu", quick: bool = False) -> list[dict]:
    dev = dlcore.device(device)
    modes = ("float32", "autocast") + (("autocast+graphs",) if dev.runs_kernels else ())
    rows = []
    for name in ("lenet", "lstm"):
        for n in BATCHES if not quick else (1, 64):
            base = None
            for mode in modes:
                us = _time(build(name, n, mode, device), quick)[0]
                base = us if base is None else base
                label = "lenet digits 1x8x8" if name == "lenet" else "lstm classifier T=8"
                rows.append({"suite": "graphs", "case": f"{label} N={n} {mode} train step",
                             "device": device, "median_us": us, "samples_s": n / us * 1e6,
                             "speedup": base / us})
    return rows

"""Resuming training from a checkpoint continues bit-for-bit on the CPU.

The run touches every piece of state a training loop has: parameters and BatchNorm buffers,
Adam's moments and step counts, a learning-rate scheduler, dropout masks and the shuffling
order of the DataLoader (both drawn from dlcore's generators). Two epochs uninterrupted must
give exactly the losses of one epoch, a save/load into freshly built objects, and one more.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import dlcore
import dlcore.nn as nn
import dlcore.nn.functional as F
from dlcore.data import DataLoader, TensorDataset


def _build() -> tuple[nn.Module, dlcore.optim.Optimizer, object]:
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3),
                          nn.Linear(16, 3))
    opt = dlcore.optim.Adam(model.parameters(), lr=3e-2, weight_decay=1e-3)
    sched = dlcore.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    return model, opt, sched


def _data() -> TensorDataset:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((40, 6)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    return TensorDataset(dlcore.tensor(x), dlcore.tensor(y))


def _epoch(model: nn.Module, opt: object, sched: object, loader: DataLoader) -> list[float]:
    losses = []
    model.train()
    for x, y in loader:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


def test_resume_continues_bit_for_bit(tmp_path: Path) -> None:
    data = _data()
    dlcore.manual_seed(3)
    model, opt, sched = _build()
    loader = DataLoader(data, batch_size=8, shuffle=True)
    straight = _epoch(model, opt, sched, loader) + _epoch(model, opt, sched, loader)

    dlcore.manual_seed(3)
    model, opt, sched = _build()
    first = _epoch(model, opt, sched, DataLoader(data, batch_size=8, shuffle=True))
    dlcore.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                 "scheduler": sched.state_dict(), "rng": dlcore.get_rng_state()},
                tmp_path / "ckpt.safetensors")
    del model, opt, sched

    dlcore.manual_seed(12345)  # a different process state: everything must come from the file
    state = dlcore.load(tmp_path / "ckpt.safetensors")
    model, opt, sched = _build()
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    dlcore.set_rng_state(state["rng"])
    second = _epoch(model, opt, sched, DataLoader(data, batch_size=8, shuffle=True))

    assert first + second == straight  # exact float equality, every step

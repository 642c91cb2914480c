"""The epoch loop of ``dlcore train`` (dlcore/train/common.py): the steps' figures stay on
the device and are read to the host every 10 steps, not once a step; a non-finite figure
is reported with the range of steps since the previous read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import dlcore
from dlcore.cli import main
from dlcore.data import TensorDataset
from dlcore.device import Device
from dlcore.tensor import Tensor
from dlcore.train import Options, Task, TrainingDiverged, common, fit
from dlcore.train.common import Batches


def _count_host_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the Tensor.item, .tolist and .numpy calls (each a host sync on a GPU) made
    inside the epoch loop: its steps and its reads, not the checkpoint written after it
    or evaluate() (once an epoch); a call inside another (tolist's numpy) counts once."""
    calls: list[str] = []
    inside_epoch, nested = [False], [0]
    for name in ("item", "tolist", "numpy"):
        real = getattr(Tensor, name)

        def counted(self: Tensor, *args: Any, real: Any = real, name: str = name) -> Any:
            if inside_epoch[0] and not nested[0]:
                calls.append(name)
            nested[0] += 1
            try:
                return real(self, *args)
            finally:
                nested[0] -= 1

        monkeypatch.setattr(Tensor, name, counted)
    real_epoch = common._train_epoch

    def epoch(*args: Any) -> Any:
        inside_epoch[0] = True
        try:
            return real_epoch(*args)
        finally:
            inside_epoch[0] = False

    monkeypatch.setattr(common, "_train_epoch", epoch)
    return calls


@pytest.mark.parametrize("amp", [False, True])
def test_an_epoch_reads_the_figures_once_per_ten_steps(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_digits: None,
        amp: bool) -> None:
    """The trainers called .item() twice a step (loss, accuracy): 16 syncs for these 8
    steps, 88 for a default cnn epoch. Now one read per 10 steps and at the last."""
    calls = _count_host_reads(monkeypatch)
    args = ["train", "cnn", "--epochs", "1", "--batch-size", "16", "--out", str(tmp_path),
            "--no-progress"] + (["--amp"] if amp else [])
    assert main(args) == 0
    steps = 128 // 16
    assert calls == ["tolist"] and len(calls) <= steps // 10 + 2


def test_a_default_cnn_epoch_reads_the_figures_five_times(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_host_reads(monkeypatch)
    assert main(["train", "cnn", "--epochs", "1", "--out", str(tmp_path),
                 "--no-progress"]) == 0
    steps = 1437 // 32  # 44: reads after steps 10, 20, 30, 40 and 44
    assert calls == ["tolist"] * 5 and len(calls) <= steps // 10 + 2


class _Scripted(Task):
    """A task whose step returns the given losses in turn (float32 0-d tensors)."""

    def __init__(self, losses: list[float]) -> None:
        data = TensorDataset(dlcore.zeros(len(losses), 1))
        super().__init__(name="scripted", modules={}, optimizers={},
                         batches=Batches(data, 1, 0, Device("cpu")),
                         config={"lr": 0.1, "device": "cpu"})
        self.losses, self.calls = losses, 0

    def step(self, batch: tuple[Tensor, ...]) -> dict[str, Tensor]:
        self.calls += 1
        return {"loss": dlcore.tensor(self.losses[self.calls - 1], dtype=dlcore.float32)}

    def evaluate(self) -> dict[str, float]:
        return {}


def test_a_nan_is_reported_with_the_steps_since_the_last_read(tmp_path: Path) -> None:
    losses = [1.0] * 30
    losses[12] = float("nan")  # step 13, read at step 20
    task = _Scripted(losses)
    with pytest.raises(TrainingDiverged, match=r"epoch 1/1, between step 11 and 20: "
                                               r"loss turned nan \(lr 0\.1\)"):
        fit(task, Options(progress=False), tmp_path, 1)
    assert task.calls == 20  # stopped at the read, not at the end of the epoch
    assert not (tmp_path / "checkpoint.safetensors").exists()


def test_an_infinite_figure_in_the_last_short_range(tmp_path: Path) -> None:
    losses = [1.0] * 23
    losses[21] = float("inf")
    with pytest.raises(TrainingDiverged, match="between step 21 and 23: loss turned inf"):
        fit(_Scripted(losses), Options(progress=False), tmp_path, 1)


def test_epoch_means_are_float64_sums_of_the_float32_figures(tmp_path: Path) -> None:
    """The device sums are float64, as the Python floats the figures used to be added as:
    the epoch means are the same numbers as before the sums moved to the device."""
    rng = np.random.default_rng(0)
    losses = [float(v) for v in rng.random(25).astype(np.float32)]
    metrics = fit(_Scripted(losses), Options(progress=False), tmp_path, 1)
    total = 0.0
    for v in losses:
        total += v
    assert metrics["loss"] == total / 25
    assert json.loads((tmp_path / "metrics.json").read_text())["config"]["amp"] is False


class _Regression(Task):
    """A small MLP regression on emu with Adam (capturable under --graphs) and a learning
    rate that changes every epoch: the step a graph must capture afresh each epoch."""

    def __init__(self, options: Options) -> None:
        dev = Device("emu")
        dlcore.manual_seed(0)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((48, 3)).astype(np.float32)
        y = (x @ np.array([[1.0], [-2.0], [0.5]], np.float32)).astype(np.float32)
        model = dlcore.nn.Sequential(dlcore.nn.Linear(3, 8), dlcore.nn.Tanh(),
                                     dlcore.nn.Linear(8, 1)).to(dev)
        opt = dlcore.optim.Adam(model.parameters(), lr=0.05, **common.capturable(options, dev))
        super().__init__(name="regression", modules={"model": model},
                         optimizers={"optimizer": opt},
                         batches=Batches(TensorDataset(dlcore.tensor(x), dlcore.tensor(y)),
                                         8, 0, dev),
                         config={"lr": 0.05, "device": "emu"},
                         schedulers={"lr": dlcore.optim.lr_scheduler.StepLR(opt, 1, 0.5)})
        self.model, self.opt = model, opt

    def step(self, batch: tuple[Tensor, ...]) -> dict[str, Tensor]:
        x, y = batch
        self.opt.zero_grad()
        loss = dlcore.nn.functional.mse_loss(self.model(x), y)
        loss.backward()
        self.opt.step()
        return {"loss": loss.detach()}

    def evaluate(self) -> dict[str, float]:
        return {}


def test_graphs_train_as_eager(tmp_path: Path) -> None:
    """--graphs: three eager warm-up steps, then each epoch's step captured once and replayed
    per batch; the epoch figures and the trained weights equal the eager run's."""
    runs = {}
    for graphs in (False, True):
        options = Options(progress=False, graphs=graphs)
        task = _Regression(options)
        metrics = fit(task, options, tmp_path / str(graphs), 3)
        runs[graphs] = (metrics["history"],
                        [p.detach().numpy().copy() for p in task.model.parameters()])
    assert [h["loss"] for h in runs[True][0]] == [h["loss"] for h in runs[False][0]]
    for a, b in zip(runs[True][1], runs[False][1]):
        np.testing.assert_array_equal(a, b)


def test_graphs_need_a_device_that_runs_kernels(tmp_path: Path, small_digits: None,
                                                capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "cnn", "--device", "cpu", "--graphs", "--epochs", "1",
                 "--out", str(tmp_path), "--no-progress"]) == 2
    assert "CUDA graphs need --device cuda (or emu), not cpu" in capsys.readouterr().err

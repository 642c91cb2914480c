"""What every ``dlcore train`` task shares: device choice, shuffled batches, the epoch loop
with its progress bar, checkpoints that resume bit-for-bit, Ctrl-C handling and the
metrics files (JSON, CSV, a curve PNG), and ``--amp``.

A task (cnn, rnn, gan, adding) supplies a :class:`Task`: its models and optimizers, its
batches, one training step and an evaluation; :func:`fit` does the rest. Checkpoints are
written at every epoch's end and on Ctrl-C, in the middle of an epoch, holding where the
run stands (epoch, batches done, the data order's and dlcore's RNG states, the running
sums of the epoch's losses, the loss scale under ``--amp``), so a resumed CPU run repeats
the uninterrupted one exactly.

A step returns its figures as 0-d device tensors and the epoch loop sums them on the
device, reading the sums to the host every ``READ_EVERY`` steps (where the progress bar
updates), at the epoch's last step and on Ctrl-C: one transfer each time instead of a host
sync per step, which would stall a GPU's queue of kernels. The non-finite check runs on
those reads, so a divergence is reported for the range of steps since the previous read.

``--amp`` (:class:`MixedPrecision`): each step's forward and loss run under
``dlcore.autocast(device_type, dtype=float16)`` and backward and the optimizer steps go
through a ``dlcore.amp.GradScaler``. float16 on every device, the CPU included, where
PyTorch would use bfloat16: dlcore has no bfloat16 dtype yet. Evaluation runs in float32,
so the figures measure the trained (float32) weights, not the low-precision forward.
"""

from __future__ import annotations

import csv
import datetime
import json
import math
import platform
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from .. import cuda
from ..amp import GradScaler
from ..creation import tensor
from ..data import Generator, TensorDataset
from ..device import Device
from ..dtypes import float16, float64
from ..io import load, save
from ..ops import stack
from ..precision import autocast
from ..random import get_rng_state, set_rng_state
from ..tensor import Tensor

CHECKPOINT = "checkpoint.safetensors"
READ_EVERY = 10  # steps between reads of the running sums (and progress bar updates)


@dataclass
class Options:
    """The command-line options of ``dlcore train``; ``None`` means "the task's default"."""

    device: str = "auto"
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int = 0
    out: str = "runs"
    resume: bool = False
    data: str = "ring"
    pack: int | None = None
    threads: int | None = 1
    progress: bool = True
    amp: bool = False


class Defaults(TypedDict):
    """A task's defaults for the options left ``None``."""

    epochs: int
    batch_size: int
    lr: float


def resolve_device(name: str) -> Device:
    """``auto`` is ``cuda`` where a GPU is usable, else ``cpu``; other names as given."""
    if name == "auto":
        return Device("cuda") if cuda.is_available() else Device("cpu")
    return Device(name)


class Batches:
    """Shuffled mini-batches of a :class:`TensorDataset`, gathered with one index per
    tensor; the last partial batch is dropped.

    The DataLoader collates sample by sample (a few microseconds each), which costs more
    than a whole training step of the small models here; these datasets fit in memory, so
    a batch is one fancy-index. The order comes from its own :class:`Generator`, so model
    initialisation and data order are independent, and its state goes in the checkpoint.
    """

    def __init__(self, dataset: TensorDataset, batch_size: int, seed: int,
                 device: Device) -> None:
        if batch_size < 1 or batch_size > len(dataset):
            raise ValueError(f"batch size must be in 1..{len(dataset)} (the training set), "
                             f"got {batch_size}")
        self.tensors = [t.to(device) for t in dataset.tensors]
        self.batch_size, self.size = batch_size, len(dataset)
        self.generator = Generator(seed)

    def __len__(self) -> int:
        return self.size // self.batch_size

    def epoch(self, skip: int = 0) -> Iterator[tuple[Tensor, ...]]:
        """This epoch's batches after the first ``skip`` (the order is drawn either way)."""
        order = self.generator.permutation(self.size)
        for i in range(skip, len(self)):
            index = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield tuple(t[index] for t in self.tensors)


class MixedPrecision:
    """A task's ``--amp``: the autocast region of its forward and loss, and the
    :class:`~dlcore.amp.GradScaler` its backward and optimizer steps go through. Disabled,
    the region is no region at all (the ops keep their fast path) and the scaler passes
    the loss and the steps through unchanged, so a run without ``--amp`` is as before."""

    def __init__(self, device: Device, enabled: bool) -> None:
        self.device_type, self.enabled = device.type, enabled
        self.scaler = GradScaler(device.type, enabled=enabled)

    def autocast(self) -> AbstractContextManager:
        # NOTE: float16 on the CPU too, where PyTorch would take bfloat16: dlcore has none.
        return autocast(self.device_type, dtype=float16) if self.enabled else nullcontext()


@dataclass
class Task:
    """One training job: its name, modules and optimizers by name (checkpointed), LR
    schedulers stepped once per epoch, the training batches, settings for the record and
    its mixed precision (off unless given; ``config["amp"]`` records which)."""

    name: str
    modules: dict[str, Any]
    optimizers: dict[str, Any]
    batches: Batches
    config: dict[str, Any]
    schedulers: dict[str, Any] = field(default_factory=dict)
    precision: MixedPrecision = field(
        default_factory=lambda: MixedPrecision(Device("cpu"), False))

    def __post_init__(self) -> None:
        # amp changes every step's arithmetic: part of the config resume compares
        self.config["amp"] = self.precision.enabled

    def step(self, batch: tuple[Tensor, ...]) -> dict[str, Tensor]:
        """Train on one batch; the figures to average over the epoch (``loss``, ...), as
        detached 0-d tensors on the device (reading them here would sync every step)."""
        raise NotImplementedError

    def evaluate(self) -> dict[str, float]:
        """End-of-epoch figures on held-out data (``test_accuracy``, ...)."""
        raise NotImplementedError

    def finish(self, out: Path, history: list[dict[str, float]]) -> dict[str, Any]:
        """Final figures for metrics.json beyond the last epoch's, and extra plots."""
        return {}

    def progress_figures(self, means: dict[str, float]) -> dict[str, str]:
        """What the progress bar shows from the epoch's running means."""
        return {k: f"{v:.4f}" for k, v in means.items()}


@contextmanager
def deferred_interrupt() -> Iterator[threading.Event]:
    """Turn the first Ctrl-C into a flag the training loop checks between steps, so a step
    (and the optimizer's update) is never cut in half; a second Ctrl-C stops at once."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


class ResumeError(ValueError):
    """``--resume`` cannot continue: no checkpoint, another task's, or other options."""


class TrainingDiverged(RuntimeError):
    """A training step gave a non-finite figure (loss NaN or infinite), seen at the next read
    of the running sums: the run stops there, leaving the last checkpoint as it was."""


def _run_config(task: Task) -> dict[str, Any]:
    """What shapes a run and must not change on --resume (the device may)."""
    return {k: v for k, v in task.config.items() if k != "device"}


def _state(task: Task, epoch: int, step: int, data_state: dict, sums: dict[str, float],
           history: list[dict], seconds: float) -> dict[str, Any]:
    return {"task": task.name, "config": _run_config(task), "epoch": epoch, "step": step,
            "seconds": seconds,
            "data_rng": data_state, "rng": get_rng_state(), "sums": sums,
            "history": history,
            "models": {k: m.state_dict() for k, m in task.modules.items()},
            "optimizers": {k: o.state_dict() for k, o in task.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in task.schedulers.items()},
            "scaler": task.precision.scaler.state_dict()}  # {} without --amp


def _restore(task: Task, state: dict[str, Any]) -> None:
    if state.get("task") != task.name:
        raise ResumeError(f"--resume: the checkpoint is from 'dlcore train "
                         f"{state.get('task')}', not {task.name!r}")
    saved = state.get("config")  # absent in checkpoints written before it was recorded
    if saved is not None:
        saved = {"amp": False, **saved}  # checkpoints from before --amp ran without it
        now = _run_config(task)
        changed = [f"{k} {saved.get(k)!r} in the checkpoint, {now.get(k)!r} now"
                   for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
        if changed:
            raise ResumeError("--resume: the run's options differ from the checkpoint's ("
                             + "; ".join(changed) + "): they shape its schedule and data, so "
                             "resume with the same options, or start a new run in another "
                             "--out")
    for k, m in task.modules.items():
        m.load_state_dict(state["models"][k])
    for k, o in task.optimizers.items():
        o.load_state_dict(state["optimizers"][k])
    for k, s in task.schedulers.items():
        s.load_state_dict(state["schedulers"][k])
    if task.precision.enabled:  # the configs match, so the checkpoint has amp's scale
        task.precision.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])


def _train_epoch(task: Task, skip: int, sums: dict[str, float], label: str,
                 options: Options, interrupted: threading.Event) -> tuple[int, float]:
    """Run the epoch's batches after the first ``skip``, with a progress bar; stop early
    when ``interrupted`` is set. The steps' figures are summed on the device, starting from
    ``sums``, and read back into ``sums`` (host floats, what checkpoints hold) at each read.
    Returns the batches done in this epoch (``skip`` included) and the seconds spent."""
    from tqdm import tqdm  # the cli extra

    batches = task.batches
    bar = tqdm(total=len(batches), initial=skip, desc=label, unit="batch",
               disable=not options.progress, file=sys.stderr)
    running: dict[str, Tensor] = {}
    step, read_at, t0 = skip, skip, time.perf_counter()
    try:
        for batch in batches.epoch(skip):
            for k, v in task.step(batch).items():
                if k not in running:
                    # float64 on the device: the same sums as adding the figures as Python
                    # floats, and a checkpoint's float restores the sum exactly
                    running[k] = tensor(sums.get(k, 0.0), dtype=float64, device=v.device)
                running[k] = running[k] + v
            step += 1
            bar.update(1)
            if step % READ_EVERY == 0 or step == len(batches):
                _read_sums(running, sums, task, label, read_at, step)
                read_at = step
                rate = (step - skip) * batches.batch_size / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(task.progress_figures({k: v / step for k, v in sums.items()}),
                                samples_s=f"{rate:.0f}")
            if interrupted.is_set():
                break
        if step != read_at:  # interrupted between reads: the checkpoint needs the sums
            _read_sums(running, sums, task, label, read_at, step)
    finally:
        bar.close()
    return step, time.perf_counter() - t0


def _read_sums(running: dict[str, Tensor], sums: dict[str, float], task: Task, label: str,
               first: int, last: int) -> None:
    """Copy the device sums into ``sums`` with one transfer; raise TrainingDiverged when one
    is not finite (a NaN or infinite figure in steps ``first + 1`` to ``last``: a sum
    stays non-finite once a term is)."""
    if not running:
        return
    values = stack(list(running.values())).tolist()
    bad = {k: v for k, v in zip(running, values) if not math.isfinite(v)}
    if bad:
        raise TrainingDiverged(
            f"{label}, between step {first + 1} and {last}: "
            + ", ".join(f"{k} turned {v}" for k, v in bad.items())
            + f" (lr {task.config.get('lr')}); the learning rate is likely too high")
    sums.update(zip(running, values))


def fit(task: Task, options: Options, out: Path, epochs: int) -> dict[str, Any]:
    """Train ``task`` for ``epochs`` (continuing the checkpoint in ``out`` with
    ``options.resume``), write the metrics files, and return metrics.json's content.
    ``seconds`` there is the wall time of training, evaluation and checkpoints, summed
    over resumed runs. Raises KeyboardInterrupt after saving a checkpoint when
    interrupted."""
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / CHECKPOINT
    epoch, skip, sums, history, seconds = 0, 0, {}, [], 0.0
    batches = task.batches
    if options.resume:
        if not ckpt.is_file():
            raise ResumeError(f"--resume: no checkpoint at {ckpt}")
        state = load(ckpt)
        _restore(task, state)
        epoch, skip, sums = state["epoch"], state["step"], dict(state["sums"])
        history, seconds = list(state["history"]), state["seconds"]
        batches.generator.set_state(state["data_rng"])
    started = time.perf_counter() - seconds
    with deferred_interrupt() as interrupted:
        while epoch < epochs:
            data_state = batches.generator.get_state()
            for m in task.modules.values():
                m.train()
            step, train_seconds = _train_epoch(task, skip, sums,
                                               f"epoch {epoch + 1}/{epochs}", options,
                                               interrupted)
            if step < len(batches):  # interrupted mid-epoch: save where it stands
                save(_state(task, epoch, step, data_state, sums, history,
                            time.perf_counter() - started), ckpt)
                raise KeyboardInterrupt
            for m in task.modules.values():
                m.eval()
            row = {"epoch": epoch + 1, **{k: v / len(batches) for k, v in sums.items()},
                   **task.evaluate(), "seconds": time.perf_counter() - started,
                   "samples_per_s": (step - skip) * batches.batch_size
                   / max(train_seconds, 1e-9)}
            for s in task.schedulers.values():
                s.step()
            history.append(row)
            print(", ".join(f"{k} {_fmt(v)}" for k, v in row.items()), file=sys.stderr)
            epoch, skip, sums = epoch + 1, 0, {}
            save(_state(task, epoch, 0, batches.generator.get_state(), sums, history,
                        time.perf_counter() - started), ckpt)
            if interrupted.is_set():
                raise KeyboardInterrupt
    return write_metrics(task, out, history, time.perf_counter() - started, options)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def write_metrics(task: Task, out: Path, history: list[dict], seconds: float,
                  options: Options) -> dict[str, Any]:
    """metrics.json (final figures at top level, then the run's settings and history),
    metrics.csv (one row per epoch) and curves.png."""
    final = {k: v for k, v in history[-1].items() if k not in ("epoch", "seconds",
                                                                 "samples_per_s")}
    final.update(task.finish(out, history))
    metrics = {**final, "seconds": seconds, "epochs": len(history), "task": task.name,
               "config": {**asdict(options), **task.config},
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
                   timespec="seconds"),
               "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
               "history": history}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=_json_default))
    with open(out / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    plot_curves(history, out / "curves.png", task.name)
    return metrics


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def plot_curves(history: list[dict], path: Path, title: str) -> None:
    """Losses on the left, every other per-epoch figure on the right against epochs;
    figures outside [0, 1] (such as a count of modes) get the right panel's second axis
    so fractions stay readable beside them."""
    import matplotlib  # the cli extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): no display needed

    skip = {"epoch", "seconds", "samples_per_s"}
    epochs = [row["epoch"] for row in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    second = None
    for k in (k for k in history[0] if k not in skip):
        values = [row[k] for row in history]
        if not all(math.isfinite(v) for v in values):
            continue
        if "loss" in k:
            ax = left
        elif all(0.0 <= v <= 1.0 for v in values):
            ax = right
        else:
            second = second or right.twinx()
            ax = second
        ax.plot(epochs, values, marker=".", label=k,
                color=None if ax is not second else "tab:red")
    for ax, name in ((left, "loss"), (right, "evaluation")):
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    for ax, where in ((left, "best"), (right, "center right"), (second, "lower right")):
        if ax is not None and ax.has_data():
            ax.legend(loc=where)
    fig.suptitle(f"dlcore train {title}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

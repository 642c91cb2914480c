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

Under ``mpiexec -n N`` the same loop runs data-parallel (:mod:`.parallel`: the rules for
the global batch, the figures, the files and the checkpoints); with one rank it is the code
path of a plain run, with no MPI call.

``--amp`` (:class:`MixedPrecision`): each step's forward and loss run under
``dlcore.autocast(device_type)``, in bfloat16 on the CPU (PyTorch's recipe: no loss scaling
needed) and in float16 on cuda and emu, with backward and the optimizer steps going through a
``dlcore.amp.GradScaler``. Evaluation runs in float32,
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
from ..anomaly import detect_anomaly
from ..creation import tensor
from ..data import Generator, TensorDataset
from ..device import Device
from ..dtypes import bfloat16, float16, float64
from ..energy import EnergyMeter
from ..graphs import CUDAGraph, graph
from ..io import load, save
from ..ops import stack
from ..precision import autocast
from ..random import get_rng_state, set_rng_state
from ..tensor import Tensor
from .parallel import OptionError, Ranks

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
    graphs: bool = False
    detect_anomaly: bool = False  # dlcore.autograd.detect_anomaly(check_forward=True)


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
    tensor; the last partial batch is dropped. Under several ``ranks``, ``batch_size`` is
    the global batch and each epoch yields this rank's contiguous slice of every global
    batch (the permutation is the same on every rank: it depends on ``seed`` alone).

    The DataLoader collates sample by sample (a few microseconds each), which costs more
    than a whole training step of the small models here; these datasets fit in memory, so
    a batch is one fancy-index. The order comes from its own :class:`Generator`, so model
    initialisation and data order are independent, and its state goes in the checkpoint.
    """

    def __init__(self, dataset: TensorDataset, batch_size: int, seed: int,
                 device: Device, ranks: Ranks | None = None) -> None:
        if batch_size < 1 or batch_size > len(dataset):
            raise OptionError(f"--batch-size must be in 1..{len(dataset)} (the training "
                              f"set), got {batch_size}")
        self.ranks = ranks or Ranks()
        self.local_batch_size = self.ranks.check_batch(batch_size)
        self.tensors = [t.to(device) for t in dataset.tensors]
        self.batch_size, self.size = batch_size, len(dataset)
        self.generator = Generator(seed)

    def __len__(self) -> int:
        return self.size // self.batch_size

    def epoch(self, skip: int = 0) -> Iterator[tuple[Tensor, ...]]:
        """This epoch's batches after the first ``skip`` (the order is drawn either way)."""
        order = self.generator.permutation(self.size)
        part = self.ranks.rank * self.local_batch_size
        for i in range(skip, len(self)):
            start = i * self.batch_size + part
            index = order[start:start + self.local_batch_size]
            yield tuple(t[index] for t in self.tensors)


class MixedPrecision:
    """A task's ``--amp``: the autocast region of its forward and loss, and the
    :class:`~dlcore.amp.GradScaler` its backward and optimizer steps go through. Disabled,
    the region is no region at all (the ops keep their fast path) and the scaler passes
    the loss and the steps through unchanged, so a run without ``--amp`` is as before."""

    # PyTorch's recipes: bfloat16 on the CPU, which has float32's exponent range and so needs
    # no loss scaling (the scaler passes through); float16 and a GradScaler on cuda, and on
    # emu, whose conv2d kernels take float16 but not bfloat16.
    DTYPES = {"cpu": bfloat16, "cuda": float16, "emu": float16}

    def __init__(self, device: Device, enabled: bool) -> None:
        self.device_type, self.enabled = device.type, enabled
        self.dtype = self.DTYPES[device.type]
        self.scaler = GradScaler(device.type, enabled=enabled and self.dtype == float16)

    def autocast(self) -> AbstractContextManager:
        return autocast(self.device_type, dtype=self.dtype) if self.enabled else nullcontext()


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
        self.steps_done = 0  # in this process (--graphs warms up eagerly first)

    @property
    def ranks(self) -> Ranks:
        """The ranks the run is split over (one unless started by mpiexec -n N)."""
        return self.batches.ranks

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


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped :func:`fit` after it wrote a checkpoint (under several ranks: all of
    them, at the same step); ``--resume`` continues from there."""


class TrainingDiverged(RuntimeError):
    """A training step gave a non-finite figure (loss NaN or infinite), seen at the next read
    of the running sums: the run stops there, leaving the last checkpoint as it was."""


def _run_config(task: Task) -> dict[str, Any]:
    """What shapes a run and must not change on --resume (the device may)."""
    return {k: v for k, v in task.config.items() if k != "device"}


def _state(task: Task, epoch: int, step: int, data_state: dict, sums: dict[str, float],
           history: list[dict], seconds: float) -> dict[str, Any]:
    return {"task": task.name, "config": _run_config(task), "epoch": epoch, "step": step,
            "seconds": seconds, "world_size": task.ranks.world_size,
            "data_rng": data_state, "rng": get_rng_state(), "sums": sums,
            "history": history,
            "models": {k: m.state_dict() for k, m in task.modules.items()},
            "optimizers": {k: o.state_dict() for k, o in task.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in task.schedulers.items()},
            "scaler": task.precision.scaler.state_dict()}  # {} without --amp


def _save(task: Task, path: Path, epoch: int, step: int, data_state: dict,
          sums: dict[str, float], history: list[dict], seconds: float) -> None:
    """Write the checkpoint (on rank 0). Under several ranks it also holds every rank's RNG
    state and running sums (``ranks``: gathered, one list entry per rank); the rest (the
    weights, the optimizers, the data order) is the same on every rank, so rank 0's."""
    ranks = task.ranks
    every = ranks.gather({"rng": get_rng_state(), "sums": dict(sums)}) \
        if ranks.parallel else None
    if not ranks.main:
        return
    state = _state(task, epoch, step, data_state, sums, history, seconds)
    if every is not None:
        state["ranks"] = every
    save(state, path)


def _load(task: Task, path: Path) -> dict[str, Any]:
    """The checkpoint at ``path``: read by rank 0 and broadcast (the ranks need no shared
    file system), its tensors on the cpu there (each rank copies them to its device)."""
    parallel = task.ranks.parallel

    def read() -> dict[str, Any]:
        if not path.is_file():
            raise ResumeError(f"--resume: no checkpoint at {path}")
        return load(path, map_location="cpu" if parallel else None)

    return task.ranks.share(read)


def _restore(task: Task, state: dict[str, Any]) -> dict[str, float]:
    """Load ``state`` into the task and this rank's RNG; returns this rank's running sums."""
    if state.get("task") != task.name:
        raise ResumeError(f"--resume: the checkpoint is from 'dlcore train "
                         f"{state.get('task')}', not {task.name!r}")
    written_by, ranks = state.get("world_size", 1), task.ranks  # absent: before mpiexec runs
    if written_by != ranks.world_size:
        raise ResumeError(f"--resume: the checkpoint was written by {_ranks(written_by)}, "
                          f"this run is {_ranks(ranks.world_size)}: each rank's slice of the "
                          f"batches and its RNG state are in it, so resume as "
                          f"{_ranks(written_by)}")
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
    mine = state["ranks"][ranks.rank] if ranks.parallel else state
    set_rng_state(mine["rng"])
    return dict(mine["sums"])


def _ranks(world_size: int) -> str:
    return "one process" if world_size == 1 else \
        f"{world_size} ranks (mpiexec -n {world_size})"


GRAPH_WARMUP = 3  # eager steps before the first capture: optimizer state, kernel caches


class GraphedSteps:
    """``--graphs``: a task's training step captured as one CUDA graph and replayed for each
    batch, which is copied into the graph's static batch first. The step's figures are the
    graph's static outputs (the loop adds them to its device sums before the next replay).

    A graph freezes host scalars, so the graph is captured afresh each epoch (the learning
    rate changes between epochs, never within one), and the optimizers must be capturable
    (their step count on the device: :func:`capturable`). The first ``GRAPH_WARMUP`` steps of
    a run are eager, as PyTorch's recipe asks: they create the optimizer state the captured
    step then updates in place."""

    def __init__(self, task: Task, done: int) -> None:
        self.task, self.done = task, done
        self.graph: CUDAGraph | None = None
        self.static: tuple[Tensor, ...] = ()
        self.figures: dict[str, Tensor] = {}

    def __call__(self, batch: tuple[Tensor, ...]) -> dict[str, Tensor]:
        if self.done < GRAPH_WARMUP:
            self.done += 1
            return self.task.step(batch)
        if self.graph is None:
            self.static = tuple(b.clone() for b in batch)
            self.graph = CUDAGraph()
            try:
                with graph(self.graph, device=batch[0].device):
                    self.figures = self.task.step(self.static)
            except RuntimeError as exc:
                raise RuntimeError(f"--graphs: the {self.task.name} step cannot be captured "
                                   f"as a CUDA graph: {exc}") from None
        else:
            for s, b in zip(self.static, batch):
                s.copy_(b)
        self.graph.replay()
        self.done += 1
        return self.figures


def capturable(options: Options, device: Device) -> dict[str, Any]:
    """The optimizer arguments ``--graphs`` needs (``capturable=True`` on cuda and emu)."""
    return {"capturable": True} if options.graphs and device.runs_kernels else {}


def _train_epoch(task: Task, skip: int, sums: dict[str, float], label: str,
                 options: Options, interrupted: threading.Event
                 ) -> tuple[int, float, dict[str, float], bool]:
    """Run the epoch's batches after the first ``skip``, with a progress bar; stop early
    when ``interrupted`` is set (under several ranks: on any rank, seen at a read, so all
    stop at the same step). The steps' figures are summed on the device, starting from
    ``sums``, and read back into ``sums`` (this rank's host floats, what checkpoints hold)
    at each read. Returns the batches done in this epoch (``skip`` included), the seconds
    spent, the sums over all ranks' samples at the last read (means: divided by the steps)
    and whether to stop."""
    from tqdm import tqdm  # the cli extra

    batches, ranks = task.batches, task.ranks
    bar = tqdm(total=len(batches), initial=skip, desc=label, unit="batch",
               disable=not options.progress or not ranks.main, file=sys.stderr)
    running: dict[str, Tensor] = {}
    figures: dict[str, float] = dict(sums)
    step, read_at, t0, stop = skip, skip, time.perf_counter(), False
    run_step = GraphedSteps(task, task.steps_done) if options.graphs else task.step
    try:
        for batch in batches.epoch(skip):
            task.steps_done += 1
            for k, v in run_step(batch).items():
                if k not in running:
                    # float64 on the device: the same sums as adding the figures as Python
                    # floats, and a checkpoint's float restores the sum exactly
                    running[k] = tensor(sums.get(k, 0.0), dtype=float64, device=v.device)
                running[k] = running[k] + v
            step += 1
            bar.update(1)
            if step % READ_EVERY == 0 or step == len(batches):
                figures, stop = _read_sums(running, sums, task, label, read_at, step,
                                           interrupted)
                read_at = step
                rate = (step - skip) * batches.batch_size / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(task.progress_figures({k: v / step for k, v in figures.items()}),
                                samples_s=f"{rate:.0f}")
            elif not ranks.parallel:
                stop = interrupted.is_set()
            if stop:
                break
        if step != read_at:  # one rank, interrupted between reads: the checkpoint needs sums
            figures, stop = _read_sums(running, sums, task, label, read_at, step, interrupted)
    finally:
        bar.close()
    return step, time.perf_counter() - t0, figures, stop


def _read_sums(running: dict[str, Tensor], sums: dict[str, float], task: Task, label: str,
               first: int, last: int, interrupted: threading.Event
               ) -> tuple[dict[str, float], bool]:
    """Copy the device sums into ``sums`` with one transfer; return the sums over the
    ranks' samples (one all-reduce with the ranks' Ctrl-C flags; with one rank, ``sums``)
    and whether any rank was interrupted. Raise TrainingDiverged when a sum is not finite
    (a NaN or infinite figure in steps ``first + 1`` to ``last``: a sum stays non-finite
    once a term is), on every rank alike."""
    ranks = task.ranks
    values = stack(list(running.values())).tolist() if running else []
    if ranks.parallel:
        # NOTE: the mean over ranks of their sums, so the figures are those of one process
        # on the global batch; the flag rides along: one collective per read, not per step
        *totals, flags = ranks.sum(values + [float(interrupted.is_set())])
        overall, stop = [v / ranks.world_size for v in totals], flags > 0
    else:
        overall, stop = values, interrupted.is_set()
    bad = {k: v for k, v in zip(running, overall) if not math.isfinite(v)}
    if bad:
        raise TrainingDiverged(
            f"{label}, between step {first + 1} and {last}: "
            + ", ".join(f"{k} turned {v}" for k, v in bad.items())
            + f" (lr {task.config.get('lr')}); the learning rate is likely too high")
    sums.update(zip(running, values))
    return dict(zip(running, overall)), stop


def fit(task: Task, options: Options, out: Path, epochs: int) -> dict[str, Any]:
    """Train ``task`` for ``epochs`` (continuing the checkpoint in ``out`` with
    ``options.resume``), write the metrics files (rank 0), and return metrics.json's
    content. ``seconds`` there is the wall time of training, evaluation and checkpoints,
    summed over resumed runs. Raises :class:`Interrupted` after saving a checkpoint when
    interrupted."""
    ranks = task.ranks
    if ranks.main:
        out.mkdir(parents=True, exist_ok=True)
    ckpt = out / CHECKPOINT
    epoch, skip, sums, history, seconds = 0, 0, {}, [], 0.0
    batches = task.batches
    if options.resume:
        state = _load(task, ckpt)
        sums = _restore(task, state)
        epoch, skip = state["epoch"], state["step"]
        history, seconds = list(state["history"]), state["seconds"]
        batches.generator.set_state(state["data_rng"])
    started = time.perf_counter() - seconds
    # NOTE: energy and samples of this process's part of the run (a resumed run's own);
    # under several ranks, rank 0's device and rank 0's share of the samples
    meter, samples = EnergyMeter(task.config.get("device")), 0
    anomaly = detect_anomaly(check_forward=True) if options.detect_anomaly else nullcontext()
    with meter, anomaly, deferred_interrupt() as interrupted:
        while epoch < epochs:
            data_state = batches.generator.get_state()
            for m in task.modules.values():
                m.train()
            step, train_seconds, figures, stop = _train_epoch(
                task, skip, sums, f"epoch {epoch + 1}/{epochs}", options, interrupted)
            samples += (step - skip) * batches.local_batch_size
            if step < len(batches):  # interrupted mid-epoch: save where it stands
                _save(task, ckpt, epoch, step, data_state, sums, history,
                      time.perf_counter() - started)
                raise Interrupted
            for m in task.modules.values():
                m.eval()
            row = {"epoch": epoch + 1, **{k: v / len(batches) for k, v in figures.items()},
                   **task.evaluate(), "seconds": time.perf_counter() - started,
                   "samples_per_s": (step - skip) * batches.batch_size
                   / max(train_seconds, 1e-9)}
            for s in task.schedulers.values():
                s.step()
            history.append(row)
            if ranks.main:
                print(", ".join(f"{k} {_fmt(v)}" for k, v in row.items()), file=sys.stderr)
            epoch, skip, sums = epoch + 1, 0, {}
            _save(task, ckpt, epoch, 0, batches.generator.get_state(), sums, history,
                  time.perf_counter() - started)
            # NOTE: several ranks stop on the flags their last read agreed on (a flag set
            # since then counts at the next epoch's first read); one rank on its own flag
            if (stop if ranks.parallel else interrupted.is_set()):
                raise Interrupted
    return write_metrics(task, out, history, time.perf_counter() - started, options,
                         meter.metrics(samples))


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def write_metrics(task: Task, out: Path, history: list[dict], seconds: float,
                  options: Options, energy: dict[str, Any] | None = None) -> dict[str, Any]:
    """metrics.json (final figures at top level, then the run's settings and history),
    metrics.csv (one row per epoch) and curves.png, written by rank 0 only (the other ranks
    return the same figures without the task's extras from ``finish``). ``energy``: the
    run's figures from :class:`~dlcore.energy.EnergyMeter` (``energy_joules``,
    ``joules_per_sample``, ``energy_source``; None with the reason where no meter reads)."""
    main = task.ranks.main
    final = {k: v for k, v in history[-1].items() if k not in ("epoch", "seconds",
                                                                 "samples_per_s")}
    if main:
        final.update(task.finish(out, history))
    metrics = {**final, **(energy or {}), "seconds": seconds, "epochs": len(history),
               "task": task.name,
               "world_size": task.ranks.world_size,
               "config": {**asdict(options), **task.config},
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
                   timespec="seconds"),
               "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
               "history": history}
    if not main:
        return metrics
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

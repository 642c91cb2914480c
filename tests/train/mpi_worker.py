"""``dlcore train`` (the CLI's ``main``) on each rank of ``mpiexec -n N``, with the small
digits and the dropout-free LeNet of ``conftest.py``, for tests/train/test_distributed_train.py.

    mpiexec -n 2 python mpi_worker.py [--audit DIR] [--interrupt RANK:STEP] -- ARGS [-- ARGS]

Each ``-- ARGS`` is one ``dlcore train`` command line, run in turn in the same processes (one
start-up for several runs). ``--audit DIR``: every rank prints ``rank R wrote [...]``, the
files under DIR it opened for writing, created, renamed or removed (Python's audit events),
so a test can see that only rank 0 writes. ``--interrupt RANK:STEP``: rank RANK raises
SIGINT in its STEP-th training step (counted over the whole run), as a Ctrl-C would. Exits
with the last run's status.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from conftest import DROPOUT_FREE_LENET, first_digits  # this script's folder is on sys.path

from dlcore.cli import main
from dlcore.data import datasets
from dlcore.train import classify, parallel

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT


def audit_writes(root: Path, written: set[str]) -> None:
    """Add to ``written`` the paths under ``root`` this process writes, creates, renames or
    removes from now on."""
    prefix = str(root)

    def under(path: Any) -> str | None:
        if isinstance(path, (str, os.PathLike)):
            name = os.fspath(path)
            if isinstance(name, str) and os.path.abspath(name).startswith(prefix):
                return os.path.relpath(os.path.abspath(name), prefix)
        return None

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) \
                else bool(flags & WRITE_FLAGS)
            name = under(path) if writing else None
        elif event in ("os.rename", "os.mkdir", "os.remove"):
            name = under(args[0] if event != "os.rename" else args[1])
        else:
            return
        if name is not None:
            written.add(name)

    sys.addaudithook(hook)


def interrupt_at(rank: int, step: int) -> None:
    real_step, calls = classify.ClassifierTask.step, [0]

    def step_then_interrupt(self: classify.ClassifierTask, batch: tuple) -> dict:
        calls[0] += 1
        if calls[0] == step and parallel.launched()[0] == rank:
            signal.raise_signal(signal.SIGINT)
        return real_step(self, batch)

    classify.ClassifierTask.step = step_then_interrupt


def run(argv: list[str]) -> int:
    options, runs = argv[:argv.index("--")], " ".join(argv[argv.index("--") + 1:])
    written: set[str] = set()
    while options:
        flag, value = options.pop(0), options.pop(0)
        if flag == "--audit":
            audit_writes(Path(value).resolve(), written)
        elif flag == "--interrupt":
            rank, step = value.split(":")
            interrupt_at(int(rank), int(step))
    datasets.digits = first_digits(datasets.digits)
    classify.LeNet = DROPOUT_FREE_LENET
    code = 0
    for args in runs.split(" -- "):
        code = main(["train", *args.split()])
    print(f"rank {parallel.launched()[0]} wrote {sorted(written)}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))

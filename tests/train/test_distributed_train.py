"""``dlcore train`` under ``mpiexec -n 2`` (real MPI ranks, started through the venv's
mpiexec with a time limit): data-parallel on slices of the same global batch equals one
process on the whole batch, only rank 0 writes, Ctrl-C on one rank and ``--resume`` continue
bit-exactly, and what cannot be split is refused (dlcore/train/parallel.py).

The comparisons train the dropout-free LeNet on the small digits (``conftest.py``; the worker,
``mpi_worker.py``, applies both on each rank): dropout's masks are random per rank, so with
dropout the two runs would differ by design, not by a fault.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import dlcore
from dlcore.cli import main

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MPIEXEC = Path(sys.executable).with_name("mpiexec")
# 128 training images: 16 steps an epoch at a global batch of 8, 4 images per rank
CNN = "cnn --epochs 2 --batch-size 8 --no-progress"
FIGURES = ("loss", "train_accuracy", "test_loss", "test_accuracy")

pytestmark = pytest.mark.skipif(
    not MPIEXEC.exists() or importlib.util.find_spec("mpi4py") is None,
    reason="mpiexec/mpi4py absent: pip install 'dlcore[distributed]'")


@dataclass
class Job:
    returncode: int
    stdout: str
    stderr: str


def mpiexec(*command: str, timeout: float = 60) -> Job:
    """``mpiexec -n 2 COMMAND`` (one BLAS thread per rank), ended after ``timeout`` s."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    try:
        done = subprocess.run([str(MPIEXEC), "-n", "2", *command], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"mpiexec -n 2 {' '.join(command)} did not end within {timeout:g} s: "
                    f"{exc.stdout!r} {exc.stderr!r}")
    return Job(done.returncode, done.stdout, done.stderr)


def worker(*options: str, runs: list[str]) -> Job:
    """tests/train/mpi_worker.py on 2 ranks: the ``dlcore train`` command lines ``runs``."""
    args = [a for run in runs for a in ("--", *run.split())]
    return mpiexec(sys.executable, str(HERE / "mpi_worker.py"), *options, *args)


def weights(out: Path) -> dict[str, np.ndarray]:
    state = dlcore.load(out / "checkpoint.safetensors")
    return {k: v.numpy() for k, v in state["models"]["model"].items()}


def history(out: Path) -> list[dict]:
    rows = json.loads((out / "metrics.json").read_text())["history"]
    return [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")}
            for r in rows]


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Job]:
    """An uninterrupted 2-rank ``train cnn`` and, in the same processes, ``train gan`` (both
    networks in DDP), with the writes of each rank audited."""
    root = tmp_path_factory.mktemp("ranks")
    job = worker("--audit", str(root),
                 runs=[f"{CNN} --out {root / 'cnn'}",
                       f"gan --epochs 1 --batch-size 512 --out {root / 'gan'} --no-progress"])
    assert job.returncode == 0, job.stdout + job.stderr
    return root, job


def test_two_ranks_write_one_set_of_outputs(straight: tuple[Path, Job]) -> None:
    root, job = straight
    assert "rank 1 wrote []" in job.stdout, job.stdout
    rank0 = ast.literal_eval(job.stdout.split("rank 0 wrote ")[1].split("\n")[0])
    assert {"cnn/metrics.json", "cnn/checkpoint.safetensors", "gan/samples.npy"} <= set(rank0)
    assert sorted(p.name for p in (root / "cnn").iterdir()) == [
        "attributions.png", "checkpoint.safetensors", "curves.png", "metrics.csv",
        "metrics.json"]
    # one summary per run, from rank 0; the epoch lines too
    assert job.stdout.count("dlcore train cnn on cpu x 2 ranks: ") == 1
    assert job.stderr.count("epoch 2, loss") == 1
    for task in ("cnn", "gan"):
        metrics = json.loads((root / task / "metrics.json").read_text())
        assert metrics["world_size"] == 2 and metrics["epochs"] >= 1
    gan = json.loads((root / "gan" / "metrics.json").read_text())
    assert np.isfinite(gan["loss_d"]) and np.isfinite(gan["loss_g"])
    assert np.load(root / "gan" / "samples.npy").shape == (2500, 2)
    ranks = dlcore.load(root / "cnn" / "checkpoint.safetensors")["ranks"]
    assert len(ranks) == 2 and ranks[0]["rng"] != ranks[1]["rng"]  # a stream per rank


def test_two_ranks_equal_one_process_on_the_global_batch(
        straight: tuple[Path, Job], tmp_path: Path, small_digits: None,
        no_dropout: None) -> None:
    """DDP averages the gradients of the ranks' 4-image slices: the gradient of the 8-image
    batch one process takes, so the same weights and figures to float32 rounding."""
    root, _ = straight
    assert main(["train", *CNN.split(), "--out", str(tmp_path)]) == 0
    one, two = history(tmp_path), history(root / "cnn")
    assert len(one) == len(two) == 2
    for a, b in zip(one, two):
        for k in FIGURES:
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), (k, a, b)
    want, got = weights(tmp_path), weights(root / "cnn")
    # NOTE: float32 sums in another order (two 4-image halves averaged, against one 8-image
    # mean) differ by an ulp; Adam divides each gradient by its own running RMS, so where a
    # weight's gradient is a near-cancelling sum an ulp becomes a visible relative change
    # of its step (seen: 1 weight of 32768 off by 5.7e-4 relative, 4.4e-6 absolute, on one
    # BLAS build and not another). Adam moves a weight at most ~lr per step: all weights must
    # agree to 1e-3 of that travel (32 steps at lr 2e-3), and nearly all to float32 rounding.
    travel = 32 * 2e-3
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=0, atol=1e-3 * travel, err_msg=k)
        close = np.isclose(got[k], want[k], rtol=1e-4, atol=1e-6)
        assert close.mean() >= 0.999, (k, int((~close).sum()), close.size)
    # the training moved the weights: equal figures are not two untrained models'
    assert one[-1]["loss"] < one[0]["loss"]


def test_resume_after_ctrl_c_on_one_rank_is_bit_exact(
        straight: tuple[Path, Job], tmp_path: Path) -> None:
    """SIGINT on rank 1 in its 19th step (epoch 2, step 3): both ranks stop at the next read
    (step 10), rank 0 writes one checkpoint with both ranks' states, and the resumed run ends
    with exactly the straight run's weights and history."""
    root, _ = straight
    out = tmp_path / "cnn"
    job = worker("--interrupt", "1:19", runs=[f"{CNN} --out {out}"])
    assert job.returncode == 130, job.stdout + job.stderr
    assert "interrupted: checkpoint written" in job.stderr
    state = dlcore.load(out / "checkpoint.safetensors")
    assert (state["epoch"], state["step"], state["world_size"]) == (1, 10, 2)
    assert [sorted(r["sums"]) for r in state["ranks"]] == [["loss", "train_accuracy"]] * 2
    job = worker(runs=[f"{CNN} --out {out} --resume"])
    assert job.returncode == 0, job.stdout + job.stderr
    want, got = weights(root / "cnn"), weights(out)
    assert all(np.array_equal(got[k], want[k]) for k in want)
    assert history(out) == history(root / "cnn")


def test_what_cannot_be_split_is_refused(straight: tuple[Path, Job], tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    """A global batch the ranks cannot share equally, a checkpoint of 2 ranks resumed by one
    process, and a launcher whose ranks MPI does not see (mpi4py built for another MPI):
    one line each (from rank 0 only), exit status 2, no traceback."""
    dlcore_script = str(Path(sys.executable).with_name("dlcore"))
    job = mpiexec(dlcore_script, "train", "cnn", "--batch-size", "15", "--out",
                  str(tmp_path / "odd"))
    assert job.returncode == 2, job.stdout + job.stderr
    assert job.stderr.count("--batch-size 15 is not divisible by the world size 2") == 1
    assert "Traceback" not in job.stderr and not (tmp_path / "odd" / "metrics.json").exists()

    root, _ = straight
    shutil.copytree(root / "cnn", tmp_path / "cnn")
    assert main(["train", *CNN.split(), "--out", str(tmp_path / "cnn"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "written by 2 ranks (mpiexec -n 2), this run is one process" in err
    assert "resume as 2 ranks" in err and "Traceback" not in err

    # as Open MPI's mpiexec would start a process whose mpi4py is MPICH's: a world of one
    alone = subprocess.run([dlcore_script, "train", "cnn", "--out", str(tmp_path / "alone")],
                           env=dict(os.environ, OMPI_COMM_WORLD_SIZE="2",
                                    OMPI_COMM_WORLD_RANK="0"),
                           capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert alone.returncode == 2, alone.stderr
    assert "the launcher started 2 ranks but MPI sees 1" in alone.stderr
    assert "Traceback" not in alone.stderr

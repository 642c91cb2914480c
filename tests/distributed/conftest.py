"""Running real MPI ranks from a test: the environment's ``mpiexec`` (the mpich wheel puts it
next to ``sys.executable``) starts a worker script of ``workers/`` on N processes.

Every run has a wall-clock limit (subprocess timeout), so no test can hang; BLAS is held to
one thread per rank, since the ranks share this machine's cores.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKERS = Path(__file__).resolve().parent / "workers"
MPIEXEC = Path(sys.executable).with_name("mpiexec")


@dataclass
class Ranks:
    returncode: int
    output: str  # stdout and stderr of all ranks, interleaved
    seconds: float


def _run(n: int, worker: str, *args: str, timeout: float = 60.0) -> Ranks:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    cmd = [str(MPIEXEC), "-n", str(n), sys.executable, str(WORKERS / worker), *args]
    start = time.monotonic()
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else exc.stdout
        pytest.fail(f"{worker} on {n} ranks did not end within {timeout:g} s:\n{out}")
    return Ranks(done.returncode, done.stdout + done.stderr, time.monotonic() - start)


@pytest.fixture
def run_ranks() -> Callable[..., Ranks]:
    """``run_ranks(n, "worker.py", *args, timeout=60)``: the finished job."""
    if not MPIEXEC.exists() or importlib.util.find_spec("mpi4py") is None:
        pytest.skip("mpiexec/mpi4py absent: pip install 'dlcore[distributed]'")
    return _run

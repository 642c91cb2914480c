"""Distributed data parallelism: all-reduce bandwidth and training-step scaling.

The runner's process starts the measurements as MPI jobs (``mpiexec -n N python -m
dlcore.bench.distributed WORKER ...``, the mpiexec next to ``sys.executable``, else the one
on ``PATH``); rank 0 of each job prints one JSON line per case.

* ``allreduce N ranks <size>``: float32 ``all_reduce`` (SUM) of one message, the slowest
  rank's mean time over a loop, median of five loops. ``note`` gives the bus bandwidth,
  ``busbw = bytes / time * 2 (N - 1) / N`` (the bytes each rank must send and receive in a
  ring all-reduce; NCCL-tests' definition, comparable across rank counts), and the
  algorithm bandwidth ``bytes / time``. Sizes 4 KiB - 64 MiB (quick: 4 KiB, 1 MiB); 2 and 4
  ranks. On ``--device cuda`` with NCCL usable: one rank's NCCL all-reduce on its GPU too.
* ``ddp lenet``: one training step of the reference CNN (LeNet on 1x8x8 digits, Adam) under
  DistributedDataParallel, the slowest rank's median step time. 1 and 2 ranks at a global
  batch of 64 (strong scaling: 32 per rank on 2 ranks) and at 64 per rank (weak scaling).
  ``samples_s`` counts the global batch; ``note`` the efficiency, ``t1 / (N tN)`` strong
  and ``t1 / tN`` weak. Every rank runs one BLAS thread, so N ranks use N cores; the row
  ``1 rank, all threads`` is the one-process baseline with the machine's BLAS threads, and
  ``2 processes of 32, no DDP`` two independent processes (no communication): what the
  machine's cores give two processes at all, the ceiling of the DDP figures.

NOTE: on a machine with fewer cores than ranks (4 ranks on 2 cores) the ranks time-share
cores, which the 4-rank figures then measure as much as MPI.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

QUICK_SIZES = (4 << 10, 1 << 20)
SIZES = (4 << 10, 64 << 10, 1 << 20, 16 << 20, 64 << 20)
TIMEOUT_S = 300


def _mpiexec() -> str | None:
    beside = Path(sys.executable).with_name("mpiexec")
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def _job(n: int, args: list[str], threads: int | None = 1) -> list[dict[str, Any]]:
    """Run this module's worker on ``n`` ranks; rank 0's JSON lines."""
    mpiexec = _mpiexec()
    assert mpiexec is not None
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
                   MKL_NUM_THREADS=str(threads))
    done = subprocess.run([mpiexec, "-n", str(n), sys.executable, "-m", __name__, *args],
                          capture_output=True, text=True, timeout=TIMEOUT_S, env=env,
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"bench distributed: {n} ranks {' '.join(args)} failed:\n"
                           f"{done.stdout}{done.stderr}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def _allreduce_rows(quick: bool, device: str) -> list[dict[str, Any]]:
    rows = []
    sizes = [str(s) for s in (QUICK_SIZES if quick else SIZES)]
    jobs = [(n, "cpu", "mpi") for n in (2, 4)]
    if device.startswith("cuda"):
        from dlcore.distributed import is_nccl_available

        if is_nccl_available():
            jobs.append((1, device, "nccl"))
    for n, dev, backend in jobs:
        for r in _job(n, ["allreduce", "--device", dev, "--backend", backend, *sizes]):
            seconds, nbytes = r["seconds"], r["bytes"]
            algbw = nbytes / seconds / 1e9
            busbw = algbw * 2 * (n - 1) / n
            rows.append({"suite": "distributed", "device": dev,
                         "case": f"allreduce {backend} {n} ranks {_size(nbytes)}",
                         "median_us": seconds * 1e6,
                         "note": f"busbw {busbw:.3g} GB/s, algbw {algbw:.3g} GB/s"})
    return rows


def _size(nbytes: int) -> str:
    return f"{nbytes >> 20} MiB" if nbytes >= 1 << 20 else f"{nbytes >> 10} KiB"


def _ddp_rows(quick: bool) -> list[dict[str, Any]]:
    steps = "10" if quick else "40"
    one = _job(1, ["ddp", "64", steps])[0]["seconds"]
    rows = [_ddp_row("1 rank, all threads", 64, _job(1, ["ddp", "64", steps],
                                                      threads=None)[0]["seconds"], "")]
    rows.append(_ddp_row("1 rank", 64, one, ""))
    alone = _job(2, ["ddp", "32", steps, "--plain"])[0]["seconds"]
    rows.append(_ddp_row("2 processes of 32, no DDP", 64, alone,
                         f"the cores' own scaling {one / (2 * alone):.0%}"))
    strong = _job(2, ["ddp", "32", steps])[0]["seconds"]
    rows.append(_ddp_row("2 ranks, global batch 64", 64, strong,
                         f"strong scaling efficiency {one / (2 * strong):.0%}"))
    weak = _job(2, ["ddp", "64", steps])[0]["seconds"]
    rows.append(_ddp_row("2 ranks, 64 per rank", 128, weak,
                         f"weak scaling efficiency {one / weak:.0%}"))
    return rows


def _ddp_row(what: str, global_batch: int, seconds: float, note: str) -> dict[str, Any]:
    return {"suite": "distributed", "device": "cpu", "case": f"ddp lenet step, {what}",
            "median_us": seconds * 1e6, "samples_s": global_batch / seconds, "note": note}


def run(device: str, quick: bool = False) -> list[dict[str, Any]]:
    """The suite's rows (the runner's entry point); none without mpiexec and mpi4py."""
    from dlcore.distributed import is_mpi_available

    if _mpiexec() is None or not is_mpi_available():
        return [{"suite": "distributed", "case": "skipped", "device": device,
                 "note": "needs mpiexec and mpi4py: pip install 'dlcore[distributed]'"}]
    return _allreduce_rows(quick, device) + _ddp_rows(quick)


# ---- the workers, run on every rank -------------------------------------------------------
def _slowest(seconds: float) -> float:
    import dlcore
    import dlcore.distributed as dist

    t = dlcore.tensor([seconds], dtype="float64")
    dist.all_reduce(t, dist.ReduceOp.MAX)
    return float(t.item())


def _loop_seconds(fn: Any, target_s: float = 0.05) -> float:
    """The slowest rank's mean time of ``fn`` over a loop, median of five loops."""
    import dlcore.distributed as dist

    fn()
    dist.barrier()
    t0 = time.perf_counter()
    fn()
    once = _slowest(time.perf_counter() - t0)
    iters = max(1, min(1000, int(target_s / max(once, 1e-7))))
    samples = []
    for _ in range(5):
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        samples.append(_slowest((time.perf_counter() - t0) / iters))
    return statistics.median(samples)


def _worker_allreduce(device: str, backend: str, sizes: list[int]) -> None:
    import dlcore
    import dlcore.distributed as dist

    dist.init_process_group(backend)
    for nbytes in sizes:
        t = dlcore.ones(nbytes // 4, dtype="float32", device=device)
        seconds = _loop_seconds(lambda t=t: dist.all_reduce(t))
        if dist.get_rank() == 0:
            print(json.dumps({"bytes": nbytes, "seconds": seconds}), flush=True)
    dist.destroy_process_group()


def _worker_ddp(per_rank: int, steps: int, plain: bool) -> None:
    import dlcore
    import dlcore.distributed as dist
    import dlcore.nn.functional as F
    from dlcore.models import LeNet
    from dlcore.nn.parallel import DistributedDataParallel

    dist.init_process_group("mpi")
    dlcore.manual_seed(dist.get_rank())
    model = LeNet() if plain else DistributedDataParallel(LeNet())
    opt = dlcore.optim.Adam(model.parameters(), lr=1e-3)
    x = dlcore.tensor(np.random.default_rng(0).random((per_rank, 1, 8, 8), np.float32))
    y = dlcore.randint(0, 10, (per_rank,))

    def step() -> None:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(3):
        step()
    times = []
    for _ in range(steps):
        dist.barrier()
        t0 = time.perf_counter()
        step()
        times.append(_slowest(time.perf_counter() - t0))
    if dist.get_rank() == 0:
        print(json.dumps({"seconds": statistics.median(times)}), flush=True)
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m dlcore.bench.distributed",
                                 description="a worker of the distributed suite; run "
                                             "`dlcore bench distributed` instead")
    sub = ap.add_subparsers(dest="worker", required=True)
    allreduce = sub.add_parser("allreduce")
    allreduce.add_argument("--device", default="cpu")
    allreduce.add_argument("--backend", default="mpi")
    allreduce.add_argument("sizes", nargs="+", type=int)
    ddp = sub.add_parser("ddp")
    ddp.add_argument("per_rank", type=int)
    ddp.add_argument("steps", type=int)
    ddp.add_argument("--plain", action="store_true", help="no DDP: each rank on its own")
    args = ap.parse_args(argv)
    if args.worker == "allreduce":
        _worker_allreduce(args.device, args.backend, args.sizes)
    else:
        _worker_ddp(args.per_rank, args.steps, args.plain)


if __name__ == "__main__":
    main()

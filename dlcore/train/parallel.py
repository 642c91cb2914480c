"""Data-parallel ``dlcore train``: what changes when the command runs under ``mpiexec -n N``.

Detection: an MPI launcher sets its world size in the environment (``PMI_SIZE``: MPICH's
Hydra, Intel MPI, Slurm's PMI-2; ``OMPI_COMM_WORLD_SIZE``: Open MPI). When it says more
than one rank, ``dlcore train`` calls ``init_process_group`` ("mpi" for cpu and emu
tensors, "nccl" for cuda ones, each rank on the GPU of its local rank) and wraps its models
in :class:`~dlcore.nn.parallel.DistributedDataParallel`; with one rank nothing here runs.

The rules, so that N ranks train what one process trains:

- ``--batch-size B`` stays the *global* batch. Every rank draws the same permutation of the
  training set per epoch (the data generator is seeded by ``--seed`` alone) and takes its
  contiguous B/N slice of each global batch: rank r the samples ``r*B/N .. (r+1)*B/N - 1``.
  DDP averages the ranks' gradients, the mean of their B/N-sample means, which is the
  gradient of the whole batch; so the learning rate, the steps per epoch and the schedule
  are the one-process run's. B not divisible by N is refused (:class:`OptionError`).
- Initial weights come from ``--seed`` on every rank (DDP copies rank 0's anyway). After
  that each rank reseeds dlcore's generators from (seed, rank), so dropout masks and GAN
  noise differ between ranks, as they differ between the samples of one process's batch.
- Per-step figures are summed on each rank's device; at each read (every 10 steps and at
  the epoch's end) one all-reduce adds the ranks' sums and the Ctrl-C flags, so every rank
  sees the same means, the same divergence verdict and the same decision to stop.
- Rank 0 alone writes files (metrics, plots, checkpoints). A checkpoint holds every rank's
  RNG state and running sums (gathered to rank 0); ``--resume`` reads it on rank 0 and
  broadcasts it, so the ranks need no shared file system.
"""

from __future__ import annotations

import os
import pickle
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from .. import cuda
from .. import distributed as dist
from ..creation import from_numpy, zeros
from ..device import Device
from ..dtypes import int64
from ..nn import Module
from ..nn.parallel import DistributedDataParallel
from ..random import manual_seed

T = TypeVar("T")

# where MPI launchers put the world size and this process's rank
LAUNCHER_VARIABLES = (("PMI_SIZE", "PMI_RANK"), ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"))


class OptionError(ValueError):
    """An option's value this run cannot take (a batch the data or the ranks cannot split);
    the message names the option."""


def launched() -> tuple[int, int]:
    """(rank, world size) as the MPI launcher's environment states them; (0, 1) when no
    launcher started this process."""
    for size_name, rank_name in LAUNCHER_VARIABLES:
        size = os.environ.get(size_name, "")
        if size.isdigit():
            rank = os.environ.get(rank_name, "0")
            return (int(rank) if rank.isdigit() else 0), int(size)
    return 0, 1


class Ranks:
    """This process's place in a data-parallel run: its rank and the world size. With one
    rank every method is the identity (no MPI call), so the training loop has one path."""

    def __init__(self, rank: int = 0, world_size: int = 1) -> None:
        self.rank, self.world_size = rank, world_size

    @property
    def main(self) -> bool:
        """Whether this rank writes the files and prints the figures (rank 0)."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world_size > 1

    def check_batch(self, batch_size: int) -> int:
        """This rank's share of a global batch of ``batch_size``."""
        if batch_size % self.world_size:
            below = batch_size - batch_size % self.world_size
            raise OptionError(
                f"--batch-size {batch_size} is not divisible by the world size "
                f"{self.world_size} (mpiexec -n {self.world_size}): the global batch is split "
                f"into equal slices, one per rank; give a multiple of {self.world_size} "
                f"(such as {below or self.world_size} or {below + self.world_size})")
        return batch_size // self.world_size

    def wrap(self, module: Module) -> Module:
        """``module`` as the training step calls it: in DDP when there are several ranks."""
        return DistributedDataParallel(module) if self.parallel else module

    def seed(self, seed: int) -> None:
        """Give this rank a generator stream of its own, derived from (seed, rank)."""
        if self.parallel:
            state = np.random.SeedSequence([seed % 2**64, self.rank]).generate_state(2)
            manual_seed(int(state[0]) << 32 | int(state[1]))

    def sum(self, values: list[float]) -> list[float]:
        """``values`` summed over the ranks (one all-reduce, float64), on every rank."""
        if not self.parallel:
            return values
        carrier = from_numpy(np.array(values, np.float64))
        dist.all_reduce(carrier)
        return [float(v) for v in carrier.numpy()]

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` (picklable), in rank order, on rank 0; None elsewhere."""
        if not self.parallel:
            return [obj]
        data = np.frombuffer(pickle.dumps(obj), np.uint8)
        size = from_numpy(np.array([data.size], np.int64))
        sizes = [zeros(1, dtype=int64) for _ in range(self.world_size)]
        dist.all_gather(sizes, size)
        longest = max(int(s.item()) for s in sizes)
        padded = np.zeros(longest, np.uint8)
        padded[:data.size] = data
        parts = [from_numpy(np.zeros(longest, np.uint8)) for _ in range(self.world_size)]
        dist.all_gather(parts, from_numpy(padded))
        if not self.main:
            return None
        return [pickle.loads(p.numpy()[:int(s.item())].tobytes())
                for p, s in zip(parts, sizes)]

    def share(self, make: Callable[[], T]) -> T:
        """``make()`` run on rank 0, its result (or the exception it raised) on every rank."""
        if not self.parallel:
            return make()
        message: list[Any] = [None]
        failure: Exception | None = None
        if self.main:
            try:
                message = [("value", make())]
            except Exception as exc:
                # the class, args and attributes: pickling the exception itself would call
                # its __init__ with args, which fails for classes taking other arguments
                message, failure = [("error", (type(exc), exc.args, vars(exc)))], exc
        dist.broadcast_object_list(message, src=0)
        if failure is not None:
            raise failure
        kind, payload = message[0]
        if kind == "value":
            return payload
        cls, args, attributes = payload
        error = cls.__new__(cls)
        error.args = args
        vars(error).update(attributes)
        raise error

    def abort(self, code: int) -> None:
        """End every rank now (MPI_Abort): for a failure this rank alone has seen, which
        would leave the others waiting in their next collective."""
        sys.stdout.flush()
        sys.stderr.flush()
        dist.default_group().mpi.abort(code)

    def close(self) -> None:
        if self.parallel:
            dist.destroy_process_group()


def start(device: Device, device_name: str) -> tuple[Ranks, Device]:
    """Join the launcher's ranks (when it started several) and this rank's device; with
    one rank, ``Ranks()`` and ``device`` unchanged. ``device_name`` is ``--device`` as
    given: under several ranks a GPU is chosen by local rank, so an index is refused."""
    world = launched()[1]
    if world == 1:
        return Ranks(), device
    if device.is_cuda and ":" in device_name:
        raise OptionError(f"--device {device_name}: under mpiexec each rank takes the GPU of "
                          "its local rank (cuda:<local rank % GPUs>); give --device cuda or "
                          "auto")
    dist.init_process_group("nccl" if device.is_cuda else "mpi")
    if dist.get_world_size() != world:
        # NOTE: the classic mismatch: mpi4py built for another MPI than this mpiexec makes
        # every rank a world of its own, and all of them would write the same files
        seen = dist.get_world_size()
        dist.destroy_process_group()
        raise RuntimeError(f"the launcher started {world} ranks but MPI sees {seen}: mpi4py "
                           "was built for another MPI than this mpiexec; start the ranks with "
                           f"the mpiexec of this environment ({Path(sys.executable).parent})")
    ranks = Ranks(dist.get_rank(), dist.get_world_size())
    if device.is_cuda:
        device = Device("cuda", dist.get_local_rank() % cuda.device_count())
    return ranks, device


"""The default process group: who the ranks are, which backends carry their traffic, and how
a failure on one rank ends the job instead of hanging it.

Ranks are processes started by an MPI launcher (``mpiexec -n 4 python train.py``, Slurm's
``srun``); MPI says each one's rank, the world size and, through a shared-memory split of the
world, the *local rank* among the ranks on the same machine. Without mpi4py a lone process
(``WORLD_SIZE`` unset or 1) still gets a group of one, so single-process runs need no MPI;
more ranks than that without MPI is an error that says what to install.

Backends: ``"mpi"`` (mpi4py) carries CPU and emulator tensors, and CUDA tensors through host
copies; ``"nccl"`` (``cupy.cuda.nccl``) carries CUDA tensors between GPUs, with MPI still
underneath it to start the ranks, broadcast NCCL's unique id from rank 0 and run barriers.
``backend=None`` picks ``"nccl"`` when CUDA and NCCL are usable here, else ``"mpi"``.

Failure policy (issue 14: never a hang). Every collective polls a non-blocking request
against a deadline (``timeout``, 300 s unless given) and raises :class:`DistBackendError`
naming the collective, the rank and the timeout. ``init_process_group`` installs a
``sys.excepthook`` that prints a summary line with the exception's message and the
traceback, then calls ``MPI_Abort``: an uncaught
exception on any rank (a timeout included) ends every rank at once. ``mpiexec`` itself ends
the job when a rank exits with a non-zero status or is killed.
"""

from __future__ import annotations

import datetime
import enum
import importlib
import importlib.util
import os
import sys
import time
from types import TracebackType
from typing import Any

DEFAULT_TIMEOUT_S = 300.0


class DistError(RuntimeError):
    """Base of the errors raised by ``dlcore.distributed`` (PyTorch's ``DistError``)."""


class DistBackendError(DistError):
    """A collective failed or timed out in its backend (PyTorch's ``DistBackendError``)."""


class ReduceOp(enum.Enum):
    """How :func:`all_reduce` and :func:`reduce_scatter` combine the ranks' tensors.

    ``AVG`` is the sum divided by the world size (floating point tensors only); the bitwise
    ones apply to integer and bool tensors.
    """

    SUM = "sum"
    AVG = "avg"
    PRODUCT = "product"
    MIN = "min"
    MAX = "max"
    BAND = "band"
    BOR = "bor"
    BXOR = "bxor"


def import_mpi() -> tuple[Any, str]:
    """mpi4py's ``MPI`` module (importing it initialises MPI), or None and why not."""
    try:
        # NOTE: through importlib, so that dlcore imports and type-checks without mpi4py
        return importlib.import_module("mpi4py.MPI"), ""
    except ImportError as exc:
        return None, f"{type(exc).__name__}: {exc}"


def is_available() -> bool:
    """Whether this install can run collectives (True: a group of one needs no MPI)."""
    return True


def is_mpi_available() -> bool:
    """Whether mpi4py imports here (PyTorch's name; the ``distributed`` extra installs it)."""
    return importlib.util.find_spec("mpi4py") is not None


def is_nccl_available() -> bool:
    """Whether NCCL can be used: CuPy with its NCCL bindings and the NCCL library."""
    from .nccl_backend import nccl_module

    return nccl_module()[0] is not None


class ProcessGroup:
    """The ranks of one job and the backends between them (only the default, world group
    exists in dlcore)."""

    def __init__(self, backend: str, rank: int, world_size: int, local_rank: int,
                 timeout: float, mpi: Any, nccl: Any) -> None:
        self.backend, self.rank, self.world_size = backend, rank, world_size
        self.local_rank, self.timeout = local_rank, timeout
        self.mpi = mpi  # MpiBackend or SelfBackend: CPU tensors, barriers, bootstrap
        self.nccl = nccl  # NcclBackend or None: CUDA tensors

    def size(self) -> int:
        return self.world_size

    def __repr__(self) -> str:
        return (f"ProcessGroup(backend={self.backend!r}, rank={self.rank}, "
                f"world_size={self.world_size}, timeout={self.timeout:g}s)")


_group: ProcessGroup | None = None
_previous_excepthook: Any = None


def _timeout_seconds(timeout: Any) -> float:
    if timeout is None:
        return DEFAULT_TIMEOUT_S
    seconds = timeout.total_seconds() if isinstance(timeout, datetime.timedelta) \
        else float(timeout)
    if not seconds > 0:
        raise ValueError(f"init_process_group: timeout must be positive, got {timeout!r}")
    return seconds


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"init_process_group: environment variable {name}={value!r} is not "
                         "an integer") from None


def _check_agrees(what: str, mpi_value: int, given: int | None, source: str) -> None:
    if given is not None and given != -1 and given != mpi_value:
        raise ValueError(f"init_process_group: {source} says {what} {given}, but MPI started "
                         f"this process with {what} {mpi_value}; start every rank with one "
                         "launcher (mpiexec or srun) and leave RANK/WORLD_SIZE unset")


def _discover(rank: int, world_size: int, timeout: float) -> tuple[Any, int, int, int]:
    """The MPI (or single-process) backend, rank, world size and local rank."""
    from .mpi_backend import MpiBackend, SelfBackend

    env_world, env_rank = _env_int("WORLD_SIZE"), _env_int("RANK")
    mpi, why = import_mpi()
    if mpi is None:
        world = world_size if world_size != -1 else (env_world or 1)
        if world != 1:
            raise RuntimeError(
                f"init_process_group: a world of {world} ranks needs MPI, but mpi4py cannot be "
                f"imported ({why}); pip install 'dlcore[distributed]' and start the ranks "
                "with mpiexec -n N")
        local_rank = _env_int("LOCAL_RANK") or 0
        return SelfBackend(timeout), 0, 1, local_rank
    comm = mpi.COMM_WORLD
    _check_agrees("world size", comm.Get_size(), env_world, "WORLD_SIZE")
    _check_agrees("world size", comm.Get_size(), world_size, "world_size=")
    _check_agrees("rank", comm.Get_rank(), env_rank, "RANK")
    _check_agrees("rank", comm.Get_rank(), rank, "rank=")
    backend = MpiBackend(mpi, timeout)
    return backend, backend.rank, backend.world_size, backend.local_rank


# Seconds the aborting rank waits after its last write: MPI_Abort makes MPICH's launcher kill
# every rank at once, and on a loaded machine it did so before forwarding the rest of the
# rank's stderr (measured: the traceback cut off mid-way, the exception's message line lost).
# The wait gives the launcher time to read the pipes; the summary line goes out first anyway.
ABORT_GRACE_S = 0.5


def _abort_on_uncaught(exc_type: type[BaseException], exc: BaseException,
                       tb: TracebackType | None) -> None:
    """sys.excepthook while a group exists: one summary line with the exception's message,
    the traceback, then end every rank (MPI_Abort)."""
    group = _group
    previous = _previous_excepthook or sys.__excepthook__
    if group is None or group.world_size == 1:
        previous(exc_type, exc, tb)
        return
    sys.stdout.flush()
    sys.stderr.write(f"dlcore.distributed: uncaught {exc_type.__name__} on rank {group.rank} "
                     f"of {group.world_size}: {exc}; aborting all ranks (MPI_Abort)\n")
    sys.stderr.flush()
    previous(exc_type, exc, tb)
    sys.stderr.flush()
    sys.stdout.flush()
    time.sleep(ABORT_GRACE_S)
    group.mpi.abort(1)


def init_process_group(backend: str | None = None, init_method: str | None = None,
                       timeout: datetime.timedelta | float | None = None,
                       world_size: int = -1, rank: int = -1) -> None:
    """Join this process to the job's ranks (PyTorch's ``init_process_group``).

    ``backend``: ``"mpi"``, ``"nccl"`` or None (``"nccl"`` when CUDA and NCCL are usable,
    else ``"mpi"``). ``timeout`` (a ``timedelta`` or seconds; default 300 s) bounds every
    collective. Rank and world size come from the MPI launcher; ``world_size``/``rank`` and
    the ``RANK``/``WORLD_SIZE`` variables, when set, must agree with it. ``init_method`` may
    only be None or ``"env://"``: MPI does the rendezvous. With NCCL, this rank's GPU becomes
    ``cuda:<local rank>`` (modulo the GPU count).

    >>> dist.init_process_group("mpi")   # under: mpiexec -n 2 python script.py
    >>> dist.get_world_size()
    2
    """
    global _group, _previous_excepthook
    if _group is not None:
        raise RuntimeError("trying to initialize the default process group twice!")
    if backend is not None and backend not in ("mpi", "nccl"):
        raise ValueError(f"init_process_group: backend must be 'mpi', 'nccl' or None, got "
                         f"{backend!r} (gloo is not available in dlcore: use 'mpi')")
    if init_method not in (None, "env://"):
        raise ValueError(f"init_process_group: init_method {init_method!r} is not supported; "
                         "MPI's launcher (mpiexec, srun) starts and connects the ranks")
    seconds = _timeout_seconds(timeout)
    mpi, rank, world, local_rank = _discover(rank, world_size, seconds)
    nccl = None
    if backend is None:
        backend = "nccl" if _nccl_usable() else "mpi"
    if backend == "nccl":
        from .nccl_backend import NcclBackend

        try:
            nccl = NcclBackend(mpi, rank, world, local_rank, seconds)
        except BaseException:
            mpi.close()
            raise
    _group = ProcessGroup(backend, rank, world, local_rank, seconds, mpi, nccl)
    _previous_excepthook = sys.excepthook
    sys.excepthook = _abort_on_uncaught


def _nccl_usable() -> bool:
    from .. import cuda

    return cuda.is_available() and is_nccl_available()


def destroy_process_group() -> None:
    """Leave the group: free its communicators and restore ``sys.excepthook``. MPI itself
    stays initialised (mpi4py finalises it at exit), so a new group may be made."""
    global _group, _previous_excepthook
    group = default_group()
    if group.nccl is not None:
        group.nccl.close()
    group.mpi.close()
    _group = None
    if sys.excepthook is _abort_on_uncaught:
        sys.excepthook = _previous_excepthook or sys.__excepthook__
    _previous_excepthook = None


def is_initialized() -> bool:
    return _group is not None


def default_group() -> ProcessGroup:
    """The group made by :func:`init_process_group`; RuntimeError before it."""
    if _group is None:
        raise RuntimeError("Default process group has not been initialized, please make sure "
                           "to call init_process_group.")
    return _group


def _check_group(group: Any) -> ProcessGroup:
    if group is not None and group is not _group:
        raise ValueError("dlcore.distributed has only the default group: pass group=None")
    return default_group()


def get_rank(group: Any = None) -> int:
    """This process's rank, ``0 .. world_size - 1``."""
    return _check_group(group).rank


def get_world_size(group: Any = None) -> int:
    return _check_group(group).world_size


def get_local_rank() -> int:
    """This process's rank among the ranks on its machine (selects its GPU)."""
    return default_group().local_rank


def get_backend(group: Any = None) -> str:
    return _check_group(group).backend

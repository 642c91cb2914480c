"""The MPI backend: non-blocking MPI collectives on host arrays, waited on with a deadline.

Every collective is started as its non-blocking form (``MPI_Iallreduce``, ``MPI_Ibcast``,
...) on a private duplicate of ``MPI_COMM_WORLD`` (the user's own MPI traffic on the world
communicator never matches ours) and then polled with ``MPI_Test`` until it completes or the
group's timeout passes. Blocking MPI calls cannot be interrupted: a rank whose peer hung would
wait for ever; polling is what turns that into an error that names the collective.

Polling cost: the first 50 us spin (a small all-reduce on one machine finishes in
microseconds, and MPICH progresses a request only inside MPI calls), up to 50 ms each test
yields the core first (ranks may share cores: a rank that spins holds up the peer it waits
for), and after that each test sleeps 0.5 ms. On this project's 2-core VM the polled
collectives measured no slower than mpi4py's blocking ones (4 ranks on 2 cores: both some
ms per small all-reduce, dominated by the time-sharing of the cores).

Arrays arrive C-contiguous and on the host (:mod:`dlcore.distributed.collectives` stages
them); MPI reads and writes them in place.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from .process_group import DistBackendError, ReduceOp

SPIN_S = 50e-6
YIELD_S = 50e-3
SLEEP_S = 0.5e-3

# NumPy dtype -> name of the MPI datatype (MPICH's FLOAT16_T carries float16 sums)
_MPI_TYPES = {"float16": "FLOAT16_T", "float32": "FLOAT", "float64": "DOUBLE",
              "int8": "INT8_T", "uint8": "UINT8_T", "int16": "INT16_T", "int32": "INT32_T",
              "int64": "INT64_T", "bool": "C_BOOL"}
_MPI_OPS = {ReduceOp.SUM: "SUM", ReduceOp.AVG: "SUM", ReduceOp.PRODUCT: "PROD",
            ReduceOp.MIN: "MIN", ReduceOp.MAX: "MAX", ReduceOp.BAND: "BAND",
            ReduceOp.BOR: "BOR", ReduceOp.BXOR: "BXOR"}
# bool tensors reduce logically (PyTorch: a sum of bools is their "or")
_MPI_BOOL_OPS = {ReduceOp.SUM: "LOR", ReduceOp.PRODUCT: "LAND", ReduceOp.MIN: "LAND",
                 ReduceOp.MAX: "LOR", ReduceOp.BAND: "LAND", ReduceOp.BOR: "LOR",
                 ReduceOp.BXOR: "LXOR"}


def timeout_error(what: str, rank: int, world_size: int, timeout: float,
                  backend: str) -> DistBackendError:
    return DistBackendError(
        f"dlcore.distributed: {what} timed out after {timeout:g} s on rank {rank} of "
        f"{world_size} (backend {backend}): another rank has died, hangs, or called a different "
        "collective; this rank cannot continue (the limit is init_process_group(timeout=...))")


class MpiBackend:
    """Collectives over mpi4py between the ranks MPI started."""

    name = "mpi"

    def __init__(self, mpi: Any, timeout: float) -> None:
        self.MPI = mpi
        self.comm = mpi.COMM_WORLD.Dup()
        self.rank, self.world_size = self.comm.Get_rank(), self.comm.Get_size()
        node = self.comm.Split_type(mpi.COMM_TYPE_SHARED)
        self.local_rank = node.Get_rank()
        node.Free()
        self.timeout = timeout

    def _type(self, array: np.ndarray) -> Any:
        name = _MPI_TYPES.get(array.dtype.name)
        if name is None:
            raise TypeError(f"dlcore.distributed (mpi): dtype {array.dtype} is not supported")
        return getattr(self.MPI, name)

    def _op(self, op: ReduceOp, dtype: np.dtype) -> Any:
        table = _MPI_BOOL_OPS if dtype == np.bool_ else _MPI_OPS
        return getattr(self.MPI, table[op])

    # ---- starting collectives: each returns a request for test() / wait() ---------------
    def all_reduce(self, array: np.ndarray, op: ReduceOp) -> Any:
        return self.comm.Iallreduce(self.MPI.IN_PLACE, [array, self._type(array)],
                                    op=self._op(op, array.dtype))

    def broadcast(self, array: np.ndarray, src: int) -> Any:
        return self.comm.Ibcast([array, self._type(array)], root=src)

    def all_gather(self, send: np.ndarray, recv: np.ndarray) -> Any:
        kind = self._type(send)
        return self.comm.Iallgather([send, kind], [recv, kind])

    def reduce_scatter(self, send: np.ndarray, recv: np.ndarray, op: ReduceOp) -> Any:
        kind = self._type(send)
        return self.comm.Ireduce_scatter_block([send, kind], [recv, kind],
                                               op=self._op(op, send.dtype))

    def barrier(self) -> Any:
        return self.comm.Ibarrier()

    # ---- completion -----------------------------------------------------------------------
    def test(self, request: Any) -> bool:
        """Whether ``request`` has completed (also makes MPI progress)."""
        return bool(request.Test())

    def wait(self, request: Any, what: str, timeout: float | None = None) -> None:
        """Poll ``request`` until done; DistBackendError after ``timeout`` (the group's)."""
        if request.Test():
            return
        limit = self.timeout if timeout is None else timeout
        start = time.monotonic()
        while True:
            waited = time.monotonic() - start
            if waited >= limit:
                raise timeout_error(what, self.rank, self.world_size, limit, self.name)
            if waited > YIELD_S:
                time.sleep(SLEEP_S)
            elif waited > SPIN_S:
                os.sched_yield()
            if request.Test():
                return

    def broadcast_bytes(self, data: bytes | None, src: int, what: str) -> bytes:
        """``data`` from rank ``src`` on every rank (lengths first, then the bytes)."""
        size = np.array([0 if data is None else len(data)], np.int64)
        self.wait(self.broadcast(size, src), what)
        buffer = np.frombuffer(data, np.uint8).copy() if self.rank == src and data is not None \
            else np.empty(int(size[0]), np.uint8)
        self.wait(self.broadcast(buffer, src), what)
        return buffer.tobytes()

    def abort(self, code: int) -> None:
        self.MPI.COMM_WORLD.Abort(code)

    def close(self) -> None:
        self.comm.Free()


class _Done:
    """The request of a collective of one rank: complete when started."""

    def Test(self) -> bool:  # noqa: N802 -- MPI's request interface
        return True


class SelfBackend:
    """A group of one process without MPI: every collective is the identity."""

    name = "mpi"
    rank, world_size, local_rank = 0, 1, 0
    _done = _Done()

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    def all_reduce(self, array: np.ndarray, op: ReduceOp) -> Any:
        return self._done

    def broadcast(self, array: np.ndarray, src: int) -> Any:
        return self._done

    def all_gather(self, send: np.ndarray, recv: np.ndarray) -> Any:
        recv.reshape(send.shape)[...] = send
        return self._done

    def reduce_scatter(self, send: np.ndarray, recv: np.ndarray, op: ReduceOp) -> Any:
        recv[...] = send.reshape(recv.shape)
        return self._done

    def barrier(self) -> Any:
        return self._done

    def test(self, request: Any) -> bool:
        return True

    def wait(self, request: Any, what: str, timeout: float | None = None) -> None:
        return None

    def broadcast_bytes(self, data: bytes | None, src: int, what: str) -> bytes:
        return b"" if data is None else data

    def abort(self, code: int) -> None:
        os._exit(code)

    def close(self) -> None:
        return None

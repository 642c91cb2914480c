"""The NCCL backend: collectives between GPUs through ``cupy.cuda.nccl``.

One communicator per job: rank 0 makes NCCL's unique id and broadcasts it over MPI, then
every rank joins with its GPU, ``cuda:<local rank % GPUs>`` (made current in this thread by
:func:`init_process_group`). Collectives run on a side stream of this rank's GPU: the side
stream first waits for the work already queued on the caller's stream (an event), the
collective is queued, and an event recorded after it is what :meth:`test` and :meth:`wait`
poll, against the group's deadline like the MPI backend; on a timeout the communicator is
aborted (NCCL's documented way to free a rank stuck in a collective) and the error raised.
After :meth:`wait` the caller's stream waits for the side stream, so later kernels see the
result. Arrays stay referenced by their handle until waited, so CuPy's pool cannot reuse
their memory while NCCL still reads or writes it.

NOTE: untested in CI (no GPU, no NCCL library there); on a machine without NCCL,
``init_process_group("nccl")`` raises a RuntimeError that says what is missing.
"""

from __future__ import annotations

import functools
import importlib
import pickle
import time
import warnings
from typing import Any

from .. import cuda
from ..device import Device, cupy_import_error, cupy_module
from .mpi_backend import SLEEP_S, SPIN_S, timeout_error
from .process_group import ReduceOp

_NCCL_TYPES = {"float16": "NCCL_FLOAT16", "float32": "NCCL_FLOAT32",
               "float64": "NCCL_FLOAT64", "int8": "NCCL_INT8", "uint8": "NCCL_UINT8",
               "int32": "NCCL_INT32", "int64": "NCCL_INT64"}
# AVG is a sum divided by the caller (NCCL_AVG needs NCCL >= 2.10; the sum works everywhere)
_NCCL_OPS = {ReduceOp.SUM: "NCCL_SUM", ReduceOp.AVG: "NCCL_SUM", ReduceOp.PRODUCT: "NCCL_PROD",
             ReduceOp.MIN: "NCCL_MIN", ReduceOp.MAX: "NCCL_MAX"}


@functools.lru_cache(maxsize=1)
def nccl_module() -> tuple[Any, str]:
    """CuPy's NCCL bindings, or None and why they cannot be used here (asked once: the
    reason is a warning CuPy gives only at the first import)."""
    cp = cupy_module()
    if cp is None:
        return None, f"CuPy is not importable ({cupy_import_error()})"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # NOTE: cupy.cuda.nccl only loads the NCCL library; CuPy itself came from device.py
        nccl = importlib.import_module("cupy.cuda.nccl")
    if not getattr(nccl, "available", False):
        reason = " ".join(str(caught[-1].message).split()) if caught else "no libnccl"
        return None, f"CuPy's NCCL bindings are unusable: {reason}"
    return nccl, ""


class _Handle:
    """A queued NCCL collective: the event after it and the arrays it uses."""

    def __init__(self, event: Any, arrays: tuple[Any, ...], caller_stream: Any) -> None:
        self.event, self.arrays, self.caller_stream = event, arrays, caller_stream


class NcclBackend:
    """Collectives over one NCCL communicator, one GPU per rank."""

    name = "nccl"

    def __init__(self, mpi: Any, rank: int, world_size: int, local_rank: int,
                 timeout: float) -> None:
        nccl, why = nccl_module()
        if nccl is None or not cuda.is_available():
            raise RuntimeError("init_process_group: backend 'nccl' is unavailable here: "
                               f"{why or cuda.why_unavailable()}; use backend='mpi' (CPU "
                               "tensors), or install CuPy for your CUDA and nvidia-nccl-cu12")
        self.nccl, self.rank, self.world_size, self.timeout = nccl, rank, world_size, timeout
        self.device = Device("cuda", local_rank % cuda.device_count())
        cuda.set_device(self.device)
        uid = nccl.get_unique_id() if rank == 0 else None
        uid = pickle.loads(mpi.broadcast_bytes(pickle.dumps(uid) if rank == 0 else None, 0,
                                               "init_process_group (NCCL unique id)"))
        with self.device.use():
            self.comm = nccl.NcclCommunicator(world_size, uid, rank)
            self.stream = self.device.new_stream()

    def supports(self, dtype: Any, op: ReduceOp | None = None) -> bool:
        return dtype.name in _NCCL_TYPES and (op is None or op in _NCCL_OPS)

    def _launch(self, arrays: tuple[Any, ...], enqueue: Any) -> _Handle:
        caller = self.device.current_stream()
        ready = self.device.new_event()
        ready.record(caller)
        self.stream.wait_event(ready)
        enqueue(self.stream.ptr)
        done = self.device.new_event()
        done.record(self.stream)
        return _Handle(done, arrays, caller)

    def _type(self, array: Any) -> Any:
        return getattr(self.nccl, _NCCL_TYPES[array.dtype.name])

    def all_reduce(self, array: Any, op: ReduceOp) -> _Handle:
        kind, red = self._type(array), getattr(self.nccl, _NCCL_OPS[op])
        return self._launch((array,), lambda s: self.comm.allReduce(
            array.data.ptr, array.data.ptr, array.size, kind, red, s))

    def broadcast(self, array: Any, src: int) -> _Handle:
        kind = self._type(array)
        return self._launch((array,), lambda s: self.comm.broadcast(
            array.data.ptr, array.data.ptr, array.size, kind, src, s))

    def all_gather(self, send: Any, recv: Any) -> _Handle:
        kind = self._type(send)
        return self._launch((send, recv), lambda s: self.comm.allGather(
            send.data.ptr, recv.data.ptr, send.size, kind, s))

    def reduce_scatter(self, send: Any, recv: Any, op: ReduceOp) -> _Handle:
        kind, red = self._type(send), getattr(self.nccl, _NCCL_OPS[op])
        return self._launch((send, recv), lambda s: self.comm.reduceScatter(
            send.data.ptr, recv.data.ptr, recv.size, kind, red, s))

    def test(self, handle: _Handle) -> bool:
        return bool(handle.event.done)

    def wait(self, handle: _Handle, what: str, timeout: float | None = None) -> None:
        limit = self.timeout if timeout is None else timeout
        start = time.monotonic()
        while not handle.event.done:
            waited = time.monotonic() - start
            if waited >= limit:
                self.comm.abort()
                raise timeout_error(what, self.rank, self.world_size, limit, self.name)
            if waited > SPIN_S:
                time.sleep(SLEEP_S)
        handle.caller_stream.wait_event(handle.event)
        handle.arrays = ()

    def close(self) -> None:
        self.device.synchronize()
        self.comm.destroy()

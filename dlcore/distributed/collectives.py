"""Collectives on Tensors, with PyTorch's names, arguments and in-place semantics.

Each public function checks its arguments once, picks the backend for the tensor's device
(NCCL for CUDA tensors in an ``"nccl"`` group, MPI otherwise: CPU and emulator arrays in
place, CUDA arrays through host copies), starts the non-blocking collective and either waits
for it (the default) or returns a :class:`Work` (``async_op=True``) whose ``wait()`` finishes
it: the same deadline applies either way. Results are written into the tensors' arrays; the
writes are not recorded by autograd (as in PyTorch, collectives are not differentiable).

Definitions (rank r of W, x_r its tensor): ``all_reduce``: every x_r becomes op(x_0..x_W-1)
(AVG: the sum over W); ``broadcast``: every x_r becomes x_src; ``all_gather``: out[i] = x_i
on every rank; ``reduce_scatter``: output on rank r = op over ranks of input_list[r].
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..tensor import Tensor
from .process_group import ProcessGroup, ReduceOp, _check_group

Finish = Callable[[], None]


class Future:
    """The result of a :class:`Work` (PyTorch's ``torch.futures.Future``, the part DDP comm
    hooks use): ``wait()`` and ``value()`` return it, ``then(fn)`` chains ``fn(future)``.

    NOTE: ``value()`` waits where PyTorch's would raise on an incomplete future; callbacks
    of ``then`` run when the chained future is waited on, in the waiting thread.
    """

    def __init__(self, wait: Callable[[], Any], done: Callable[[], bool]) -> None:
        self._wait, self._done = wait, done
        self._finished, self._value = False, None

    def wait(self) -> Any:
        if not self._finished:
            self._value = self._wait()
            self._finished = True
        return self._value

    value = wait

    def done(self) -> bool:
        return self._finished or self._done()

    def then(self, callback: Callable[[Future], Any]) -> Future:
        return Future(lambda: callback(_completed(self)), self.done)


def _completed(future: Future) -> Future:
    future.wait()
    return future


class Work:
    """A started collective (PyTorch's ``Work``): ``wait()`` finishes it or raises
    DistBackendError at the deadline; ``is_completed()`` tests without blocking."""

    def __init__(self, backend: Any, handle: Any, what: str, finish: Finish | None,
                 result: list[Tensor]) -> None:
        self._backend, self._handle, self._what = backend, handle, what
        self._finish, self._result = finish, result
        self._completed = False

    def _complete(self) -> None:
        self._completed = True
        self._handle = None
        if self._finish is not None:
            self._finish()

    def is_completed(self) -> bool:
        if not self._completed and self._backend.test(self._handle):
            self._complete()
        return self._completed

    def wait(self, timeout: Any = None) -> bool:
        """Block until done (``timeout``: a ``timedelta`` or seconds instead of the group's)."""
        if not self._completed:
            seconds = timeout.total_seconds() if hasattr(timeout, "total_seconds") else timeout
            self._backend.wait(self._handle, self._what, seconds)
            self._complete()
        return True

    def result(self) -> list[Tensor]:
        return self._result

    def get_future(self) -> Future:
        return Future(lambda: (self.wait(), self._result)[1], self.is_completed)


def _check_tensor(t: Any, what: str, name: str = "tensor") -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{what}: {name} must be a dlcore.Tensor, got {type(t).__name__}")
    return t


def _check_op(op: Any, dtype: np.dtype, what: str) -> ReduceOp:
    if not isinstance(op, ReduceOp):
        raise TypeError(f"{what}: op must be a dlcore.distributed.ReduceOp, got {op!r}")
    if op is ReduceOp.AVG and dtype.kind != "f":
        raise TypeError(f"{what}: ReduceOp.AVG needs a floating point tensor, got {dtype}")
    if op in (ReduceOp.BAND, ReduceOp.BOR, ReduceOp.BXOR) and dtype.kind not in "iub":
        raise TypeError(f"{what}: ReduceOp.{op.name} needs an integer or bool tensor, got "
                        f"{dtype}")
    return op


def _check_like(tensors: Sequence[Any], like: Tensor, count: int, what: str,
                name: str) -> list[Tensor]:
    if not isinstance(tensors, list | tuple) or len(tensors) != count:
        got = len(tensors) if isinstance(tensors, list | tuple) else type(tensors).__name__
        raise ValueError(f"{what}: {name} must be a list of world_size={count} tensors, got "
                         f"{got}")
    for i, t in enumerate(tensors):
        _check_tensor(t, what, f"{name}[{i}]")
        if t.shape != like.shape or t.dtype != like.dtype or t.device != like.device:
            raise ValueError(f"{what}: {name}[{i}] is {tuple(t.shape)} {t.dtype} on {t.device}"
                             f", expected {tuple(like.shape)} {like.dtype} on {like.device}")
    return list(tensors)


class _Staging:
    """Where one tensor's collective runs: the backend, and the contiguous array it reads
    and writes (the tensor's own array when it can be, else a copy written back)."""

    def __init__(self, group: ProcessGroup, tensor: Tensor, op: ReduceOp | None) -> None:
        dev = tensor._device
        nccl = group.nccl
        self.on_gpu = dev.is_cuda and nccl is not None and nccl.supports(tensor.dtype, op)
        self.backend = nccl if self.on_gpu else group.mpi
        self.device = dev
        self.xp = dev.xp if self.on_gpu else np

    def buffer(self, tensor: Tensor) -> Any:
        """A C-contiguous array with ``tensor``'s values, for the backend to work in."""
        data = tensor._data
        if self.device.is_cuda and not self.on_gpu:
            return np.ascontiguousarray(self.device.to_host(data))
        if data.flags.c_contiguous and getattr(data.flags, "writeable", True):
            return data
        return self.xp.ascontiguousarray(data)

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> Any:
        return self.xp.empty(shape, dtype)

    def write(self, tensor: Tensor, values: Any) -> None:
        """Put ``values`` into ``tensor``'s array (nothing to do if they are that array)."""
        if values is tensor._data:
            return
        if self.device.is_cuda and not self.on_gpu:
            values = self.device.asarray(values)
        tensor._data[...] = values


def _start(stage: _Staging, what: str, start: Callable[[], Any], finish: Finish | None,
           result: list[Tensor], async_op: bool) -> Work | None:
    work = Work(stage.backend, start(), what, finish, result)
    if async_op:
        return work
    work.wait()
    return None


def all_reduce(tensor: Tensor, op: ReduceOp = ReduceOp.SUM, group: Any = None,
               async_op: bool = False) -> Work | None:
    """Reduce ``tensor`` over all ranks, in place: every rank ends with the same result.

    >>> t = dlcore.tensor([float(dist.get_rank())])
    >>> dist.all_reduce(t)                # 2 ranks: t is [1.0] on both
    """
    what = "all_reduce"
    pg = _check_group(group)
    _check_tensor(tensor, what)
    op = _check_op(op, tensor.dtype, what)
    stage = _Staging(pg, tensor, op)
    buffer = stage.buffer(tensor)

    def finish() -> None:
        if op is ReduceOp.AVG:
            buffer[...] /= pg.world_size
        stage.write(tensor, buffer)

    return _start(stage, f"{what}({op.name}, {tuple(tensor.shape)} {tensor.dtype})",
                  lambda: stage.backend.all_reduce(buffer, op), finish, [tensor], async_op)


def broadcast(tensor: Tensor, src: int, group: Any = None,
              async_op: bool = False) -> Work | None:
    """Copy rank ``src``'s ``tensor`` into ``tensor`` on every other rank."""
    what = "broadcast"
    pg = _check_group(group)
    _check_tensor(tensor, what)
    if not isinstance(src, int | np.integer) or not 0 <= src < pg.world_size:
        raise ValueError(f"{what}: src must be a rank in [0, {pg.world_size - 1}], got {src!r}")
    stage = _Staging(pg, tensor, None)
    buffer = stage.buffer(tensor)
    return _start(stage, f"{what}(src={src}, {tuple(tensor.shape)} {tensor.dtype})",
                  lambda: stage.backend.broadcast(buffer, int(src)),
                  lambda: stage.write(tensor, buffer), [tensor], async_op)


def all_gather(tensor_list: list[Tensor], tensor: Tensor, group: Any = None,
               async_op: bool = False) -> Work | None:
    """``tensor_list[i]`` becomes rank i's ``tensor``, on every rank."""
    what = "all_gather"
    pg = _check_group(group)
    _check_tensor(tensor, what)
    outputs = _check_like(tensor_list, tensor, pg.world_size, what, "tensor_list")
    stage = _Staging(pg, tensor, None)
    send = stage.buffer(tensor)
    if send is tensor._data:
        send = send.copy()  # NOTE: tensor may be one of the outputs; MPI forbids the overlap
    recv = stage.empty((pg.world_size, *tensor.shape), tensor.dtype)

    def finish() -> None:
        for i, out in enumerate(outputs):
            stage.write(out, recv[i])

    return _start(stage, f"{what}({tuple(tensor.shape)} {tensor.dtype})",
                  lambda: stage.backend.all_gather(send, recv), finish, outputs, async_op)


def reduce_scatter(output: Tensor, input_list: list[Tensor], op: ReduceOp = ReduceOp.SUM,
                   group: Any = None, async_op: bool = False) -> Work | None:
    """``output`` on rank r becomes op over all ranks of their ``input_list[r]``."""
    what = "reduce_scatter"
    pg = _check_group(group)
    _check_tensor(output, what, "output")
    inputs = _check_like(input_list, output, pg.world_size, what, "input_list")
    op = _check_op(op, output.dtype, what)
    stage = _Staging(pg, output, op)
    send = stage.empty((pg.world_size, *output.shape), output.dtype)
    for i, t in enumerate(inputs):
        send[i] = stage.buffer(t)
    recv = stage.empty(tuple(output.shape), output.dtype)

    def finish() -> None:
        if op is ReduceOp.AVG:
            recv[...] /= pg.world_size
        stage.write(output, recv)

    return _start(stage, f"{what}({op.name}, {tuple(output.shape)} {output.dtype})",
                  lambda: stage.backend.reduce_scatter(send, recv, op), finish, [output],
                  async_op)


def barrier(group: Any = None, async_op: bool = False) -> Work | None:
    """Return once every rank has entered the barrier (over MPI, for either backend)."""
    pg = _check_group(group)
    work = Work(pg.mpi, pg.mpi.barrier(), "barrier", None, [])
    if async_op:
        return work
    work.wait()
    return None


def broadcast_object_list(object_list: list[Any], src: int = 0, group: Any = None) -> None:
    """Replace the items of ``object_list`` on every rank by rank ``src``'s (pickled, so only
    for trusted peers: the ranks of one job)."""
    pg = _check_group(group)
    if not isinstance(object_list, list):
        raise TypeError(f"broadcast_object_list: object_list must be a list, got "
                        f"{type(object_list).__name__}")
    data = pickle.dumps(object_list) if pg.rank == src else None
    received = pickle.loads(pg.mpi.broadcast_bytes(data, src, "broadcast_object_list"))
    if len(received) != len(object_list):
        raise ValueError(f"broadcast_object_list: rank {src} sent {len(received)} objects, "
                         f"this rank's list has {len(object_list)}")
    object_list[:] = received

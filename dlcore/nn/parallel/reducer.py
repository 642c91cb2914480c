"""The gradient reducer behind DistributedDataParallel: buckets, readiness, overlap.

Buckets. The parameters that require grad are taken in reverse order of
``module.parameters()`` (about the order backward produces their gradients: the last layer
first) and packed, per (device, dtype), into flat buffers of at most ``bucket_cap_mb`` MiB;
the first bucket is capped at 1 MiB (or the cap, if smaller) so that communication starts
early (PyTorch's layout).

One iteration (armed by DDP's forward when gradients are enabled and not inside
``no_sync()``):

1. backward reaches parameter p: its :class:`~.grad_hooks.GradHook` hands us p's gradient g
   for this backward. We copy ``g`` (plus p's existing ``.grad``, accumulated under
   ``no_sync``) into p's slot of its bucket and pass ``g`` on, so ``.grad`` is first the
   local sum, as without DDP.
2. When a bucket's last slot is filled, every complete bucket up to the first incomplete one
   is handed to the comm hook (default: divide by the world size and start a non-blocking
   all-reduce). Buckets always start in index order: MPI and NCCL need every rank to issue
   its collectives in the same order, whatever order the gradients arrive in.
3. Each later gradient also tests the oldest reduction in flight (MPI progresses requests
   only inside MPI calls), so communication overlaps the rest of backward.
4. When the last bucket has started (the last gradient has arrived), we wait for all of them
   and write the averages into the parameters' ``.grad``: when ``loss.backward()`` returns,
   every rank holds the same averaged gradients and the optimizer step may run.

``find_unused_parameters``: after forward, the output's graph is walked; parameters it does
not reach are marked ready with zero gradient (so buckets still complete), and one extra
all-reduce of a used-map at the end keeps ``.grad`` untouched for parameters no rank used.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ...autograd import Function
from ...device import Device
from ...distributed import GradBucket, ReduceOp, all_reduce, broadcast, get_world_size
from ...distributed.algorithms.ddp_comm_hooks import default_hooks
from ...tensor import Tensor
from . import grad_hooks

FIRST_BUCKET_BYTES = 1 << 20
CommHook = Callable[[Any, GradBucket], Any]


class _Bucket:
    """A flat buffer holding the gradients of ``params`` (slot i at ``offsets[i]``)."""

    def __init__(self, index: int, params: list[Tensor]) -> None:
        self.index, self.params = index, params
        self.offsets = list(np.cumsum([0] + [p.numel() for p in params[:-1]]))
        first = params[0]
        size = sum(p.numel() for p in params)
        self.tensor = Tensor._make(first._device.xp.zeros(size, first.dtype), first._device)
        self.pending = len(params)
        self.future: Any = None

    def slot(self, i: int) -> Any:
        p, start = self.params[i], int(self.offsets[i])
        return self.tensor._data[start:start + p.numel()].reshape(p.shape)

    def nbytes(self) -> int:
        return int(self.tensor._data.nbytes)


def make_buckets(params: list[Tensor], cap_bytes: int) -> list[list[int]]:
    """Indices into ``params``, reversed, in buckets of one (device, dtype) and at most
    ``cap_bytes`` (the first bucket at most FIRST_BUCKET_BYTES too; a parameter larger than
    the cap is alone in its bucket)."""
    buckets: list[list[int]] = []
    open_: dict[tuple, tuple[list[int], int, int]] = {}  # (device, dtype): members, bytes, cap
    for i in reversed(range(len(params))):
        p = params[i]
        key = (p.device, p.dtype)
        nbytes = p.numel() * p.dtype.itemsize
        members, size, cap = open_.get(key, ([], 0, 0))
        if not members or size + nbytes > cap:
            members, size = [], 0
            cap = min(FIRST_BUCKET_BYTES, cap_bytes) if not buckets else cap_bytes
            buckets.append(members)
        members.append(i)
        open_[key] = (members, size + nbytes, cap)
    return buckets


def graph_tensors(value: Any) -> Iterator[Tensor]:
    """The Tensors in a forward's output (a tensor, or lists, tuples and dicts of them)."""
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from graph_tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from graph_tensors(item)


def reachable_nodes(outputs: Any) -> set[Function]:
    """Every autograd node backward from ``outputs`` can reach."""
    stack = [t._edge()[0] for t in graph_tensors(outputs) if t.requires_grad]
    seen: set[Function] = set(stack)
    while stack:
        for edge in stack.pop().next_functions:
            if edge is not None and edge[0] not in seen:
                seen.add(edge[0])
                stack.append(edge[0])
    return seen


class Reducer:
    """Averages the gradients of ``params`` over the ranks during backward."""

    def __init__(self, params: list[Tensor], names: list[str], cap_bytes: int,
                 find_unused: bool) -> None:
        self.params, self.names, self.find_unused = params, names, find_unused
        self.buckets = [_Bucket(b, [params[i] for i in members])
                        for b, members in enumerate(make_buckets(params, cap_bytes))]
        index = {id(p): i for i, p in enumerate(params)}
        self.where: dict[int, tuple[int, int]] = {}
        for bucket in self.buckets:
            for k, p in enumerate(bucket.params):
                self.where[index[id(p)]] = (bucket.index, k)
        self.default_hook: CommHook = default_hooks.allreduce_hook
        self.comm_hook: CommHook = self.default_hook
        self.comm_state: Any = None
        self.hooks = [grad_hooks.install(p, self._callback(i)) for i, p in enumerate(params)]
        self.armed = False
        self.iterations = 0
        self._reset()

    def _callback(self, i: int) -> Callable[[Tensor], Tensor | None]:
        return lambda grad: self.on_gradient(i, grad)

    def _reset(self) -> None:
        self.ready = [False] * len(self.params)
        self.used = np.zeros(len(self.params), np.uint8)
        for bucket in self.buckets:
            bucket.pending, bucket.future = len(bucket.params), None
        self.next_bucket = 0

    # ---- one iteration ----------------------------------------------------------------
    def prepare(self) -> None:
        """Arm for the backward of the forward about to run."""
        if self.armed and any(self.ready):
            missing = [self.names[i] for i, r in enumerate(self.ready) if not r]
            raise RuntimeError(
                "DistributedDataParallel: expected to have finished reduction in the prior "
                "iteration before starting a new one: these parameters got no gradient in "
                f"the last backward: {', '.join(missing)}. If the model does not use all "
                "its parameters in every forward, pass find_unused_parameters=True "
                "(every rank must run forward and backward the same number of times).")
        for i, p in enumerate(self.params):
            b, _ = self.where[i]
            bucket = self.buckets[b].tensor
            if p._device is not bucket._device or p._data.dtype != bucket.dtype:
                raise RuntimeError(
                    f"DistributedDataParallel: parameter {self.names[i]} is now {p.dtype} on "
                    f"{p.device}, but was {bucket.dtype} on {bucket.device} when the module "
                    "was wrapped; move or cast the module before wrapping it")
        self._reset()
        self.armed = True
        self.iterations += 1

    def mark_unused(self, outputs: Any) -> None:
        """find_unused_parameters: parameters outside the output's graph are ready now."""
        reached = reachable_nodes(outputs)
        for i, hook in enumerate(self.hooks):
            if hook not in reached:
                self._fill(i, None)
        if self.next_bucket == len(self.buckets):  # no parameter is in the graph at all
            self._finish(-1)

    def on_gradient(self, i: int, grad: Tensor) -> Tensor | None:
        """GradHook's callback: what AccumulateGrad adds to ``params[i].grad``."""
        if not self.armed:
            return grad  # no_sync(), eval without grad sync, or a second backward
        if self.ready[i]:
            raise RuntimeError(
                f"DistributedDataParallel: parameter {self.names[i]} got a gradient twice in "
                "one iteration (a second backward through the same forward?); run forward "
                "again, or accumulate under no_sync()")
        self.used[i] = 1
        self._fill(i, grad)
        if self.next_bucket == len(self.buckets):
            return self._finish(i)
        self._progress()
        return grad

    def _fill(self, i: int, grad: Tensor | None) -> None:
        b, k = self.where[i]
        bucket = self.buckets[b]
        slot = bucket.slot(k)
        previous = self.params[i].grad
        if grad is None:
            slot[...] = 0
        else:
            slot[...] = grad._data
        if previous is not None:
            slot += previous._data
        self.ready[i] = True
        bucket.pending -= 1
        while self.next_bucket < len(self.buckets) and \
                self.buckets[self.next_bucket].pending == 0:
            self._launch(self.buckets[self.next_bucket])
            self.next_bucket += 1

    def _launch(self, bucket: _Bucket) -> None:
        grad_bucket = GradBucket(bucket.index, bucket.tensor, bucket.params,
                                 [int(o) for o in bucket.offsets],
                                 bucket.index == len(self.buckets) - 1)
        bucket.future = self.comm_hook(self.comm_state, grad_bucket)

    def _progress(self) -> None:
        for bucket in self.buckets[:self.next_bucket]:
            if not bucket.future.done():
                return  # test the oldest one in flight only: one MPI call per gradient

    def _finish(self, current: int) -> Tensor | None:
        """Wait for every bucket; write the averages into ``.grad``; what the current
        parameter's AccumulateGrad should add (its own ``.grad`` is not written yet)."""
        self.armed = False
        for bucket in self.buckets:
            result = bucket.future.wait()
            if result is not bucket.tensor:
                bucket.tensor._data[...] = result._data
        used = self._globally_used()
        passed: Tensor | None = None
        for i, p in enumerate(self.params):
            if not used[i]:
                continue
            b, k = self.where[i]
            mean = self.buckets[b].slot(k)
            if i == current and p.grad is None:
                passed = Tensor._make(mean, p._device)  # AccumulateGrad copies it in
            elif p.grad is None:
                average = Tensor._make(mean, p._device)
                # an optimizer's gradient slot takes it (its one-launch step stays in use);
                # else a copy: the bucket is reused by the next backward
                if p._grad_slot is None or not p._grad_slot.receive(p, average):
                    p.grad = Tensor._make(mean.copy(), p._device)
            else:
                p.grad._data[...] = mean
        return passed

    def _globally_used(self) -> np.ndarray:
        if not self.find_unused:
            return np.ones(len(self.params), np.uint8)
        used = Tensor._make(self.used.copy(), Device("cpu"))
        all_reduce(used, ReduceOp.MAX)
        return used._data


def coalesced_broadcast(tensors: list[Tensor], src: int = 0) -> None:
    """Broadcast ``tensors`` from ``src`` in place, one collective per (device, dtype)."""
    groups: dict[tuple, list[Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    for members in groups.values():
        dev = members[0]._device
        flat = dev.xp.concatenate([t._data.reshape(-1) for t in members])
        carrier = Tensor._make(flat, dev)
        broadcast(carrier, src)
        start = 0
        for t in members:
            n = t.numel()
            t._data[...] = flat[start:start + n].reshape(t.shape)
            start += n


def check_same_model(signature: list[tuple[str, tuple[int, ...], str]]) -> None:
    """Raise on every rank unless all ranks wrap models of the same parameter names, shapes
    and dtypes (one all-reduce of a checksum and its negation: max and -min)."""
    crc = zlib.crc32(repr(signature).encode())
    both = Tensor._make(np.array([crc, -crc], np.int64), Device("cpu"))
    all_reduce(both, ReduceOp.MAX)
    if int(both._data[0]) != crc or -int(both._data[1]) != crc:
        raise RuntimeError(
            f"DistributedDataParallel: the ranks wrap different models ({get_world_size()} "
            "ranks; parameter names, shapes or dtypes differ): every rank must build the same "
            "model before wrapping it")

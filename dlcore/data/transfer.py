"""Moving collated batches onto the DataLoader's target device.

A transfer has two halves so that copies overlap the model's compute:

* ``prepare(batch)`` runs in a loader thread and starts the copy;
* ``deliver(staged)`` runs in the consumer's thread just before the batch is handed out,
  and makes the consumer's work wait for the copy (on the GPU without blocking the host).

On ``cuda`` (:class:`CudaTransfer`) each array is staged in pinned (page-locked) host
memory, because only copies from pinned memory are truly asynchronous, then copied on a
separate non-blocking stream; an event recorded after the copies is what the consumer's
stream waits on. Streams, events and pinned buffers come from the :class:`~dlcore.Device`
(through its array module, so tests drive the same code with a fake CuPy on machines without
a GPU).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

from ..device import Device
from ..tensor import Tensor


class Staged(NamedTuple):
    """A batch whose copy has been started: ``ready`` is the event that marks the copy's
    end (``None`` when there is nothing to wait for); ``keepalive`` holds the pinned
    buffers the copy reads, which must outlive it."""

    batch: Any
    ready: Any
    keepalive: tuple


def map_tensors(batch: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """``batch`` with ``fn`` applied to every Tensor leaf (through dicts, lists, tuples)."""
    if isinstance(batch, Tensor):
        return fn(batch)
    if isinstance(batch, Mapping):
        return {key: map_tensors(value, fn) for key, value in batch.items()}
    if isinstance(batch, tuple):
        items = [map_tensors(value, fn) for value in batch]
        return type(batch)(*items) if hasattr(batch, "_fields") else tuple(items)
    if isinstance(batch, list):
        return [map_tensors(value, fn) for value in batch]
    return batch


class HostTransfer:
    """To ``cpu`` or ``emu``: both hold NumPy arrays, so a host batch changes device by
    relabelling, without a copy."""

    def __init__(self, device: Device) -> None:
        self.device = device

    def prepare(self, batch: Any) -> Staged:
        return Staged(map_tensors(batch, self._move), None, ())

    def _move(self, t: Tensor) -> Tensor:
        if t.device is self.device:
            return t
        if t.device.is_cuda:
            return t.to(self.device)
        return Tensor._make(t._data, self.device)

    def deliver(self, staged: Staged) -> Any:
        return staged.batch


class CudaTransfer:
    """To ``cuda:i`` through pinned memory and a side stream (see the module docstring).

    Create it in the consumer's thread: the stream current there is the one that waits.
    """

    def __init__(self, device: Device) -> None:
        self.device = device
        self.stream = device.new_stream()
        self.consumer_stream = device.current_stream()
        self._in_flight: deque[Staged] = deque()

    def prepare(self, batch: Any) -> Staged:
        device = self.device
        copies: list[tuple[Any, np.ndarray]] = []

        def stage(t: Tensor) -> Tensor:
            if t.device.is_cuda:
                return t.to(device)
            host = np.ascontiguousarray(t._data)
            pinned = device.pinned_empty(host.shape, host.dtype)
            pinned[...] = host
            target = device.xp.empty(host.shape, host.dtype)
            copies.append((target, pinned))
            return Tensor._make(target, device)

        with device:
            out = map_tensors(batch, stage)
            # NOTE: the targets may reuse memory the consumer freed while its kernels still
            # read it (CuPy's pool recycles at free time on the host). Ordering the copies
            # after everything queued on the consumer's stream so far makes that safe.
            ready = device.new_event()
            ready.record(self.consumer_stream)
            self.stream.wait_event(ready)
            for target, pinned in copies:
                target.set(pinned, stream=self.stream)
            done = device.new_event()
            done.record(self.stream)
        return Staged(out, done, tuple(pinned for _, pinned in copies))

    def deliver(self, staged: Staged) -> Any:
        self.device.current_stream().wait_event(staged.ready)
        # Pinned buffers go back to CuPy's pool when freed, and the pool does not know a
        # copy may still read them: hold each batch's buffers until its event has fired.
        while self._in_flight and self._in_flight[0].ready.done:
            self._in_flight.popleft()
        self._in_flight.append(staged)
        return staged.batch


def make_transfer(device: Device | None) -> HostTransfer | CudaTransfer | None:
    """The transfer to ``device`` (``None``: batches stay where collation put them)."""
    if device is None:
        return None
    if device.is_cuda:
        return CudaTransfer(device)  # its first use of CuPy raises a clear error without one
    return HostTransfer(device)

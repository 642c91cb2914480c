"""DistributedDataParallel: one model replica per rank, gradients averaged during backward.

What wrapping does, as PyTorch's DDP: it checks that every rank wraps the same model, copies
rank 0's parameters and buffers to every rank (so ranks may initialise differently), and
arranges that each ``loss.backward()`` leaves the *average over the ranks* of the gradients
in every parameter's ``.grad`` (the reducer: :mod:`.reducer`). With the loss a mean over each
rank's part of the batch and equal parts, that is the gradient of the whole batch, so every
rank's optimizer takes the same step as one process on the whole batch would.

Global batch and learning rate: a global batch of B is ``B / world_size`` samples per rank
(with :class:`dlcore.data.DistributedSampler`); keep the learning rate of a one-process run
with batch B. Scaling the global batch with the world size instead (each rank keeps B) is the
"linear scaling rule": multiply the learning rate by the world size, with a warm-up.

State dicts: the wrapped module is the child ``module``, so ``ddp.state_dict()`` keys start
with ``"module."``, exactly as in PyTorch; save ``ddp.module.state_dict()`` for a checkpoint
that loads into the bare model. Attributes the wrapper lacks are looked up on the wrapped
module (``ddp.fc`` is ``ddp.module.fc``; PyTorch would raise, so ported code is unaffected).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from ...autograd import is_grad_enabled
from ...distributed import default_group
from ..module import Module
from .reducer import CommHook, Reducer, check_same_model, coalesced_broadcast


class DistributedDataParallel(Module):
    """Data parallelism over the ranks of the default process group.

    ``bucket_cap_mb``: the largest gradient bucket, MiB (one all-reduce per bucket);
    ``broadcast_buffers``: copy rank 0's buffers (batch-norm statistics) to every rank at
    each training forward; ``find_unused_parameters``: allow forwards that leave some
    parameters out of the graph (costs a walk of the graph per forward and one small
    all-reduce per backward). ``device_ids`` and ``output_device`` are accepted for PyTorch's
    sake: the module's parameters must already be on this rank's device.

    >>> dist.init_process_group()
    >>> model = DistributedDataParallel(nn.Linear(4, 2))
    >>> model(dlcore.randn(8, 4)).sum().backward()     # .grad: the mean over the ranks
    """

    def __init__(self, module: Module, device_ids: list[Any] | None = None,
                 output_device: Any = None, broadcast_buffers: bool = True,
                 process_group: Any = None, bucket_cap_mb: float = 25,
                 find_unused_parameters: bool = False) -> None:
        super().__init__()
        if not isinstance(module, Module):
            raise TypeError(f"DistributedDataParallel: module must be a dlcore.nn.Module, got "
                            f"{type(module).__name__}")
        group = default_group()
        if process_group is not None and process_group is not group:
            raise ValueError("DistributedDataParallel: only the default process group exists")
        if not bucket_cap_mb > 0:
            raise ValueError(f"DistributedDataParallel: bucket_cap_mb must be positive, got "
                             f"{bucket_cap_mb!r}")
        self._check_device_ids(module, device_ids)
        self.module = module
        self.device_ids, self.output_device = device_ids, output_device
        self.broadcast_buffers = broadcast_buffers
        self.find_unused_parameters = find_unused_parameters
        self.bucket_cap_mb = bucket_cap_mb
        self.require_backward_grad_sync = True
        self.world_size = group.world_size
        named = [(n, p) for n, p in module.named_parameters()]
        check_same_model([(n, tuple(p.shape), str(p.dtype)) for n, p in named] +
                         [(n, tuple(b.shape), str(b.dtype)) for n, b in module.named_buffers()])
        coalesced_broadcast([p for _, p in named] + list(module.buffers()))
        trained = [(n, p) for n, p in named if p.requires_grad]
        self.reducer = Reducer([p for _, p in trained], [n for n, _ in trained],
                               int(bucket_cap_mb * (1 << 20)), find_unused_parameters) \
            if trained else None

    @staticmethod
    def _check_device_ids(module: Module, device_ids: list[Any] | None) -> None:
        if device_ids is None:
            return
        if len(device_ids) != 1:
            raise ValueError(f"DistributedDataParallel: device_ids must name one device (one "
                             f"device per process), got {device_ids!r}")
        devices = {p.device for p in module.parameters()}
        if len(devices) > 1:
            raise ValueError(f"DistributedDataParallel: the module's parameters are on "
                             f"several devices ({sorted(map(str, devices))}); one per rank")

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            module = self.__dict__.get("_modules", {}).get("module")
            if module is None:
                raise
            return getattr(module, name)

    def forward(self, *inputs: Any, **kwargs: Any) -> Any:
        reducer = self.reducer
        sync = reducer is not None and is_grad_enabled() and self.require_backward_grad_sync
        if sync:
            assert reducer is not None
            reducer.prepare()
        if self.broadcast_buffers and self.training and self.world_size > 1:
            buffers = list(self.module.buffers())
            if buffers:
                coalesced_broadcast(buffers)
        out = self.module(*inputs, **kwargs)
        if sync and self.find_unused_parameters:
            assert reducer is not None
            reducer.mark_unused(out)
        return out

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """Forwards inside accumulate gradients locally, without communication; the first
        forward and backward after the block average the sum of all of them.

        >>> with model.no_sync():
        ...     model(x1).sum().backward()
        >>> model(x2).sum().backward()     # .grad: mean over ranks of (g1 + g2)
        """
        previous = self.require_backward_grad_sync
        self.require_backward_grad_sync = False
        try:
            yield
        finally:
            self.require_backward_grad_sync = previous

    def register_comm_hook(self, state: Any, hook: CommHook) -> None:
        """Reduce each gradient bucket with ``hook(state, bucket) -> Future`` instead of the
        default all-reduce (e.g. ``default_hooks.fp16_compress_hook``); once, before the
        first forward."""
        if not callable(hook):
            raise TypeError("register_comm_hook: hook must be callable")
        if self.reducer is None:
            return
        if self.reducer.iterations:
            raise RuntimeError("register_comm_hook: register the hook before the first forward")
        if self.reducer.comm_hook is not self.reducer.default_hook:
            raise RuntimeError("register_comm_hook: a communication hook is already registered")
        self.reducer.comm_hook, self.reducer.comm_state = hook, state

    def extra_repr(self) -> str:
        return f"world_size={self.world_size}, bucket_cap_mb={self.bucket_cap_mb}"

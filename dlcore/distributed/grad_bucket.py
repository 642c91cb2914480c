"""GradBucket: what a DistributedDataParallel communication hook is given (PyTorch's
``torch.distributed.GradBucket``): one flat buffer holding the gradients of a group of
parameters, in the order of :meth:`parameters`."""

from __future__ import annotations

from ..tensor import Tensor


class GradBucket:
    """One bucket of gradients, flat. A comm hook reduces :meth:`buffer` across the ranks and
    returns a Future whose value is a tensor of the buffer's shape (the averaged gradients);
    DistributedDataParallel copies that value into the parameters' ``.grad``."""

    def __init__(self, index: int, buffer: Tensor, parameters: list[Tensor],
                 offsets: list[int], last: bool) -> None:
        self._index, self._buffer, self._parameters = index, buffer, parameters
        self._offsets, self._last = offsets, last

    def index(self) -> int:
        return self._index

    def buffer(self) -> Tensor:
        """The flat gradients (a 1-d tensor; writing it changes what DDP averages)."""
        return self._buffer

    def parameters(self) -> list[Tensor]:
        return list(self._parameters)

    def gradients(self) -> list[Tensor]:
        """Each parameter's part of the buffer, shaped like the parameter (views)."""
        return [self._buffer[start:start + p.numel()].view(*p.shape)
                for p, start in zip(self._parameters, self._offsets)]

    def is_last(self) -> bool:
        """Whether this is the last bucket reduced in an iteration."""
        return self._last

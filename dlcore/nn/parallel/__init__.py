"""``dlcore.nn.parallel``: :class:`DistributedDataParallel` (PyTorch's name and arguments) over
:mod:`dlcore.distributed`."""

from .distributed import DistributedDataParallel

DDP = DistributedDataParallel

__all__ = ["DDP", "DistributedDataParallel"]

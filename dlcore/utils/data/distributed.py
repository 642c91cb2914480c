"""``dlcore.utils.data.distributed``: PyTorch's ``torch.utils.data.distributed`` path of
:class:`~dlcore.data.DistributedSampler`."""

from ...data.distributed import DistributedSampler

__all__ = ["DistributedSampler"]

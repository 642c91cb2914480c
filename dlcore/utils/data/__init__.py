"""``dlcore.utils.data`` is :mod:`dlcore.data` under PyTorch's name, so
``from torch.utils.data import DataLoader, TensorDataset`` ports by changing ``torch`` to
``dlcore``; ``dlcore.utils.data.distributed.DistributedSampler`` is there too, as in torch."""

from ...data import *  # noqa: F403
from ...data import __all__  # noqa: F401
from . import distributed  # noqa: E402  -- torch.utils.data.distributed

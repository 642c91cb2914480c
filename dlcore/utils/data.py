"""``dlcore.utils.data`` is :mod:`dlcore.data` under PyTorch's name, so
``from torch.utils.data import DataLoader, TensorDataset`` ports by changing ``torch`` to
``dlcore``."""

from ..data import *  # noqa: F403
from ..data import __all__  # noqa: F401

"""``dlcore.utils``: PyTorch's ``torch.utils`` names that ported programs import."""

from . import data

__all__ = ["data"]

"""``dlcore.backends``: PyTorch's backend switches, so ported code that sets them runs."""

from . import cudnn

__all__ = ["cudnn"]

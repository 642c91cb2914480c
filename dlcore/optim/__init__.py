"""Optimizers and learning-rate schedulers (``torch.optim``'s names and semantics).

Each optimizer updates a whole parameter group in one pass: NumPy array operations over a
flat buffer on the CPU, one fused kernel (``kernels/optim.cu``) on ``cuda`` and ``emu``.
"""

from . import lr_scheduler
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .optimizer import Optimizer
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = ["Adagrad", "Adam", "AdamW", "Optimizer", "RMSprop", "SGD", "lr_scheduler"]

"""Optimizers and learning-rate schedulers (``torch.optim``'s names and semantics).

Each optimizer updates a whole parameter group in one pass over its flat buffer: SGD, Adam,
AdamW, RMSprop and Adagrad with NumPy array operations on the CPU and one fused kernel
(``kernels/optim.cu``) on ``cuda`` and ``emu``; Adadelta, NAdam and RAdam with array
operations everywhere (no fused kernel until a benchmark shows one pays); LBFGS over all
parameters as one vector, with a closure, as PyTorch's.
"""

from . import lr_scheduler
from .adadelta import Adadelta
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .lbfgs import LBFGS
from .nadam import NAdam
from .optimizer import Optimizer
from .radam import RAdam
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = ["Adadelta", "Adagrad", "Adam", "AdamW", "LBFGS", "NAdam", "Optimizer", "RAdam",
           "RMSprop", "SGD", "lr_scheduler"]

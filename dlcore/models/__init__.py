"""Reference models: plain :class:`dlcore.nn.Module` subclasses, short enough to read and
copy, used by ``dlcore train`` and ``dlcore bench``.

>>> from dlcore.models import LeNet
>>> LeNet()(dlcore.zeros(1, 1, 8, 8)).shape
(1, 10)
"""

from .gan import DCGANDiscriminator, DCGANGenerator, MLPDiscriminator, MLPGenerator
from .lenet import LeNet
from .resnet import BasicBlock, ResNet
from .rnn import GRUClassifier, LSTMClassifier, SequenceRegressor

__all__ = ["BasicBlock", "DCGANDiscriminator", "DCGANGenerator", "GRUClassifier", "LeNet",
           "LSTMClassifier", "MLPDiscriminator", "MLPGenerator", "ResNet", "SequenceRegressor"]

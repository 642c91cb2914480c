"""A small ResNet for 3-channel 32x32 images (CIFAR-sized), used by the benchmark suite.

Shape letters: N batch, C channels, H and W height and width.

The CIFAR ResNets of He et al. (2016, section 4.2): a 3x3 stem, three stages of basic
blocks at widths ``w, 2w, 4w`` (each later stage halves H and W with a stride-2 first
block), global average pooling and a linear classifier. ``blocks=(1, 1, 1)`` is an
8-layer net (ResNet-8), small enough to time a training step on a CPU; ``(3, 3, 3)`` is
ResNet-20. Shortcuts that change shape use a 1x1 stride-2 convolution with BatchNorm
(option B of the paper), the form torchvision uses.
"""

from __future__ import annotations

from .. import nn
from ..tensor import Tensor


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus the input: ``relu(bn(conv(relu(bn(conv(x))))) + x)``.

    >>> BasicBlock(16, 32, stride=2)(dlcore.zeros(2, 16, 8, 8)).shape
    (2, 32, 4, 4)
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        # Convolutions feeding a BatchNorm need no bias: the norm's shift replaces it.
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(self.conv1(x)).relu()
        out = self.bn2(self.conv2(out))
        return (out + self.shortcut(x)).relu()


class ResNet(nn.Module):
    """``(N, in_channels, H, W) -> (N, num_classes)`` logits (any H, W >= 4; sized for 32).

    >>> ResNet()(dlcore.zeros(2, 3, 32, 32)).shape
    (2, 10)
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 16,
                 blocks: tuple[int, int, int] = (1, 1, 1)) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        stages: list[nn.Module] = []
        channels = width
        for i, count in enumerate(blocks):
            out = width * 2 ** i
            for j in range(count):
                stages.append(BasicBlock(channels, out, stride=2 if i > 0 and j == 0 else 1))
                channels = out
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.stages(self.stem(x))).flatten(1))

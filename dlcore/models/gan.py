"""GAN pairs: MLPs for 2-D points (the ring of Gaussians) and a DCGAN pair for 8x8 images.

Shape letters: N batch, Z noise size, C channels, H and W height and width.

Discriminators return one logit per sample (no sigmoid): train them with
``F.binary_cross_entropy_with_logits``, which is stable where ``log(sigmoid(x))`` is not.

``MLPDiscriminator(pack=k)`` is PacGAN's discriminator (Lin et al., 2018): it judges ``k``
samples at once, concatenated, so a generator that puts every sample on the same few
modes produces packs that look unlike real ones. ``pack=1`` is the plain GAN.
"""

from __future__ import annotations

from .. import nn
from ..tensor import Tensor


class MLPGenerator(nn.Module):
    """``(N, noise_dim) -> (N, out_features)`` points through ReLU hidden layers.

    >>> MLPGenerator()(dlcore.zeros(5, 2)).shape
    (5, 2)
    """

    def __init__(self, noise_dim: int = 2, out_features: int = 2, hidden: int = 128,
                 layers: int = 2) -> None:
        super().__init__()
        self.noise_dim = noise_dim
        body: list[nn.Module] = []
        width = noise_dim
        for _ in range(layers):
            body += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.net = nn.Sequential(*body, nn.Linear(width, out_features))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class MLPDiscriminator(nn.Module):
    """``(N, in_features) -> (N / pack, 1)`` logits; N must be a multiple of ``pack``:
    consecutive groups of ``pack`` samples are judged together.

    LeakyReLU rather than ReLU keeps gradients flowing to the generator from regions the
    discriminator has ruled fake (the DCGAN recipe).

    >>> MLPDiscriminator(pack=2)(dlcore.zeros(6, 2)).shape
    (3, 1)
    """

    def __init__(self, in_features: int = 2, hidden: int = 128, layers: int = 2,
                 pack: int = 1) -> None:
        super().__init__()
        self.in_features, self.pack = in_features, pack
        body: list[nn.Module] = []
        width = in_features * pack
        for _ in range(layers):
            body += [nn.Linear(width, hidden), nn.LeakyReLU(0.2)]
            width = hidden
        self.net = nn.Sequential(*body, nn.Linear(width, 1))

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[0] % self.pack:
            raise ValueError(f"MLPDiscriminator: batch of {x.shape[0]} samples is not a "
                             f"multiple of pack={self.pack}")
        return self.net(x.reshape(x.shape[0] // self.pack, self.in_features * self.pack))


class DCGANGenerator(nn.Module):
    """``(N, noise_dim) -> (N, channels, 8, 8)`` images in [0, 1].

    A linear layer makes a ``(4w, 2, 2)`` map; two stride-2 ConvTranspose2d layers (kernel
    4, padding 1: each exactly doubles H and W without the checkerboard of kernel 3) give
    4x4 then 8x8, with BatchNorm and ReLU between, as in DCGAN (Radford et al., 2016).
    The output is a sigmoid because the digits' pixels lie in [0, 1].

    >>> DCGANGenerator()(dlcore.zeros(3, 16)).shape
    (3, 1, 8, 8)
    """

    def __init__(self, noise_dim: int = 16, channels: int = 1, width: int = 32) -> None:
        super().__init__()
        self.noise_dim = noise_dim
        self.project = nn.Sequential(nn.Linear(noise_dim, 4 * width * 2 * 2),
                                     nn.BatchNorm1d(4 * width * 2 * 2), nn.ReLU(),
                                     nn.Unflatten(1, (4 * width, 2, 2)))
        self.upsample = nn.Sequential(
            nn.ConvTranspose2d(4 * width, 2 * width, 4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.ConvTranspose2d(2 * width, channels, 4, stride=2, padding=1), nn.Sigmoid())

    def forward(self, z: Tensor) -> Tensor:
        return self.upsample(self.project(z))


class DCGANDiscriminator(nn.Module):
    """``(N, channels, 8, 8) -> (N, 1)`` logits: two stride-2 convolutions (8 -> 4 -> 2)
    with LeakyReLU, then a linear layer. No BatchNorm: real and fake batches are judged in
    separate calls, so batch statistics would differ between them and hand the
    discriminator a shortcut; two layers train stably without it.

    >>> DCGANDiscriminator()(dlcore.zeros(3, 1, 8, 8)).shape
    (3, 1)
    """

    def __init__(self, channels: int = 1, width: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Flatten(), nn.Linear(2 * width * 2 * 2, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

"""The reference models: output shapes, parameter names, and a few training steps that
lower the loss on a fixed batch (the models can learn, gradients reach every parameter)."""

from __future__ import annotations

import numpy as np
import pytest

import dlcore
from dlcore import models, optim
from dlcore.data import datasets
from dlcore.nn import functional as F


def _fit_batch(model: dlcore.nn.Module, x: dlcore.Tensor, y: dlcore.Tensor, loss_fn,
               steps: int = 15, lr: float = 1e-2) -> tuple[float, float]:
    """Loss before and after ``steps`` Adam steps on one batch."""
    opt = optim.Adam(model.parameters(), lr=lr)
    first = last = None
    for _ in range(steps):
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
        last = loss.item()
    return first, last


@pytest.fixture(autouse=True)
def _seed() -> None:
    dlcore.manual_seed(0)


def test_lenet_shapes_and_learning() -> None:
    train, _ = datasets.digits()
    x, y = (t[:64] for t in train.tensors)
    model = models.LeNet()
    assert model(x).shape == (64, 10)
    first, last = _fit_batch(model, x, y, F.cross_entropy)
    assert last < 0.5 * first
    assert all(p.grad is not None for p in model.parameters())


def test_lenet_rejects_sizes_it_cannot_pool() -> None:
    with pytest.raises(ValueError, match="divisible by 4"):
        models.LeNet(image_size=10)


def test_resnet_shapes_blocks_and_learning() -> None:
    model = models.ResNet(width=4)
    x = dlcore.randn(4, 3, 32, 32)
    assert model(x).shape == (4, 10)
    assert models.ResNet(blocks=(3, 3, 3))(dlcore.randn(1, 3, 8, 8)).shape == (1, 10)
    block = models.BasicBlock(4, 8, stride=2)
    assert block(dlcore.randn(2, 4, 8, 8)).shape == (2, 8, 4, 4)
    assert any("running_mean" in name for name, _ in model.named_buffers())
    first, last = _fit_batch(model, x, dlcore.tensor([0, 1, 2, 3]), F.cross_entropy,
                             steps=8)
    assert last < first


@pytest.mark.parametrize("cls", [models.LSTMClassifier, models.GRUClassifier])
def test_sequence_classifiers(cls: type) -> None:
    train, _ = datasets.digit_rows()
    x, y = (t[:32] for t in train.tensors)
    model = cls(8, 10, hidden_size=32, num_layers=2, dropout=0.1)
    assert model(x).shape == (32, 10)
    first, last = _fit_batch(model, x, y, F.cross_entropy, steps=25)
    assert last < 0.5 * first


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
def test_sequence_regressor(cell: str) -> None:
    x, y = datasets.adding_problem(32, seq_len=10).tensors
    model = models.SequenceRegressor(2, hidden_size=16, cell=cell)
    assert model(x).shape == (32, 1)
    first, last = _fit_batch(model, x, y, F.mse_loss)
    assert last < first


def test_sequence_regressor_rejects_unknown_cell() -> None:
    with pytest.raises(ValueError, match="cell must be one of"):
        models.SequenceRegressor(2, cell="transformer")


def test_mlp_gan_pair_and_packing() -> None:
    gen, disc = models.MLPGenerator(), models.MLPDiscriminator(pack=2)
    points = gen(dlcore.randn(6, 2))
    assert points.shape == (6, 2)
    assert disc(points).shape == (3, 1)
    # Packing judges consecutive pairs: the first logit depends on samples 0 and 1 only.
    moved = points.detach().numpy().copy()
    moved[2:] += 1.0
    assert np.allclose(disc(dlcore.from_numpy(moved)).detach().numpy()[0],
                       disc(points).detach().numpy()[0])
    with pytest.raises(ValueError, match="multiple of pack=2"):
        disc(dlcore.randn(5, 2))


def test_dcgan_pair_shapes_range_and_learning() -> None:
    gen, disc = models.DCGANGenerator(noise_dim=8, width=8), models.DCGANDiscriminator(width=8)
    images = gen(dlcore.randn(4, 8))
    assert images.shape == (4, 1, 8, 8)
    values = images.detach().numpy()
    assert values.min() >= 0.0 and values.max() <= 1.0
    assert disc(images).shape == (4, 1)
    real = datasets.digits()[0].tensors[0][:16]
    target = dlcore.ones(16, 1)
    first, last = _fit_batch(disc, real, target, F.binary_cross_entropy_with_logits, steps=5)
    assert last < first

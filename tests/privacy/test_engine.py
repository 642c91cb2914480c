"""PrivacyEngine, DPOptimizer and the Poisson loader: clipping, noise, sampling rate,
accounting, and the Opacus-style loop (forward, loss.backward(), step)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import dlcore
from dlcore import nn, optim
from dlcore.data import DataLoader, TensorDataset
from dlcore.nn import functional as F
from dlcore.privacy import (DPOptimizer, GradSampleModule, PoissonBatchSampler, PrivacyEngine,
                            per_sample_gradients, rdp_epsilon)


def _data(n: int = 40) -> TensorDataset:
    g = np.random.default_rng(0)
    return TensorDataset(dlcore.tensor(g.standard_normal((n, 4))),
                         dlcore.tensor(g.integers(0, 3, n)))


def test_recorded_gradients_equal_per_sample_gradients() -> None:
    """The training-loop path (hooks, retain_grad, the loop's own backward) gives what the
    functional one does, for every layer of a CNN (a regression: retain_grad after the
    forward reached only the last layer)."""
    from dlcore.train.private import PrivateCNN

    dlcore.manual_seed(0)
    model = PrivateCNN((4, 6), 2).double()
    x, y = dlcore.randn(6, 1, 8, 8).double(), dlcore.randint(0, 10, (6,))
    want = per_sample_gradients(model, lambda o, t: F.cross_entropy(o, t, reduction="sum"),
                                x, y)
    gsm = GradSampleModule(model)
    F.cross_entropy(gsm(x), y).backward()
    got = gsm.grad_samples()
    for name in want:
        np.testing.assert_allclose(got[name].numpy(), want[name].numpy(), atol=1e-13)
    gsm.remove_hooks()


def _dp(model: nn.Module, noise: float, clip: float, expected: float
        ) -> tuple[GradSampleModule, DPOptimizer]:
    gsm = GradSampleModule(model, loss_reduction="sum")
    opt = DPOptimizer(optim.SGD(model.parameters(), lr=0.0), module=gsm,
                      noise_multiplier=noise, max_grad_norm=clip, expected_batch_size=expected,
                      loss_reduction="sum")
    return gsm, opt


def test_clipping_bounds_every_norm_and_keeps_small_ones() -> None:
    dlcore.manual_seed(1)
    model = nn.Linear(4, 3).double()
    x, y = dlcore.randn(8, 4).double() * 5, dlcore.randint(0, 3, (8,))
    gsm, opt = _dp(model, 0.0, 1.0, 1.0)
    F.cross_entropy(gsm(x), y, reduction="sum").backward()
    samples = gsm.grad_samples()
    norms = np.sqrt(sum((g.numpy().reshape(8, -1) ** 2).sum(1) for g in samples.values()))
    clip = float(np.median(norms))  # half the samples above it, half below
    opt.max_grad_norm = clip
    summed = opt.clipped_sum(samples)
    factor = np.minimum(clip / (norms + 1e-6), 1.0)
    for name, g in samples.items():
        clipped = g.numpy() * factor.reshape(-1, *[1] * (g.ndim - 1))
        np.testing.assert_allclose(summed[name], clipped.sum(0), atol=1e-12)
    clipped_norms = norms * factor
    assert (clipped_norms <= clip + 1e-9).all()
    below = norms < clip
    assert below.any() and (~below).any()
    np.testing.assert_allclose(clipped_norms[below], norms[below], rtol=1e-5)  # 1e-6 slack
    np.testing.assert_allclose(opt.per_sample_norms.numpy(), norms, rtol=1e-12)


def test_noise_has_the_stated_std_and_zero_mean() -> None:
    """With no data signal (zero per-sample gradients), the step's gradient is the noise
    over the expected batch size: over 20 steps of a 10x50 weight (10,000 draws), the
    sample std is within 3% of sigma*C/B (its standard error is 0.7%) and the mean within
    4 standard errors of 0."""
    dlcore.manual_seed(2)
    model = nn.Linear(50, 10, bias=False).double()
    sigma, clip, expected = 1.3, 0.7, 16.0
    gsm, opt = _dp(model, sigma, clip, expected)
    opt.loss_reduction = "mean"
    draws = []
    for _ in range(20):
        opt.zero_grad()
        opt.step()  # no forward: an empty batch, noise alone
        draws.append(model.weight.grad.numpy().ravel())
    noise = np.concatenate(draws)
    std = sigma * clip / expected
    assert abs(noise.std() / std - 1) < 0.03
    assert abs(noise.mean()) < 4 * std / math.sqrt(noise.size)


def test_poisson_sampling_rate_and_empty_batches() -> None:
    """Each index is drawn independently with probability q: the mean batch size over many
    batches is q*N within 4 standard errors, and an index's inclusion frequency is q."""
    n, q = 200, 0.05
    sampler = PoissonBatchSampler(n, q, generator=0)
    assert len(sampler) == 20
    sizes, counts = [], np.zeros(n)
    for _ in range(50):  # 1,000 batches
        for batch in sampler:
            sizes.append(len(batch))
            counts[batch] += 1
    sizes_a = np.array(sizes)
    assert abs(sizes_a.mean() - q * n) < 4 * math.sqrt(n * q * (1 - q) / len(sizes))
    assert abs(counts.mean() / len(sizes) - q) < 1e-12 + 4 * math.sqrt(q / (len(sizes) * n))
    rare = PoissonBatchSampler(5, 0.01, generator=1)  # mostly empty batches
    assert any(len(b) == 0 for b in rare)


def test_dp_loader_yields_empty_batches_with_the_right_shapes() -> None:
    ds = _data(5)
    engine = PrivacyEngine()
    model = nn.Linear(4, 3)
    _, _, loader = engine.make_private(module=model, optimizer=optim.SGD(model.parameters(),
                                                                         lr=0.1),
                                       data_loader=DataLoader(ds, batch_size=1),
                                       noise_multiplier=1.0, max_grad_norm=1.0, generator=3)
    shapes = {tuple(x.shape[1:]) for x, _ in loader}
    assert shapes == {(4,)}
    sizes = [len(y) for _ in range(10) for _, y in loader]
    assert 0 in sizes


def test_opacus_loop_trains_and_accounts() -> None:
    dlcore.manual_seed(4)
    ds = _data(64)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    opt = optim.SGD(model.parameters(), lr=0.1)
    engine = PrivacyEngine()
    model, opt, loader = engine.make_private(module=model, optimizer=opt,
                                             data_loader=DataLoader(ds, batch_size=16),
                                             noise_multiplier=1.0, max_grad_norm=1.0,
                                             generator=0)
    steps = 0
    for _ in range(2):
        for x, y in loader:
            opt.zero_grad()
            if len(y):
                F.cross_entropy(model(x.float()), y).backward()
            opt.step()
            steps += 1
    assert steps == 2 * 4
    assert math.isclose(engine.get_epsilon(1e-5),
                        rdp_epsilon(noise_multiplier=1.0, sample_rate=16 / 64, steps=steps,
                                    delta=1e-5))


def test_make_private_with_epsilon_lands_at_or_just_under_the_target() -> None:
    ds = _data(100)
    model = nn.Linear(4, 3)
    engine = PrivacyEngine()
    _, opt, loader = engine.make_private_with_epsilon(
        module=model, optimizer=optim.SGD(model.parameters(), lr=0.1),
        data_loader=DataLoader(ds, batch_size=10), target_epsilon=2.0, target_delta=1e-5,
        epochs=5, max_grad_norm=1.0)
    eps = rdp_epsilon(noise_multiplier=opt.noise_multiplier, sample_rate=0.1,
                      steps=5 * len(loader), delta=1e-5)
    assert 1.99 <= eps <= 2.0


def test_batchnorm_model_is_refused() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    with pytest.raises(NotImplementedError, match="BatchNorm1d"):
        PrivacyEngine().make_private(module=model, optimizer=optim.SGD(model.parameters(),
                                                                       lr=0.1),
                                     data_loader=DataLoader(_data(), batch_size=4),
                                     noise_multiplier=1.0, max_grad_norm=1.0)

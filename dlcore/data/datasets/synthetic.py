"""Synthetic datasets, generated from a seed: small, instant, and with known answers.

* :func:`ring`: a mixture of Gaussians on a circle, the classic GAN mode-collapse test;
* :func:`adding_problem`: the long-memory benchmark for recurrent networks (Hochreiter &
  Schmidhuber, 1997): sum the two marked values of a long sequence.
"""

from __future__ import annotations

import numpy as np

from ...creation import from_numpy
from ..dataset import TensorDataset


def ring(n: int, modes: int = 8, radius: float = 2.0, std: float = 0.02,
         seed: int = 0) -> TensorDataset:
    """``n`` points ``(n, 2)`` float32 drawn from ``modes`` Gaussians (std ``std``)
    evenly spaced on a circle of ``radius``, with each point's mode ``(n,)`` int64.

    A generator that covers all modes has learned the distribution; one that covers a few
    has collapsed, which the mode labels let a test count.

    >>> ring(100, seed=0).tensors[0].shape
    (100, 2)
    """
    if n < 0 or modes < 1:
        raise ValueError(f"ring: need n >= 0 and modes >= 1, got n={n}, modes={modes}")
    rng = np.random.Generator(np.random.PCG64(seed))
    mode = rng.integers(0, modes, size=n)
    angle = 2.0 * np.pi * mode / modes
    centres = radius * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    points = centres + std * rng.standard_normal((n, 2))
    return TensorDataset(from_numpy(points.astype(np.float32)), from_numpy(mode.astype(np.int64)))


def adding_problem(n: int, seq_len: int, seed: int = 0) -> TensorDataset:
    """``n`` sequences of the adding problem: inputs ``(n, T, 2)`` float32 (channel 0:
    values uniform in [0, 1]; channel 1: a marker, 1 at exactly two steps, one in each
    half of the sequence), targets ``(n, 1)`` float32, the sum of the two marked values.

    Predicting 1.0 always gives mean squared error about 1/6; beating that requires
    remembering a value across up to ``T`` steps.

    >>> x, y = adding_problem(4, seq_len=10)[0]
    >>> x.shape, y.shape
    ((10, 2), (1,))
    """
    if seq_len < 2:
        raise ValueError(f"adding_problem: seq_len must be >= 2, got {seq_len}")
    rng = np.random.Generator(np.random.PCG64(seed))
    values = rng.uniform(0.0, 1.0, size=(n, seq_len))
    half = seq_len // 2
    first = rng.integers(0, half, size=n)
    second = rng.integers(half, seq_len, size=n)
    markers = np.zeros((n, seq_len))
    rows = np.arange(n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    inputs = np.stack([values, markers], axis=2).astype(np.float32)
    targets = (values[rows, first] + values[rows, second])[:, None].astype(np.float32)
    return TensorDataset(from_numpy(inputs), from_numpy(targets))

"""The 8x8 handwritten digits that scikit-learn ships (1,797 images, 10 classes), with a
fixed train/test split, so examples and tests need no download.

Split (the same on every machine and run): images are ordered by a stratified
permutation (seed 0: each class's images shuffled, then classes interleaved in
proportion); the first 1,437 are the training set, the last 360 the test set, so both
hold every digit in about the same share (35 to 37 test images per class).
"""

from __future__ import annotations

import numpy as np

from ...creation import from_numpy
from ..dataset import TensorDataset

TRAIN_SIZE, TEST_SIZE = 1437, 360
SPLIT_SEED = 0


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Images ``(1797, 8, 8)`` float32 in [0, 1] and labels ``(1797,)`` int64, in
    scikit-learn's order."""
    try:
        from sklearn.datasets import load_digits  # optional extra
    except ImportError as exc:
        raise ImportError("dlcore.data.datasets.digits needs scikit-learn, which ships the "
                          "digits data: pip install dlcore[datasets]") from exc
    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)  # pixel values are 0..16
    return images, bunch.target.astype(np.int64)


def split_indices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices of the documented stratified split."""
    rng = np.random.Generator(np.random.PCG64(SPLIT_SEED))
    position = np.empty(len(labels))  # each image's place in its class, in [0, 1)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        position[rng.permutation(members)] = (np.arange(len(members)) + 0.5) / len(members)
    order = np.argsort(position, kind="stable")
    return order[:TRAIN_SIZE], order[TRAIN_SIZE:]


def digits() -> tuple[TensorDataset, TensorDataset]:
    """``(train, test)``: images ``(N, 1, 8, 8)`` float32 in [0, 1], labels ``(N,)``
    int64; N = 1,437 and 360 (split in the module docstring).

    >>> train, test = digits()
    >>> train.tensors[0].shape, len(test)
    ((1437, 1, 8, 8), 360)
    """
    images, labels = load_digits_arrays()
    train, test = split_indices(labels)
    return (TensorDataset(from_numpy(images[train, None]), from_numpy(labels[train])),
            TensorDataset(from_numpy(images[test, None]), from_numpy(labels[test])))


def digit_rows() -> tuple[TensorDataset, TensorDataset]:
    """The digits as sequences for recurrent models: each image is ``T = 8`` steps (its
    rows) of 8 features, ``(N, 8, 8)`` float32, with int64 labels; same split as
    :func:`digits`."""
    images, labels = load_digits_arrays()
    train, test = split_indices(labels)
    return (TensorDataset(from_numpy(images[train]), from_numpy(labels[train])),
            TensorDataset(from_numpy(images[test]), from_numpy(labels[test])))

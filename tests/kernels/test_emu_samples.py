"""The sample kernels on the emulator agree with NumPy, under several fiber orders."""

from __future__ import annotations

import numpy as np
import pytest

import kernel_samples as ks
from dlcore.device import Device

EMU = Device("emu")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 1000, 5000])
def test_block_sum_shared_memory(emu_seed: int, dtype: type, n: int) -> None:
    x = np.random.default_rng(n).standard_normal(n).astype(dtype)
    partial = ks.block_sum(EMU, x)
    np.testing.assert_allclose(partial.sum(), x.sum(dtype=np.float64), rtol=1e-5, atol=1e-5)


def test_warp_shuffle_block_sum(emu_seed: int) -> None:
    x = np.random.default_rng(0).standard_normal(3000).astype(np.float32)
    partial = ks.warp_block_sum(EMU, x)
    np.testing.assert_allclose(partial.sum(), x.sum(dtype=np.float64), rtol=1e-5, atol=1e-4)


def test_ballot_count_positive(emu_seed: int) -> None:
    x = np.random.default_rng(1).standard_normal(1234).astype(np.float32)
    assert ks.count_positive(EMU, x)[0] == int((x > 0).sum())


@pytest.mark.parametrize("shape", [(1, 1), (32, 32), (45, 70), (100, 33)])
def test_transpose_tiled_dynamic_shared(emu_seed: int, shape: tuple[int, int]) -> None:
    a = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    np.testing.assert_array_equal(ks.transpose(EMU, a), a.T)


def test_histogram_atomic_add(emu_seed: int) -> None:
    labels = np.random.default_rng(3).integers(0, 37, size=4000).astype(np.int32)
    np.testing.assert_array_equal(ks.histogram(EMU, labels, 37), np.bincount(labels, minlength=37))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scale_grid_stride(dtype: type) -> None:
    x = np.arange(2000, dtype=dtype)
    np.testing.assert_array_equal(ks.scale(EMU, x, 0.5), x * dtype(0.5))


def test_unchecked_mode_gives_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DLCORE_EMU_CHECK", "0")
    labels = np.random.default_rng(4).integers(0, 5, size=500).astype(np.int32)
    np.testing.assert_array_equal(ks.histogram(EMU, labels, 5), np.bincount(labels, minlength=5))

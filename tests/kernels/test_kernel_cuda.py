"""On a GPU, the sample kernels run through CuPy and agree with the emulator: bit for bit on
integers, within 1e-6 relative on floats. Skipped cleanly where no CUDA device is usable."""

from __future__ import annotations

import numpy as np
import pytest

import kernel_samples as ks
from dlcore.device import Device, device_count

pytestmark = pytest.mark.skipif(device_count() == 0, reason="no CUDA device")

EMU = Device("emu")


def _both(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    """Run ``fn`` on cuda (arrays copied over) and on emu; return both results as NumPy."""
    cuda = Device("cuda")
    on_gpu = [cuda.xp.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
    return cuda.xp.asnumpy(fn(cuda, *on_gpu, **kwargs)), fn(EMU, *args, **kwargs)


def test_float_kernels_agree() -> None:
    x = np.random.default_rng(0).standard_normal(5000).astype(np.float32)
    for fn in (ks.block_sum, ks.warp_block_sum):
        gpu, emu = _both(fn, x)
        np.testing.assert_allclose(gpu.sum(), emu.sum(), rtol=1e-6)
    gpu, emu = _both(ks.scale, x, alpha=0.5)
    np.testing.assert_allclose(gpu, emu, rtol=1e-6)
    a = x[:45 * 70].reshape(45, 70)
    gpu, emu = _both(ks.transpose, a)
    np.testing.assert_array_equal(gpu, emu)


def test_integer_kernels_agree() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 37, size=4000).astype(np.int32)
    gpu, emu = _both(ks.histogram, labels, 37)
    np.testing.assert_array_equal(gpu, emu)
    x = rng.standard_normal(1234).astype(np.float32)
    gpu, emu = _both(ks.count_positive, x)
    np.testing.assert_array_equal(gpu, emu)

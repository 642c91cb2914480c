"""Planted bugs (tests/kernels/cu/planted_bugs.cu) are caught with a clear message; their
correct twins in samples.cu pass under the same conditions."""

from __future__ import annotations

import numpy as np
import pytest

import kernel_samples as ks
from kernel_samples import PLANTED_BUGS, SEEDS
from dlcore.device import Device
from dlcore.kernels import KernelSource
from dlcore.kernels.emu import EmulatorError

EMU = Device("emu")
BUGS = PLANTED_BUGS


def _wrong_under_some_seed(monkeypatch: pytest.MonkeyPatch, name: str, x: np.ndarray) -> list[str]:
    """Run a buggy reduction under every seed; describe each seed where it disagrees with NumPy."""
    wrong = []
    for seed in SEEDS:
        monkeypatch.setenv("DLCORE_EMU_SEED", str(seed))
        got = ks.block_sum(EMU, x, blocks=4, source=BUGS, name=name).sum()
        if not np.isclose(got, x.sum(dtype=np.float64), rtol=1e-5):
            wrong.append(f"seed {seed}: {name} gave {got}, NumPy {x.sum()}")
    return wrong


def test_missing_barrier_gives_a_wrong_sum(monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.ones(1024, np.float32)
    assert _wrong_under_some_seed(monkeypatch, "block_sum_missing_barrier", x)


def test_uninitialised_shared_read_shows_as_nan(monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.ones(1000, np.float32)  # the last block has 24 threads past the end
    wrong = _wrong_under_some_seed(monkeypatch, "block_sum_uninitialised", x)
    assert len(wrong) == len(SEEDS) and all("nan" in w for w in wrong), wrong


def test_divergent_barrier_raises() -> None:
    # the first block to run is the seed's: block 0 with seed 0, another one with others
    with pytest.raises(EmulatorError, match=r"kernel block_sum_divergent_barrier: "
                       r"block \(\d+,0,0\): barrier divergence.*__syncthreads \(line \d+\)"
                       r".*DLCORE_EMU_SEED="):
        ks.block_sum(EMU, np.ones(1024, np.float32), source=BUGS,
                     name="block_sum_divergent_barrier")


def test_out_of_bounds_write_names_the_argument() -> None:
    x = np.ones(1000, np.float32)
    y = np.zeros_like(x)
    run = EMU.kernels.function(BUGS, "scale_out_of_bounds")
    with pytest.raises(EmulatorError, match=r"out-of-bounds write of argument 'y' \(#1, 1000 "
                       r"elements of 4 bytes\) by thread \(232,0,0\): "
                       r"byte offset 4000 \(element 1000\)"):
        run((4,), (256,), (x, y, np.float32(2), np.int64(x.size)))


def test_correct_twins_pass(emu_seed: int) -> None:
    for n in (1000, 1024):
        x = np.ones(n, np.float32)
        assert ks.block_sum(EMU, x, blocks=4).sum() == n
    np.testing.assert_array_equal(ks.scale(EMU, np.ones(1000, np.float32), 2.0), 2.0)


def test_out_of_bounds_read_and_write_before_start() -> None:
    src = ("extern \"C\" __global__ void k(const float* x, float* y, int n) {\n"
           "  int i = threadIdx.x;\n"
           "  if (i == 0) y[-1] = 0.f;\n"
           "  y[i] = x[i + n];\n}\n")
    source = KernelSource("oob_probe.cu", src)
    x, y = np.ones(8, np.float32), np.zeros(8, np.float32)
    run = EMU.kernels.function(source, "k")
    with pytest.raises(EmulatorError,
                       match=r"out-of-bounds read of argument 'x'.*element (8|9|1[0-5])\)"):
        run((1,), (8,), (x, y, np.int32(8)))
    with pytest.raises(EmulatorError,
                       match=r"write before the start of argument 'y'.*byte offset -4"):
        run((1,), (8,), (x, y, np.int32(0)))

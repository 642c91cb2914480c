"""Tensor cores (nvcuda::wmma) on the emulator: the tile GEMMs of
tests/kernels/cu/samples_vector_half.cu agree with NumPy for every layout and input type, tf32
rounds as cvt.rna and mma_sync truncates unrounded inputs as the hardware does, and misuse
(a partial warp, a bad pointer or ldm, lanes that disagree) raises."""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
import pytest

from dlcore.device import Device
from dlcore.kernels import KernelSource
from dlcore.kernels.emu import EmulatorError
from kernel_samples import CU_DIR

EMU = Device("emu")
SAMPLES = CU_DIR / "samples_vector_half.cu"
BUGS = CU_DIR / "planted_bugs_vector_half.cu"
BF16 = np.dtype(ml_dtypes.bfloat16)
ROW, COL = "nvcuda::wmma::row_major", "nvcuda::wmma::col_major"
M, N, K = 32, 48, 64  # 6 tiles of 16 x 16, 4 (16-bit) or 8 (tf32) k-steps


def stored(a: np.ndarray, col_major: bool) -> np.ndarray:
    """A matrix as the kernel reads it: row-major, or column-major (its transpose's rows)."""
    return np.ascontiguousarray(a.T if col_major else a).ravel()


def gemm(name: str, a: np.ndarray, b: np.ndarray, c: np.ndarray, *, a_col: bool, b_col: bool,
         cd_col: bool, extra: tuple[Any, ...] = (), block: int = 64) -> np.ndarray:
    """D = 2 A B - C through one of the wmma_gemm kernels (one warp per 16 x 16 tile)."""
    m, k = a.shape
    n = b.shape[1]
    d = np.zeros(m * n, np.float32)
    warps_per_block = block // 32
    tiles = (m // 16) * (n // 16)
    EMU.kernels.function(SAMPLES, name)(
        (-(-tiles // max(warps_per_block, 1)),), (block,),
        (stored(a, a_col), stored(b, b_col), stored(c, cd_col), d, np.int32(m), np.int32(n),
         np.int32(k), np.float32(2), np.float32(-1), np.int32(cd_col), *extra))
    return d.reshape(n, m).T if cd_col else d.reshape(m, n)


def inputs(dtype: Any, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((M, K)).astype(np.float32).astype(dtype)
    b = rng.standard_normal((K, N)).astype(np.float32).astype(dtype)
    return a, b, rng.standard_normal((M, N)).astype(np.float32)


def reference(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    return 2 * (a.astype(np.float64) @ b.astype(np.float64)) - c


def tf32_rna(x: np.ndarray) -> np.ndarray:
    """float32 -> tf32 (10 mantissa bits), nearest with ties away from zero, in float64
    arithmetic (independent of the bit trick under test); finite inputs."""
    x64 = x.astype(np.float64)
    _, exp = np.frexp(x64)
    quantum = np.ldexp(1.0, np.maximum(exp - 1, -126) - 10)
    return np.copysign(np.floor(np.abs(x64) / quantum + 0.5) * quantum, x64).astype(np.float32)


def tf32_truncated(x: np.ndarray) -> np.ndarray:
    return (x.view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32)


# Products are exact and sums run in float: a few float ulps of the largest partial sums.
TOLERANCE = dict(rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("cd_col", [False, True], ids=["cd_row", "cd_col"])
@pytest.mark.parametrize("a_col, b_col", [(False, False), (False, True), (True, False),
                                          (True, True)], ids=["rr", "rc", "cr", "cc"])
def test_half_tile_gemm_every_layout(emu_seed: int, a_col: bool, b_col: bool,
                                     cd_col: bool) -> None:
    a, b, c = inputs(np.float16, seed=1)
    name = f"wmma_gemm_half<{COL if a_col else ROW}, {COL if b_col else ROW}>"
    d = gemm(name, a, b, c, a_col=a_col, b_col=b_col, cd_col=cd_col)
    np.testing.assert_allclose(d, reference(a, b, c), **TOLERANCE)


@pytest.mark.parametrize("cd_col", [False, True], ids=["cd_row", "cd_col"])
def test_bfloat16_tile_gemm(emu_seed: int, cd_col: bool) -> None:
    a, b, c = inputs(BF16, seed=2)
    d = gemm("wmma_gemm_bf16", a, b, c, a_col=False, b_col=True, cd_col=cd_col)
    np.testing.assert_allclose(d, reference(a, b, c), **TOLERANCE)


def test_tf32_tile_gemm_rounds_with_float_to_tf32_and_truncates_without() -> None:
    a, b, c = inputs(np.float32, seed=3)
    rounded = gemm("wmma_gemm_tf32", a, b, c, a_col=False, b_col=True, cd_col=False,
                   extra=(np.int32(1),), block=96)
    np.testing.assert_allclose(rounded, reference(tf32_rna(a), tf32_rna(b), c), **TOLERANCE)
    raw = gemm("wmma_gemm_tf32", a, b, c, a_col=False, b_col=True, cd_col=False,
               extra=(np.int32(0),))
    truncated = reference(tf32_truncated(a), tf32_truncated(b), c)
    np.testing.assert_allclose(raw, truncated, **TOLERANCE)
    assert np.abs(raw - reference(a, b, c)).max() > 100 * np.abs(raw - truncated).max()


def test_float_to_tf32_is_cvt_rna_bit_for_bit() -> None:
    rng = np.random.default_rng(4)
    bits = rng.integers(0, 1 << 32, size=1 << 16, dtype=np.uint64).astype(np.uint32)
    ties = (bits & np.uint32(0xFFFFE000)) | np.uint32(0x1000)  # exactly halfway: away from zero
    x = np.concatenate([bits, ties]).view(np.float32)
    x = np.concatenate([x[np.isfinite(x)], np.float32([3.4028235e38, -3.4028235e38, 1e-45, 0.0,
                                                       -0.0])])
    y = np.zeros_like(x)
    EMU.kernels.function(SAMPLES, "tf32_round")((8,), (128,), (x, y, np.int64(x.size)))
    with np.errstate(over="ignore"):
        want = tf32_rna(x)
    np.testing.assert_array_equal(y.view(np.uint32), want.view(np.uint32))
    special = np.float32([np.inf, -np.inf, np.nan])
    EMU.kernels.function(SAMPLES, "tf32_round")((1,), (32,), (special, y[:3], np.int64(3)))
    assert y[0] == np.inf and y[1] == -np.inf and np.isnan(y[2])


# ---- warp-collective misuse ---------------------------------------------------------------------

def test_partial_warp_mma_sync_raises() -> None:
    a = np.ones(256, np.float16)
    d = np.zeros(256, np.float32)
    lanes = ",".join(str(lane) for lane in range(16, 32))
    with pytest.raises(EmulatorError, match=r"kernel wmma_half_warp_mma: block \(0,0,0\): warp "
                       r"collective deadlock: thread \(0,0,0\) waits at wmma::mma_sync \(line "
                       rf"\d+, mask 0xffffffff\) but warp 0 lanes \{{{lanes}\}} never join it"):
        EMU.kernels.function(BUGS, "wmma_half_warp_mma")((1,), (32,), (a, a, d))


def test_warp_with_fewer_than_32_threads_raises() -> None:
    a, b, c = inputs(np.float16, seed=5)
    with pytest.raises(EmulatorError, match=r"wmma::load_matrix_sync \(line \d+\) needs all 32 "
                       r"lanes of a warp, but warp 1 of this block has 16 thread\(s\) "
                       r"\(blockDim \(48,1,1\)\) \(thread \(\d+,0,0\)\)"):
        gemm(f"wmma_gemm_half<{ROW}, {ROW}>", a, b, c, a_col=False, b_col=False, cd_col=False,
             block=48)


MISUSE = KernelSource("wmma_misuse.cu", r"""
#include <mma.h>
using namespace nvcuda;
extern "C" __global__ void load(const __half* a, float* d, int offset, int ldm, int per_lane) {
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
  wmma::load_matrix_sync(fa, a + offset + per_lane * (threadIdx.x & 1), ldm);
  d[threadIdx.x] = __half2float(fa.x[0]);
}
""")


@pytest.mark.parametrize("offset, ldm, per_lane, message", [
    (8, 16, 0, r"the matrix pointer must be 32-byte \(256-bit\) aligned, got byte offset 16 of "
               r"argument 'a' \(#0\)"),
    (0, 12, 0, r"ldm=12 elements of 2 bytes is not a multiple of 16 bytes"),
    (0, 16, 256, r"lanes \d+ and \d+ of warp 0 pass different pointers, ldm or layout"),
])
def test_bad_wmma_arguments_raise(offset: int, ldm: int, per_lane: int, message: str) -> None:
    a = np.ones(1024, np.float16)
    d = np.zeros(32, np.float32)
    with pytest.raises(EmulatorError, match=r"wmma::load_matrix_sync \(line 6\).*" + message):
        EMU.kernels.function(MISUSE, "load")((1,), (32,), (a, d, np.int32(offset),
                                                          np.int32(ldm), np.int32(per_lane)))


def test_fragment_loads_cover_every_element(emu_seed: int) -> None:
    # Loading a ramp and storing it back (through D = 2 A B - C with A B = 0) is the identity:
    # every element of C reaches exactly one fragment slot and back, in both layouts.
    zero = np.zeros((16, 16), np.float16)
    c = np.arange(256, dtype=np.float32).reshape(16, 16)
    for cd_col in (False, True):
        d = gemm(f"wmma_gemm_half<{ROW}, {COL}>", zero, zero, c, a_col=False, b_col=True,
                 cd_col=cd_col, block=32)
        np.testing.assert_array_equal(d, -c)

"""Vector types and 16-bit floats on the emulator (tests/kernels/cu/samples_vector_half.cu):
vector loads agree with NumPy and misaligned ones raise; half and bfloat16 conversions are
bit-exact with NumPy's float16 and ml_dtypes' bfloat16, and their arithmetic rounds once per
operation. The planted bugs (planted_bugs_vector_half.cu) are caught."""

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
ALL_16BIT = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)  # every 16-bit pattern
# The probes cast NaN, inf and out-of-range values to 16 bits on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:.*encountered in cast:RuntimeWarning")


def launch(source: Any, name: str, args: tuple[Any, ...], grid: int = 16,
           block: int = 128) -> None:
    EMU.kernels.function(source, name)((grid,), (block,), args)


def bit_mismatches(got: np.ndarray, want: np.ndarray) -> str:
    """'' when ``got`` equals ``want`` bit for bit, else a description of the mismatches. NaNs
    need only be NaNs of the same sign: payloads are not part of the contract (a GPU returns
    its canonical NaN)."""
    uint = np.dtype(f"u{got.itemsize}")
    g, w = got.view(uint), want.view(uint)
    sign = uint.type(1 << (8 * got.itemsize - 1))
    nan = np.isnan(want.astype(np.float64))
    same = np.where(nan, np.isnan(got.astype(np.float64)) & ((g & sign) == (w & sign)), g == w)
    bad = np.flatnonzero(~same)
    if bad.size == 0:
        return ""
    shown = ", ".join(f"[{i}] got {g[i]:#x} want {w[i]:#x}" for i in bad[:5])
    return f"{bad.size} of {got.size} differ: {shown}"


def line_of(code: str, marker: str) -> int:
    """The 1-based number of the line of ``code`` that contains ``marker``."""
    return next(i for i, text in enumerate(code.splitlines(), 1) if marker in text)


def float32_probe(values_16bit: np.ndarray, count: int, seed: int) -> np.ndarray:
    """float32 inputs for a float -> 16-bit conversion: every finite 16-bit value, the midpoints
    between neighbours and one float ulp either side of them (the ties), random float32 bit
    patterns (NaNs, infinities, subnormals included) and the extremes."""
    exact = values_16bit.astype(np.float64)
    exact = np.unique(exact[np.isfinite(exact)])
    mid = ((exact[:-1] + exact[1:]) / 2).astype(np.float32)
    near = np.concatenate([np.nextafter(mid, np.float32(-np.inf)),
                           np.nextafter(mid, np.float32(np.inf))])
    rng = np.random.default_rng(seed)
    random = rng.integers(0, 1 << 32, size=count, dtype=np.uint64).astype(np.uint32)
    extremes = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 3.4028235e38, -3.4028235e38,
                         1e-45, -1e-45, 1.1754942e-38, 65504.0, 65519.996, 65520.0, 2.0**-25,
                         2.0**-24, 1.5 * 2.0**-25], np.float32)
    return np.concatenate([exact.astype(np.float32), mid, near, random.view(np.float32),
                           extremes])


def round_float64(x: np.ndarray, mantissa: int, emin: int, dtype: Any) -> np.ndarray:
    """Round float64 values to a binary format with ``mantissa`` stored bits and smallest normal
    exponent ``emin`` (nearest, ties to even), by float64 arithmetic: an oracle independent of
    the converters under test. Exact for finite values whose result is in range."""
    out = np.asarray(x, np.float64).copy()
    finite = np.isfinite(out) & (out != 0)
    _, exp = np.frexp(out[finite])
    quantum = np.ldexp(1.0, np.maximum(exp - 1, emin) - mantissa)
    out[finite] = np.rint(out[finite] / quantum) * quantum
    return out.astype(np.float32).astype(dtype)  # exact now, bar overflow to inf


# ---- vector types ---------------------------------------------------------------------------

def test_vector_and_16bit_types_have_the_gpu_sizes_and_alignments() -> None:
    out = np.zeros(16, np.int32)
    launch(SAMPLES, "type_layout", (out,), grid=1, block=32)
    #                               float2  float4  int2  int4  __half  __half2  bf16  bf162
    np.testing.assert_array_equal(out, [8, 8, 16, 16, 8, 8, 16, 16, 2, 2, 4, 4, 2, 2, 4, 4])


@pytest.mark.parametrize("vector, element", [("float2", "float"), ("float4", "float"),
                                             ("int2", "int"), ("int4", "int")])
def test_vector_loads_stores_and_members(emu_seed: int, vector: str, element: str) -> None:
    width = int(vector[-1])
    rng = np.random.default_rng(width)
    x = (rng.standard_normal(width * 777).astype(np.float32) if element == "float"
         else rng.integers(-1000, 1000, size=width * 777).astype(np.int32))
    y = np.zeros_like(x)
    launch(SAMPLES, f"reverse_lanes<{vector}, {element}>", (x, y, np.int64(777)), grid=4)
    np.testing.assert_array_equal(y, x.reshape(-1, width)[:, ::-1].ravel())


@pytest.mark.parametrize("n", [4, 1000, 1001, 1003])
def test_float4_loads_of_aligned_arrays_pass(emu_seed: int, n: int) -> None:
    # In checked mode an odd n puts the guarded copies at host addresses that are not 16-byte
    # aligned: the check must judge the addresses the kernel would have on the device.
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    y = np.zeros_like(x)
    launch(SAMPLES, "scale_float4", (x, y, np.float32(0.5), np.int64(n)), grid=3)
    np.testing.assert_array_equal(y, x * np.float32(0.5))


def test_float4_loads_unchecked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DLCORE_EMU_CHECK", "0")
    x = np.arange(1001, dtype=np.float32)
    y = np.zeros_like(x)
    launch(SAMPLES, "scale_float4", (x, y, np.float32(2), np.int64(x.size)))
    np.testing.assert_array_equal(y, 2 * x)


@pytest.mark.parametrize("checked", ["1", "0"])
def test_misaligned_float4_load_raises(monkeypatch: pytest.MonkeyPatch, checked: str) -> None:
    monkeypatch.setenv("DLCORE_EMU_CHECK", checked)
    x = np.ones(1024, np.float32)
    y = np.zeros_like(x)
    line = line_of(BUGS.read_text(), "BUG: x + 1")
    with pytest.raises(EmulatorError, match=r"kernel scale_float4_misaligned: block \(0,0,0\): "
                       rf"misaligned float4 load at planted_bugs_vector_half\.cu:{line} by thread "
                       r"\(\d+,0,0\): byte offset \d+ of argument 'x' \(#0\) is not a "
                       r"multiple of 16 bytes.*DLCORE_EMU_SEED="):
        launch(BUGS, "scale_float4_misaligned", (x, y, np.float32(2), np.int64(x.size)))


MISALIGNED = KernelSource("misaligned_probe.cu", r"""
#include <cuda_fp16.h>
extern "C" __global__ void store_float2(float* y) {
  reinterpret_cast<float2*>(y + 1)[threadIdx.x] = make_float2(1.f, 2.f);
}
extern "C" __global__ void load_half2(const __half* h, float* y) {
  const __half2 v = reinterpret_cast<const __half2*>(h + 1)[threadIdx.x];
  y[threadIdx.x] = __low2float(v);
}
extern "C" __global__ void shared_float4(float* y) {
  extern __shared__ float smem[];
  smem[threadIdx.x] = 1.f;
  __syncthreads();
  const float4 v = reinterpret_cast<const float4*>(smem + 2)[0];
  y[threadIdx.x] = v.x;
}
""")


def test_misaligned_stores_half2_and_shared_memory_raise() -> None:
    y = np.zeros(64, np.float32)
    with pytest.raises(EmulatorError, match=r"misaligned float2 store by thread \(\d+,0,0\): "
                       r"byte offset \d+ of argument 'y' \(#0\) is not a multiple of 8 bytes"):
        launch(MISALIGNED, "store_float2", (y,), grid=1, block=8)
    line = line_of(MISALIGNED.code, "const __half2 v")
    with pytest.raises(EmulatorError, match=rf"misaligned __half2 load at misaligned_probe\.cu:"
                       rf"{line} by thread .*byte offset \d+ of argument 'h' \(#0\) is not a "
                       r"multiple of 4"):
        launch(MISALIGNED, "load_half2", (np.ones(64, np.float16), y), grid=1, block=8)
    with pytest.raises(EmulatorError, match=r"misaligned float4 load .*byte offset 8 of dynamic "
                       r"shared memory is not a multiple of 16"):
        EMU.kernels.function(MISALIGNED, "shared_float4")((1,), (8,), (y,), shared_mem=64)


# ---- conversions ------------------------------------------------------------------------------

def test_half_to_float_is_exact_for_all_65536_patterns() -> None:
    h = ALL_16BIT.view(np.float16)
    x = np.zeros(h.size, np.float32)
    to_half, to_float = np.zeros(h.size, np.float16), np.zeros(h.size, np.float32)
    launch(SAMPLES, "half_convert", (x, to_half, h, to_float, np.int64(h.size)))
    assert bit_mismatches(to_float, h.astype(np.float32)) == ""


def test_float_to_half_rounds_as_numpy() -> None:
    x = float32_probe(ALL_16BIT.view(np.float16), 1 << 18, seed=0)
    h = np.zeros(x.size, np.float16)
    to_half, to_float = np.zeros(x.size, np.float16), np.zeros(x.size, np.float32)
    launch(SAMPLES, "half_convert", (x, to_half, h, to_float, np.int64(x.size)))
    assert bit_mismatches(to_half, x.astype(np.float16)) == ""


def test_bfloat16_to_float_is_exact_for_all_65536_patterns() -> None:
    h = ALL_16BIT.view(BF16)
    x = np.zeros(h.size, np.float32)
    to_bf16, to_float = np.zeros(h.size, BF16), np.zeros(h.size, np.float32)
    launch(SAMPLES, "bf16_convert", (x, to_bf16, h, to_float, np.int64(h.size)))
    assert bit_mismatches(to_float, h.astype(np.float32)) == ""


def test_float_to_bfloat16_rounds_as_ml_dtypes() -> None:
    x = float32_probe(ALL_16BIT.view(BF16), 1 << 20, seed=1)
    h = np.zeros(x.size, BF16)
    to_bf16, to_float = np.zeros(x.size, BF16), np.zeros(x.size, np.float32)
    launch(SAMPLES, "bf16_convert", (x, to_bf16, h, to_float, np.int64(x.size)))
    assert bit_mismatches(to_bf16, x.astype(BF16)) == ""


@pytest.mark.parametrize("name, dtype", [("half2_convert", np.dtype(np.float16)),
                                         ("bf162_convert", BF16)])
def test_pair_conversions(emu_seed: int, name: str, dtype: np.dtype) -> None:
    x = np.random.default_rng(2).permutation(float32_probe(ALL_16BIT.view(dtype), 1 << 12,
                                                           seed=2))[:6000]
    h = np.random.default_rng(3).integers(0, 1 << 16, size=x.size).astype(np.uint16).view(dtype)
    to_16bit, to_float = np.zeros(x.size, dtype), np.zeros(x.size, np.float32)
    launch(SAMPLES, name, (x, to_16bit, h, to_float, np.int64(x.size // 2)))
    assert bit_mismatches(to_16bit, x.astype(dtype)) == ""
    assert bit_mismatches(to_float, h.astype(np.float32)) == ""


def test_planted_conversion_bugs_are_caught_bit_exactly() -> None:
    h = ALL_16BIT.view(np.float16)
    y = np.zeros(h.size, np.float32)
    launch(BUGS, "half_to_float_flushing", (h, y, np.int64(h.size)))
    report = bit_mismatches(y, h.astype(np.float32))
    assert report.startswith("2046 of 65536 differ"), report  # the nonzero subnormals, +/-
    x = float32_probe(ALL_16BIT.view(BF16), 1 << 16, seed=4)
    b = np.zeros(x.size, BF16)
    launch(BUGS, "bf16_truncating", (x, b, np.int64(x.size)))
    assert bit_mismatches(b, x.astype(BF16)) != ""


# ---- arithmetic ---------------------------------------------------------------------------------

def operands(dtype: np.dtype, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """a, b, c: random values over many binades, then every pair of special values."""
    rng = np.random.default_rng(seed)
    scale = 2.0 ** rng.integers(-12, 8, size=(3, n))
    a, b, c = (rng.standard_normal((3, n)) * scale).astype(np.float32).astype(dtype)
    special = np.array([0.0, -0.0, 1.0, -2.5, np.inf, -np.inf, np.nan, 6e-8, -3e-5, 65504.0,
                        1e-3, 300.0], np.float32).astype(dtype)
    sa, sb = (s.ravel() for s in np.meshgrid(special, special))
    a, b = np.concatenate([a, sa]), np.concatenate([b, sb])
    c = np.concatenate([c, np.resize(special, sa.size)])
    return a, b, c


REFERENCES = {  # name -> (a, b, c as float64) -> float64 result rounded once by the caller
    "hadd": lambda a, b, c: a + b, "hsub": lambda a, b, c: a - b, "hmul": lambda a, b, c: a * b,
    "hfma": lambda a, b, c: a * b + c, "hneg": lambda a, b, c: -a,
    "plus": lambda a, b, c: a + b, "minus": lambda a, b, c: a - b, "times": lambda a, b, c: a * b,
    "divide": lambda a, b, c: a / b,
}
MANTISSA = {np.dtype(np.float16): (10, -14), BF16: (7, -126)}


def reference_max(a: np.ndarray, b: np.ndarray, larger: bool) -> np.ndarray:
    """CUDA's __hmax / __hmin: a NaN operand gives the other one; +0 > -0."""
    pick_a = (a > b) if larger else (a < b)
    tie = (a == b) & (np.signbit(a) != larger)
    out = np.where(pick_a | tie, a, b)
    return np.where(np.isnan(a), b, np.where(np.isnan(b), a, out))


@pytest.mark.parametrize("dtype", [np.dtype(np.float16), BF16], ids=["half", "bfloat16"])
def test_arithmetic_rounds_once_per_operation(emu_seed: int, dtype: np.dtype) -> None:
    h, h2 = ("__half", "__half2") if dtype == np.float16 else ("__nv_bfloat16", "__nv_bfloat162")
    a, b, c = operands(dtype, 3000, seed=5)
    n = a.size
    assert n % 2 == 0, "the pair ops need an even N"
    out, flags = np.zeros((12, n), dtype), np.zeros((3, n), np.int32)
    out2 = np.zeros((3, n), dtype)
    with np.errstate(all="ignore"):
        launch(SAMPLES, f"half_ops<{h}, {h2}>", (a, b, c, out, flags, out2, np.int64(n)), grid=8)
        a64, b64, c64 = (v.astype(np.float64) for v in (a, b, c))
        mantissa, emin = MANTISSA[dtype]

        def once(x: np.ndarray) -> np.ndarray:
            return round_float64(x, mantissa, emin, dtype)

        for row, name in enumerate(REFERENCES):  # out's rows 0..8, in this order
            assert bit_mismatches(out[row], once(REFERENCES[name](a64, b64, c64))) == "", name
        assert bit_mismatches(out[9], reference_max(a, b, True)) == "", "hmax"
        assert bit_mismatches(out[10], reference_max(a, b, False)) == "", "hmin"
        compound = once(once(a64 + b64).astype(np.float64) * c64)
        assert bit_mismatches(out[11], compound) == "", "t += b; t *= c"
        np.testing.assert_array_equal(flags, [a64 < b64, a64 > b64, a64 == b64])
        for row, ref in enumerate([a64 + b64, a64 * b64, a64 * b64 + c64]):
            assert bit_mismatches(out2[row], once(ref)) == "", f"pair op {row}"


def test_half_scalar_parameter_and_pair_operators(emu_seed: int) -> None:
    x = np.random.default_rng(7).standard_normal(1000).astype(np.float16)
    y = np.zeros_like(x)
    launch(SAMPLES, "scale_half2", (x, y, np.float16(0.3), np.int64(x.size)), grid=2)
    want = (x.astype(np.float64) * np.float64(np.float16(0.3))).astype(np.float16)
    assert bit_mismatches(y, want) == ""


@pytest.mark.parametrize("dtype, h, h2, ulp", [
    (np.dtype(np.float16), "__half", "__half2", 2.0**-10),
    (BF16, "__nv_bfloat16", "__nv_bfloat162", 2.0**-7)], ids=["half", "bfloat16"])
def test_fma_breaks_a_tie_by_a_tiny_addend(dtype: np.dtype, h: str, h2: str, ulp: float) -> None:
    # (1 + ulp) * 1.5 lies exactly halfway between two neighbours; the sign of a tiny c decides.
    # In float (or double, for bfloat16's 2^-100) the sum would round back onto the tie.
    tiny = 2.0**-24 if dtype == np.float16 else 2.0**-100
    a = np.array([1 + ulp] * 4, np.float32).astype(dtype)
    b = np.array([1.5] * 4, np.float32).astype(dtype)
    c = np.array([tiny, -tiny, tiny, -tiny], np.float32).astype(dtype)
    out, flags, out2 = np.zeros((12, 4), dtype), np.zeros((3, 4), np.int32), np.zeros((3, 4), dtype)
    launch(SAMPLES, f"half_ops<{h}, {h2}>", (a, b, c, out, flags, out2, np.int64(4)), grid=1)
    up, down = 1.5 + 2 * ulp, 1.5 + ulp
    np.testing.assert_array_equal(out[3].astype(np.float64), [up, down, up, down])
    np.testing.assert_array_equal(out2[2].astype(np.float64), [up, down, up, down])


@pytest.mark.parametrize("dtype, h2", [(np.dtype(np.float16), "__half2"), (BF16, "__nv_bfloat162")],
                         ids=["half2", "bfloat162"])
def test_pair_shuffles_in_a_warp_butterfly(emu_seed: int, dtype: np.dtype, h2: str) -> None:
    x = np.random.default_rng(6).standard_normal(2 * 256).astype(np.float32).astype(dtype)
    y = np.zeros_like(x)
    launch(SAMPLES, f"warp_sum_pairs<{h2}>", (x, y), grid=2, block=128)
    v = x.reshape(-1, 32, 2)
    lanes = np.arange(32)
    for offset in (16, 8, 4, 2, 1):
        v = (v.astype(np.float32) + v[:, lanes ^ offset].astype(np.float32)).astype(dtype)
    assert bit_mismatches(y, v.ravel()) == ""

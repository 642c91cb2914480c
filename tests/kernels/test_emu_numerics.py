"""The emulator's arithmetic follows the GPU build (NVRTC, CuPy's options): ``a * b + c``
contracts into one fused multiply-add, and float denormals flush to zero (``-ftz=true``), with
the host's floating-point state restored after each launch."""

from __future__ import annotations

import platform

import numpy as np
import pytest

from dlcore.device import Device
from dlcore.kernels import KernelSource
from dlcore.kernels.emu.build import cpu_has_fma, numerics_flags

EMU = Device("emu")
X86_64 = platform.machine().lower() in ("x86_64", "amd64")
# Contraction emits FMA where the ISA has it: x86-64 with FMA3 (-mfma), or aarch64's baseline.
FUSED = cpu_has_fma() if X86_64 else True

SOURCE = KernelSource("emu_numerics.cu", r"""
// dlcore: instantiate multiply_add<float>
// dlcore: instantiate multiply_add<double>
template <typename T>
__global__ void multiply_add(const T* a, const T* b, const T* c, T* out, int n) {
  const int i = threadIdx.x;
  if (i < n) out[i] = a[i] * b[i] + c[i];
}

extern "C" __global__ void explicit_fmaf(const float* a, const float* b, const float* c,
                                         float* out) {
  out[threadIdx.x] = fmaf(a[threadIdx.x], b[threadIdx.x], c[threadIdx.x]);
}

extern "C" __global__ void float_ops(const float* x, const float* y, float* out) {
  const int i = threadIdx.x;
  out[3 * i] = x[i] * y[i];      // a denormal result flushes (FTZ)
  out[3 * i + 1] = x[i] + 0.f;   // a denormal input reads as zero (DAZ)
  out[3 * i + 2] = x[i] * 2.f;
}
""")


def _run(name: str, *arrays: np.ndarray, n: int | None = None) -> np.ndarray:
    out = np.zeros(len(arrays[0]) * (3 if name == "float_ops" else 1), arrays[0].dtype)
    args = (*arrays, out) + ((np.int32(n),) if n is not None else ())
    EMU.kernels.function(SOURCE, name)((1,), (len(arrays[0]),), args)
    return out


def test_the_build_asks_for_fma_where_the_cpu_has_it() -> None:
    assert ("-mfma" in numerics_flags()) == (X86_64 and cpu_has_fma())


@pytest.mark.parametrize(("dtype", "eps"), [(np.float32, 2.0**-12), (np.float64, 2.0**-27)])
def test_multiply_add_is_one_fused_rounding(dtype: type, eps: float) -> None:
    # (1 + eps)^2 = 1 + 2 eps + eps^2: rounded alone the product loses eps^2 (half an ulp, to
    # even), so minus (1 + 2 eps) gives 0 unfused and exactly eps^2 fused, as on a GPU.
    a = np.array([1 + eps, 3.0, -2.5], dtype)
    c = np.array([-(1 + 2 * eps), 0.25, 1.0], dtype)
    got = _run(f"multiply_add<{'float' if dtype == np.float32 else 'double'}>", a, a, c, n=3)
    assert got[0] == (eps * eps if FUSED else 0.0)
    np.testing.assert_array_equal(got[1:], a[1:] * a[1:] + c[1:])  # exact either way


def test_explicit_fmaf_is_fused_everywhere() -> None:
    eps = np.float32(2.0**-12)
    a = np.array([1 + eps], np.float32)
    got = _run("explicit_fmaf", a, a, np.array([-(1 + 2 * eps)], np.float32))
    assert got[0] == eps * eps


@pytest.mark.skipif(not X86_64, reason="denormals are flushed through x86-64's MXCSR only")
def test_float_denormals_flush_to_zero_and_the_host_keeps_them() -> None:
    tiny = np.float32(1e-40)  # a float32 denormal (the smallest normal is 1.18e-38)
    x = np.array([1e-20, tiny, 3.0], np.float32)
    y = np.array([1e-20, 1.0, 0.5], np.float32)
    product, plus_zero, doubled = _run("float_ops", x, y).reshape(3, 3).T
    # 1e-20 * 1e-20 = 1e-40 flushes; the denormal input reads as zero in every operation
    np.testing.assert_array_equal(product, np.array([0, 0, 1.5], np.float32))
    np.testing.assert_array_equal(plus_zero, np.array([1e-20, 0, 3], np.float32))
    np.testing.assert_array_equal(doubled, np.array([2e-20, 0, 6], np.float32))
    # The launch restored the caller's MXCSR: NumPy on this thread still has denormals.
    assert x[0] * y[0] == np.float32(1e-20) * np.float32(1e-20) != 0
    assert tiny + np.float32(0) == tiny != 0

"""Kernels that include the CUDA headers fast kernels need compile with NVRTC for every
target where the feature exists, with the headers taken from the CUDA wheels (no toolkit)."""

from __future__ import annotations

import pytest

from pathlib import Path

from dlcore.kernels.compile_check import (HeaderSet, choose_header_set, compile_for_arch,
                                          cuda_include_dirs, nvrtc_archs)
from dlcore.kernels.sources import KernelSource

CODE = r"""
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <mma.h>
#include <cuda_pipeline.h>
#include <cooperative_groups.h>
namespace cg = cooperative_groups;
using namespace nvcuda;

extern "C" __global__ void halves(const __half* x, __nv_bfloat16* y, float* z, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    __half h = __hfma(x[i], x[i], __float2half_rn(1.0f));
    y[i] = __float2bfloat16(__half2float(h));
    z[i] = __bfloat162float(y[i]);
  }
}

extern "C" __global__ void tensor_core(const __half* a, const __half* b, float* c) {
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
  wmma::fill_fragment(fc, 0.0f);
  wmma::load_matrix_sync(fa, a, 16);
  wmma::load_matrix_sync(fb, b, 16);
  wmma::mma_sync(fc, fa, fb, fc);
  wmma::store_matrix_sync(c, fc, 16, wmma::mem_row_major);
}

extern "C" __global__ void staged(const float4* src, float4* dst) {
  __shared__ float4 tile[64];
  __pipeline_memcpy_async(&tile[threadIdx.x], &src[threadIdx.x], sizeof(float4));
  __pipeline_commit();
  __pipeline_wait_prior(0);
  cg::this_thread_block().sync();
  dst[threadIdx.x] = tile[63 - threadIdx.x];
}
"""


@pytest.mark.parametrize("arch", [70, 80, 90])
def test_cuda_headers_compile_from_the_wheels(arch: int) -> None:
    pytest.importorskip("cupy_backends.cuda.libs.nvrtc")
    if arch not in nvrtc_archs():  # CUDA 13 dropped Volta (sm_70)
        pytest.skip(f"this NVRTC does not target sm_{arch}")
    dirs = cuda_include_dirs()
    assert any(Path(d, "crt/mma.h").is_file() for d in dirs), dirs  # one complete CUDA set
    assert any(Path(d, "cuda_fp16.h").is_file() for d in dirs), dirs
    assert any(d.endswith("libcudacxx") for d in dirs), dirs  # CuPy's nv/target
    cubin = compile_for_arch(KernelSource("headers.cu", CODE), arch)
    for name in (b"halves", b"tensor_core", b"staged"):
        assert name in cubin


def _headers(root: Path, name: str, major: int, crt: bool) -> HeaderSet:
    include = root / name / "include"
    (include / "crt").mkdir(parents=True)
    (include / "cuda_fp16.h").write_text("")
    (include / "cuda.h").write_text(f"#define CUDA_VERSION {major}000\n")
    if crt:
        (include / "crt" / "mma.h").write_text("")
    return HeaderSet(name, (str(include),), major)


def test_header_set_lacking_crt_yields_to_a_complete_toolkit(tmp_path: Path) -> None:
    """Seen on an H200 image: CuPy's CUDA 13 wheels hold mma.h but not the crt/mma.h it
    includes (NVRTC: 'cannot open source file "crt/mma.h"'), while the 13.0 toolkit is
    complete. Every tensor-core kernel failed to compile until the toolkit's set was used."""
    wheels = _headers(tmp_path, "cu13", 13, crt=False)
    old = _headers(tmp_path, "cu12", 12, crt=True)
    toolkit = _headers(tmp_path, "toolkit", 13, crt=True)
    assert not wheels.complete and toolkit.complete
    assert choose_header_set([wheels, old, toolkit], nvrtc_major=13) == toolkit
    assert choose_header_set([wheels, old, toolkit], nvrtc_major=12) == old
    assert choose_header_set([wheels, old], nvrtc_major=13) == old  # complete beats matching
    assert choose_header_set([wheels], nvrtc_major=13) == wheels  # NVRTC names what is missing
    assert choose_header_set([], nvrtc_major=13) is None

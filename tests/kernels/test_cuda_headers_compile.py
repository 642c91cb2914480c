"""Kernels that include the CUDA headers fast kernels need compile with NVRTC for every
target where the feature exists, with the headers taken from the CUDA wheels (no toolkit)."""

from __future__ import annotations

import pytest

from dlcore.kernels.compile_check import compile_for_arch, cuda_include_dirs
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
    assert len(cuda_include_dirs()) == 3, "nvidia-cuda-runtime/-nvcc wheels, CuPy (test extra)"
    cubin = compile_for_arch(KernelSource("headers.cu", CODE), arch)
    for name in (b"halves", b"tensor_core", b"staged"):
        assert name in cubin

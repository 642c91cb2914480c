// planted_bugs_vector_half.cu -- kernels with one deliberate bug each in the use of vector
// types, 16-bit floats and tensor cores, so the tests can prove the emulator (or the test's
// bit-exact comparison) catches it. Each is a variant of a kernel in samples_vector_half.cu
// with the bug marked "BUG:".
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <mma.h>

#include "common.cuh"

using namespace nvcuda;

// scale_float4 one element off: x + 1 is only 4-byte aligned, so every float4 load is
// misaligned (a GPU faults with "misaligned address"). Reads x[1 .. 4 * (n / 4) - 3].
extern "C" __global__ void scale_float4_misaligned(const float* __restrict__ x,
                                                   float* __restrict__ y, float alpha,
                                                   long long n) {
  const long long nvec = n / 4 - 1;
  DL_GRID_STRIDE_LOOP(i, nvec) {
    float4 v = reinterpret_cast<const float4*>(x + 1)[i];  // BUG: x + 1 is not 16-byte aligned
    v.x *= alpha, v.y *= alpha, v.z *= alpha, v.w *= alpha;
    reinterpret_cast<float4*>(y)[i] = v;
  }
}

// One 16x16x16 tile product where only the lower half-warp reaches mma_sync (a GPU hangs or
// computes garbage): lanes 16..31 go straight to store_matrix_sync. One warp; a, b 16x16.
extern "C" __global__ void wmma_half_warp_mma(const __half* __restrict__ a,
                                              const __half* __restrict__ b, float* __restrict__ d) {
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::fill_fragment(acc, 0.0f);
  wmma::load_matrix_sync(fa, a, 16);
  wmma::load_matrix_sync(fb, b, 16);
  if ((threadIdx.x & 31) < 16) wmma::mma_sync(acc, fa, fb, acc);  // BUG: a partial warp
  wmma::store_matrix_sync(d, acc, 16, wmma::mem_row_major);
}

// half -> float by hand, flushing subnormals to zero (a common shortcut that loses 2^-24..2^-14).
extern "C" __global__ void half_to_float_flushing(const __half* __restrict__ h,
                                                  float* __restrict__ y, long long n) {
  DL_GRID_STRIDE_LOOP(i, n) {
    const unsigned bits = __half_as_ushort(h[i]);
    const unsigned sign = (bits & 0x8000u) << 16, exp = (bits >> 10) & 0x1fu, man = bits & 0x3ffu;
    unsigned out;
    if (exp == 0x1fu) out = sign | 0x7f800000u | (man << 13);
    else if (exp == 0u) out = sign;  // BUG: subnormal halves are not zero
    else out = sign | ((exp + 112u) << 23) | (man << 13);
    y[i] = __uint_as_float(out);
  }
}

// float -> bfloat16 by dropping the low 16 bits: truncation, not round-to-nearest-even.
extern "C" __global__ void bf16_truncating(const float* __restrict__ x,
                                           __nv_bfloat16* __restrict__ y, long long n) {
  DL_GRID_STRIDE_LOOP(i, n) {
    y[i] = __ushort_as_bfloat16((unsigned short)(__float_as_uint(x[i]) >> 16));  // BUG: truncates
  }
}

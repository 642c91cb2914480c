// samples_vector_half.cu -- small correct kernels for vector types, 16-bit floats and tensor
// cores (test fixtures, not product kernels). Their NumPy twins are in
// tests/kernels/test_emu_vector_half.py and tests/kernels/test_emu_wmma.py.
// Shape letters: N elements (P pairs); D (M x N) = A (M x K) * B (K x N) for the wmma kernels.
// bf16 and tf32 tensor cores need sm_80: below it those kernels compile to empty bodies.
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <mma.h>

#include "common.cuh"

using namespace nvcuda;

// dlcore: instantiate reverse_lanes<float2, float>
// dlcore: instantiate reverse_lanes<float4, float>
// dlcore: instantiate reverse_lanes<int2, int>
// dlcore: instantiate reverse_lanes<int4, int>
// dlcore: instantiate half_ops<__half, __half2>
// dlcore: instantiate half_ops<__nv_bfloat16, __nv_bfloat162>
// dlcore: instantiate warp_sum_pairs<__half2>
// dlcore: instantiate warp_sum_pairs<__nv_bfloat162>
// dlcore: instantiate wmma_gemm_half<nvcuda::wmma::row_major, nvcuda::wmma::row_major>
// dlcore: instantiate wmma_gemm_half<nvcuda::wmma::row_major, nvcuda::wmma::col_major>
// dlcore: instantiate wmma_gemm_half<nvcuda::wmma::col_major, nvcuda::wmma::row_major>
// dlcore: instantiate wmma_gemm_half<nvcuda::wmma::col_major, nvcuda::wmma::col_major>

// ---- vector types -------------------------------------------------------------------------

// sizeof and alignof of the vector and 16-bit types, in pairs: float2 float4 int2 int4 __half
// __half2 __nv_bfloat16 __nv_bfloat162. One thread.
extern "C" __global__ void type_layout(int* out) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  out[0] = sizeof(float2), out[1] = alignof(float2);
  out[2] = sizeof(float4), out[3] = alignof(float4);
  out[4] = sizeof(int2), out[5] = alignof(int2);
  out[6] = sizeof(int4), out[7] = alignof(int4);
  out[8] = sizeof(__half), out[9] = alignof(__half);
  out[10] = sizeof(__half2), out[11] = alignof(__half2);
  out[12] = sizeof(__nv_bfloat16), out[13] = alignof(__nv_bfloat16);
  out[14] = sizeof(__nv_bfloat162), out[15] = alignof(__nv_bfloat162);
}

__device__ __forceinline__ float2 reversed(float2 v) { return make_float2(v.y, v.x); }
__device__ __forceinline__ float4 reversed(float4 v) { return make_float4(v.w, v.z, v.y, v.x); }
__device__ __forceinline__ int2 reversed(int2 v) { return make_int2(v.y, v.x); }
__device__ __forceinline__ int4 reversed(int4 v) { return make_int4(v.w, v.z, v.y, v.x); }

// y = x with the components of each V-sized group reversed, through vector loads and stores:
// x and y hold nvec groups (nvec * sizeof(V) bytes) and are aligned to sizeof(V).
template <typename V, typename E>
__global__ void reverse_lanes(const E* __restrict__ x, E* __restrict__ y, long long nvec) {
  const V* xv = reinterpret_cast<const V*>(x);
  V* yv = reinterpret_cast<V*>(y);
  DL_GRID_STRIDE_LOOP(i, nvec) yv[i] = reversed(xv[i]);
}

// y = alpha * x: float4 loads (__ldg) and stores for the first 4 * (n / 4) elements, scalar
// ones for the tail. x and y must be 16-byte aligned (whole arrays are).
extern "C" __global__ void scale_float4(const float* __restrict__ x, float* __restrict__ y,
                                        float alpha, long long n) {
  const long long nvec = n / 4;
  DL_GRID_STRIDE_LOOP(i, nvec) {
    float4 v = __ldg(reinterpret_cast<const float4*>(x) + i);
    v.x *= alpha, v.y *= alpha, v.z *= alpha, v.w *= alpha;
    reinterpret_cast<float4*>(y)[i] = v;
  }
  DL_GRID_STRIDE_LOOP(j, n - 4 * nvec) y[4 * nvec + j] = alpha * x[4 * nvec + j];
}

// ---- 16-bit floats: conversions ------------------------------------------------------------

// to_half = half(x) (odd elements through __float2half, even through __float2half_rn);
// to_float = float(h). All arrays hold N elements.
extern "C" __global__ void half_convert(const float* __restrict__ x, __half* __restrict__ to_half,
                                        const __half* __restrict__ h,
                                        float* __restrict__ to_float, long long n) {
  DL_GRID_STRIDE_LOOP(i, n) {
    to_half[i] = (i & 1) ? __float2half(x[i]) : __float2half_rn(x[i]);
    to_float[i] = __half2float(h[i]);
  }
}

// The same through the pair conversions, P = N / 2 pairs: the packing alternates between
// __floats2half2_rn, __float22half2_rn and __halves2half2 of __float2half2_rn halves, the
// unpacking between __half22float2 and __low2float / __high2float.
extern "C" __global__ void half2_convert(const float* __restrict__ x, __half2* __restrict__ to_half,
                                         const __half2* __restrict__ h,
                                         float* __restrict__ to_float, long long pairs) {
  DL_GRID_STRIDE_LOOP(p, pairs) {
    const float lo = x[2 * p], hi = x[2 * p + 1];
    if (p % 3 == 0) to_half[p] = __floats2half2_rn(lo, hi);
    else if (p % 3 == 1) to_half[p] = __float22half2_rn(make_float2(lo, hi));
    else to_half[p] = __halves2half2(__low2half(__float2half2_rn(lo)), __high2half(__float2half2_rn(hi)));
    const __half2 v = h[p];
    if (p % 2 == 0) {
      const float2 f = __half22float2(v);
      to_float[2 * p] = f.x, to_float[2 * p + 1] = f.y;
    } else {
      to_float[2 * p] = __low2float(v), to_float[2 * p + 1] = __high2float(v);
    }
  }
}

// to_bf16 = bfloat16(x) (odd elements through __float2bfloat16, even through
// __float2bfloat16_rn); to_float = float(h). All arrays hold N elements.
extern "C" __global__ void bf16_convert(const float* __restrict__ x,
                                        __nv_bfloat16* __restrict__ to_bf16,
                                        const __nv_bfloat16* __restrict__ h,
                                        float* __restrict__ to_float, long long n) {
  DL_GRID_STRIDE_LOOP(i, n) {
    to_bf16[i] = (i & 1) ? __float2bfloat16(x[i]) : __float2bfloat16_rn(x[i]);
    to_float[i] = __bfloat162float(h[i]);
  }
}

// bf16_convert through the pair conversions, as half2_convert.
extern "C" __global__ void bf162_convert(const float* __restrict__ x,
                                         __nv_bfloat162* __restrict__ to_bf16,
                                         const __nv_bfloat162* __restrict__ h,
                                         float* __restrict__ to_float, long long pairs) {
  DL_GRID_STRIDE_LOOP(p, pairs) {
    const float lo = x[2 * p], hi = x[2 * p + 1];
    if (p % 3 == 0) to_bf16[p] = __floats2bfloat162_rn(lo, hi);
    else if (p % 3 == 1) to_bf16[p] = __float22bfloat162_rn(make_float2(lo, hi));
    else to_bf16[p] = __halves2bfloat162(__low2bfloat16(__float2bfloat162_rn(lo)),
                                         __high2bfloat16(__float2bfloat162_rn(hi)));
    const __nv_bfloat162 v = h[p];
    if (p % 2 == 0) {
      const float2 f = __bfloat1622float2(v);
      to_float[2 * p] = f.x, to_float[2 * p + 1] = f.y;
    } else {
      to_float[2 * p] = __low2float(v), to_float[2 * p + 1] = __high2float(v);
    }
  }
}

// ---- 16-bit floats: arithmetic -------------------------------------------------------------

// Fused multiply-adds. bf16 __hfma needs sm_80; below it a float fma rounded to bf16 stands in
// (rounded twice: it can differ from __hfma in the last bit).
__device__ __forceinline__ __half fma16(__half a, __half b, __half c) { return __hfma(a, b, c); }
__device__ __forceinline__ __half2 fma16(__half2 a, __half2 b, __half2 c) { return __hfma2(a, b, c); }
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
__device__ __forceinline__ __nv_bfloat16 fma16(__nv_bfloat16 a, __nv_bfloat16 b, __nv_bfloat16 c) {
  return __hfma(a, b, c);
}
__device__ __forceinline__ __nv_bfloat162 fma16(__nv_bfloat162 a, __nv_bfloat162 b,
                                                __nv_bfloat162 c) {
  return __hfma2(a, b, c);
}
#else
__device__ __forceinline__ __nv_bfloat16 fma16(__nv_bfloat16 a, __nv_bfloat16 b, __nv_bfloat16 c) {
  return __float2bfloat16(fmaf(__bfloat162float(a), __bfloat162float(b), __bfloat162float(c)));
}
__device__ __forceinline__ __nv_bfloat162 fma16(__nv_bfloat162 a, __nv_bfloat162 b,
                                                __nv_bfloat162 c) {
  return __halves2bfloat162(fma16(__low2bfloat16(a), __low2bfloat16(b), __low2bfloat16(c)),
                            fma16(__high2bfloat16(a), __high2bfloat16(b), __high2bfloat16(c)));
}
#endif

// Elementwise ops of H (__half or __nv_bfloat16) on a, b, c (N elements each). out is
// (12, N): __hadd, __hsub, __hmul, __hfma (fma16), __hneg, a+b, a-b, a*b, a/b, __hmax, __hmin and
// t = a; t += b; t *= c. flags is (3, N): __hlt, __hgt, __heq. out2 is (3, N) through the pair
// type H2 on pairs (a[2p], a[2p+1]): __hadd2, __hmul2, __hfma2 (fma16); N even.
template <typename H, typename H2>
__global__ void half_ops(const H* __restrict__ a, const H* __restrict__ b, const H* __restrict__ c,
                         H* __restrict__ out, int* __restrict__ flags, H2* __restrict__ out2,
                         long long n) {
  DL_GRID_STRIDE_LOOP(i, n) {
    const H x = a[i], y = b[i], z = c[i];
    out[0 * n + i] = __hadd(x, y);
    out[1 * n + i] = __hsub(x, y);
    out[2 * n + i] = __hmul(x, y);
    out[3 * n + i] = fma16(x, y, z);
    out[4 * n + i] = __hneg(x);
    out[5 * n + i] = x + y;
    out[6 * n + i] = x - y;
    out[7 * n + i] = x * y;
    out[8 * n + i] = x / y;
    out[9 * n + i] = __hmax(x, y);
    out[10 * n + i] = __hmin(x, y);
    H t = x;
    t += y;
    t *= z;
    out[11 * n + i] = t;
    flags[0 * n + i] = __hlt(x, y);
    flags[1 * n + i] = __hgt(x, y);
    flags[2 * n + i] = __heq(x, y);
  }
  const H2* a2 = reinterpret_cast<const H2*>(a);
  const H2* b2 = reinterpret_cast<const H2*>(b);
  const H2* c2 = reinterpret_cast<const H2*>(c);
  const long long pairs = n / 2;
  DL_GRID_STRIDE_LOOP(p, pairs) {
    out2[0 * pairs + p] = __hadd2(a2[p], b2[p]);
    out2[1 * pairs + p] = __hmul2(a2[p], b2[p]);
    out2[2 * pairs + p] = fma16(a2[p], b2[p], c2[p]);
  }
}

// y = alpha * x with a __half scalar parameter, two elements at a time (make_half2,
// __half2 loads and stores, the __half2 operator *); N even, x and y 4-byte aligned.
extern "C" __global__ void scale_half2(const __half* __restrict__ x, __half* __restrict__ y,
                                       __half alpha, long long n) {
  const __half2* x2 = reinterpret_cast<const __half2*>(x);
  __half2* y2 = reinterpret_cast<__half2*>(y);
  const __half2 alpha2 = make_half2(alpha, alpha);
  DL_GRID_STRIDE_LOOP(p, n / 2) y2[p] = x2[p] * alpha2;
}

// Every lane of each warp gets the sum of its warp's 32 pairs (H2 = __half2 or
// __nv_bfloat162) by an xor butterfly of __shfl_xor_sync; blockDim.x a multiple of 32 and
// x, y hold gridDim.x * blockDim.x pairs.
template <typename H2>
__global__ void warp_sum_pairs(const H2* __restrict__ x, H2* __restrict__ y) {
  const dl::index_t i = dl::global_index_1d();
  H2 v = x[i];
  for (int offset = 16; offset > 0; offset >>= 1) v = __hadd2(v, __shfl_xor_sync(0xffffffffu, v, offset));
  y[i] = v;
}

// ---- tensor cores (wmma) -------------------------------------------------------------------

// Element (r, c) of a matrix stored with a fragment layout and leading dimension ld.
__device__ __forceinline__ long long at(const wmma::row_major*, int r, int c, int ld) {
  return (long long)r * ld + c;
}
__device__ __forceinline__ long long at(const wmma::col_major*, int r, int c, int ld) {
  return (long long)c * ld + r;
}
__device__ __forceinline__ int leading(const wmma::row_major*, int, int cols) { return cols; }
__device__ __forceinline__ int leading(const wmma::col_major*, int rows, int) { return rows; }

// Round loaded tf32 fragments (as NVIDIA recommends); 16-bit fragments need nothing.
template <typename Frag>
__device__ __forceinline__ void round_inputs(Frag&, const void*) {}
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
template <typename Frag>
__device__ __forceinline__ void round_inputs(Frag& f, const wmma::precision::tf32*) {
  for (int i = 0; i < f.num_elements; ++i) f.x[i] = wmma::__float_to_tf32(f.x[i]);
}
#endif

// D = alpha * A B + beta * C, one warp per 16x16 tile of D (blockDim.x a multiple of 32, any
// grid covering M * N / 256 warps). A (M x K) and B (K x N) are stored with layouts LA, LB
// and leading dimensions K or M, N or K; C and D row-major (ld N) or, with cd_col_major,
// column-major (ld M). M, N multiples of 16, K a multiple of KT.
template <typename TMem, typename TFrag, int KT, typename LA, typename LB>
__device__ void tile_gemm(const TMem* a, const TMem* b, const float* c, float* d, int m, int n,
                          int k, float alpha, float beta, int cd_col_major, int round) {
  const int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
  if (warp >= (m / 16) * (n / 16)) return;  // whole warps leave together
  const int row = warp / (n / 16) * 16, col = warp % (n / 16) * 16;
  const LA* la = nullptr;
  const LB* lb = nullptr;
  const int lda = leading(la, m, k), ldb = leading(lb, k, n);
  wmma::fragment<wmma::matrix_a, 16, 16, KT, TFrag, LA> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, KT, TFrag, LB> fb;
  wmma::fragment<wmma::accumulator, 16, 16, KT, float> acc, fc;
  wmma::fill_fragment(acc, 0.0f);
  for (int k0 = 0; k0 < k; k0 += KT) {
    wmma::load_matrix_sync(fa, a + at(la, row, k0, lda), lda);
    wmma::load_matrix_sync(fb, b + at(lb, k0, col, ldb), ldb);
    if (round) {
      round_inputs(fa, (const TFrag*)nullptr);
      round_inputs(fb, (const TFrag*)nullptr);
    }
    wmma::mma_sync(acc, fa, fb, acc);
  }
  const wmma::layout_t layout = cd_col_major ? wmma::mem_col_major : wmma::mem_row_major;
  const long long offset = cd_col_major ? (long long)col * m + row : (long long)row * n + col;
  const int ldc = cd_col_major ? m : n;
  wmma::load_matrix_sync(fc, c + offset, ldc, layout);
  for (int i = 0; i < acc.num_elements; ++i) acc.x[i] = alpha * acc.x[i] + beta * fc.x[i];
  wmma::store_matrix_sync(d + offset, acc, ldc, layout);
}

template <typename LA, typename LB>
__global__ void wmma_gemm_half(const __half* __restrict__ a, const __half* __restrict__ b,
                               const float* __restrict__ c, float* __restrict__ d, int m, int n,
                               int k, float alpha, float beta, int cd_col_major) {
  tile_gemm<__half, __half, 16, LA, LB>(a, b, c, d, m, n, k, alpha, beta, cd_col_major, 0);
}

// A row-major, B column-major; sm_80+.
extern "C" __global__ void wmma_gemm_bf16(const __nv_bfloat16* __restrict__ a,
                                          const __nv_bfloat16* __restrict__ b,
                                          const float* __restrict__ c, float* __restrict__ d,
                                          int m, int n, int k, float alpha, float beta,
                                          int cd_col_major) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  tile_gemm<__nv_bfloat16, __nv_bfloat16, 16, wmma::row_major, wmma::col_major>(
      a, b, c, d, m, n, k, alpha, beta, cd_col_major, 0);
#endif
}

// A row-major, B column-major, float inputs as tf32 (rounded with __float_to_tf32 when
// round_inputs != 0, else passed as they are); sm_80+.
extern "C" __global__ void wmma_gemm_tf32(const float* __restrict__ a, const float* __restrict__ b,
                                          const float* __restrict__ c, float* __restrict__ d,
                                          int m, int n, int k, float alpha, float beta,
                                          int cd_col_major, int round_inputs) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  tile_gemm<float, wmma::precision::tf32, 8, wmma::row_major, wmma::col_major>(
      a, b, c, d, m, n, k, alpha, beta, cd_col_major, round_inputs);
#endif
}

// y = __float_to_tf32(x); sm_80+.
extern "C" __global__ void tf32_round(const float* __restrict__ x, float* __restrict__ y,
                                      long long n) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  DL_GRID_STRIDE_LOOP(i, n) y[i] = wmma::__float_to_tf32(x[i]);
#endif
}

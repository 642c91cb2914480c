// half.cuh -- the storage/arithmetic split of dlcore's 16-bit float kernels, shared by every
// family: a kernel templated on its storage type T loads through widen() into Acc<T> (T itself
// for float and double, float for __half and __nv_bfloat16), computes there, and rounds each
// stored result once through narrow<T>() (round to nearest even, as NumPy and ml_dtypes do).
// Only conversions are used, no 16-bit arithmetic: both types then need nothing beyond sm_70
// (bfloat16 arithmetic intrinsics would need sm_80; its conversions do not).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace dl {

template <typename T>
struct Acc {
  typedef T type;
};
template <>
struct Acc<__half> {
  typedef float type;
};
template <>
struct Acc<__nv_bfloat16> {
  typedef float type;
};

template <typename T>
__device__ __forceinline__ T widen(T v) {
  return v;
}
__device__ __forceinline__ float widen(__half v) { return __half2float(v); }
__device__ __forceinline__ float widen(__nv_bfloat16 v) { return __bfloat162float(v); }

// The one rounding of a result to the storage type (none for float and double).
template <typename T>
__device__ __forceinline__ T narrow(typename Acc<T>::type v) {
  return v;
}
template <>
__device__ __forceinline__ __half narrow<__half>(float v) {
  return __float2half(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 narrow<__nv_bfloat16>(float v) {
  return __float2bfloat16(v);
}

}  // namespace dl

// half.cuh -- the storage/arithmetic split of dlcore's __half kernels, shared by every family:
// a kernel templated on its storage type T loads through widen() into Acc<T> (T itself for
// float and double, float for __half), computes there, and rounds each stored result once
// through narrow<T>().
#pragma once

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

template <typename T>
__device__ __forceinline__ T widen(T v) {
  return v;
}
__device__ __forceinline__ float widen(__half v) { return __half2float(v); }

// The one rounding of a result to the storage type (none for float and double).
template <typename T>
__device__ __forceinline__ T narrow(typename Acc<T>::type v) {
  return v;
}
template <>
__device__ __forceinline__ __half narrow<__half>(float v) {
  return __float2half(v);
}

}  // namespace dl

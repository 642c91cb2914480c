// common.cuh -- helpers shared by dlcore's kernel families.
//
// Index arithmetic is 64-bit (`index_t`): a tensor may hold more than 2^31 elements, and
// `blockIdx.x * blockDim.x` in 32 bits silently wraps. Use the grid-stride loop for elementwise
// work so any grid size covers any n. Warp reductions assume full 32-lane warps (blockDim.x a
// multiple of 32); block_reduce_sum needs blockDim.x <= 1024 and every thread of the block to
// call it (it contains barriers).
#pragma once

namespace dl {

typedef long long index_t;

// This thread's position in a 1-D grid, and the stride of a grid-stride loop, in 64 bits.
__device__ __forceinline__ index_t global_index_1d() {
  return (index_t)blockIdx.x * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ index_t grid_stride_1d() { return (index_t)gridDim.x * blockDim.x; }

// Sum / max of `v` over the 32 lanes of a warp; every lane gets the result.
template <typename T>
__device__ __forceinline__ T warp_reduce_sum(T v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_reduce_max(T v) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    T other = __shfl_xor_sync(0xffffffffu, v, offset);
    v = other > v ? other : v;
  }
  return v;
}

// Sum of `v` over the block; the result is valid in every thread. Two barriers: one so the
// per-warp partials are visible, one so a following call cannot overwrite them early.
template <typename T>
__device__ T block_reduce_sum(T v) {
  __shared__ T warp_partials[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int num_warps = (blockDim.x + 31) >> 5;
  v = warp_reduce_sum(v);
  if (lane == 0) warp_partials[warp] = v;
  __syncthreads();
  T total = lane < num_warps ? warp_partials[lane] : T(0);
  total = warp_reduce_sum(total);
  __syncthreads();
  return total;
}

}  // namespace dl

// for (index_t i = ...; i < n; i += stride): covers [0, n) whatever the grid size.
#define DL_GRID_STRIDE_LOOP(i, n) \
  for (::dl::index_t i = ::dl::global_index_1d(); i < (::dl::index_t)(n); i += ::dl::grid_stride_1d())

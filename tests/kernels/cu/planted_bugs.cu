// planted_bugs.cu -- kernels with one deliberate bug each, so the tests can prove the emulator
// catches it. Each is a copy of a kernel in samples.cu with the bug marked "BUG:".
#include "common.cuh"

// block_sum without the barrier after filling the shared buffer: a thread may read a partner's
// slot before the partner wrote it (NaN-filled shared memory, random fiber order).
extern "C" __global__ void block_sum_missing_barrier(const float* __restrict__ x,
                                                     float* __restrict__ partial, long long n) {
  __shared__ float buf[256];
  float acc = 0.f;
  DL_GRID_STRIDE_LOOP(i, n) acc += x[i];
  buf[threadIdx.x] = acc;
  // BUG: missing __syncthreads();
  for (unsigned stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) buf[threadIdx.x] += buf[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = buf[0];
}

// block_sum where only the active half reaches the loop's barrier.
extern "C" __global__ void block_sum_divergent_barrier(const float* __restrict__ x,
                                                       float* __restrict__ partial, long long n) {
  __shared__ float buf[256];
  float acc = 0.f;
  DL_GRID_STRIDE_LOOP(i, n) acc += x[i];
  buf[threadIdx.x] = acc;
  __syncthreads();
  for (unsigned stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) {
      buf[threadIdx.x] += buf[threadIdx.x + stride];
      __syncthreads();  // BUG: inside the divergent branch
    }
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = buf[0];
}

// block_sum where threads past the end skip the store, leaving their slot unwritten.
extern "C" __global__ void block_sum_uninitialised(const float* __restrict__ x,
                                                   float* __restrict__ partial, long long n) {
  __shared__ float buf[256];
  const dl::index_t i = dl::global_index_1d();
  if (i < n) buf[threadIdx.x] = x[i];  // BUG: no "else buf[threadIdx.x] = 0"
  __syncthreads();
  for (unsigned stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) buf[threadIdx.x] += buf[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = buf[0];
}

// scale with an off-by-one bound: thread n writes one past the end of y.
extern "C" __global__ void scale_out_of_bounds(const float* __restrict__ x, float* __restrict__ y,
                                               float alpha, long long n) {
  const dl::index_t i = dl::global_index_1d();
  if (i <= n) y[i] = alpha * (i < n ? x[i] : 0.f);  // BUG: i <= n
}

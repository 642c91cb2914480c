// samples.cu -- small correct kernels that exercise the emulator and the compile check (they are
// test fixtures, not product kernels). Each has a NumPy twin in tests/kernels/test_emulator.py.
// Shape letters: N elements; R x C matrices.
#include "common.cuh"

// dlcore: instantiate block_sum<float>
// dlcore: instantiate block_sum<double>
// dlcore: instantiate transpose_tiled<float>
// dlcore: instantiate scale<float>
// dlcore: instantiate scale<double>

// Per-block sums by a shared-memory tree: blockDim.x must be a power of two <= 256.
// Grid-stride accumulation first, so any grid covers any N.
template <typename T>
__global__ void block_sum(const T* __restrict__ x, T* __restrict__ partial, long long n) {
  __shared__ T buf[256];
  T acc = T(0);
  DL_GRID_STRIDE_LOOP(i, n) acc += x[i];
  buf[threadIdx.x] = acc;
  __syncthreads();
  for (unsigned stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) buf[threadIdx.x] += buf[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = buf[0];
}

// Per-block sums through warp shuffles (dl::block_reduce_sum); blockDim.x a multiple of 32.
extern "C" __global__ void warp_block_sum(const float* __restrict__ x, float* __restrict__ partial,
                                          long long n) {
  float acc = 0.f;
  DL_GRID_STRIDE_LOOP(i, n) acc += x[i];
  const float total = dl::block_reduce_sum(acc);
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

// Count of x > 0 by warp ballots; one atomicAdd per warp. blockDim.x a multiple of 32.
extern "C" __global__ void count_positive(const float* __restrict__ x, int* __restrict__ count,
                                          long long n) {
  int mine = 0;
  DL_GRID_STRIDE_LOOP(i, n) mine += x[i] > 0.f;
  const int warp_total = dl::warp_reduce_sum(mine);
  const unsigned any = __ballot_sync(0xffffffffu, warp_total > 0);
  if ((threadIdx.x & 31) == 0 && any != 0u) atomicAdd(count, warp_total);
}

// out (C x R) = in (R x C)ᵀ through a (TILE x TILE+1) tile in dynamic shared memory (the +1
// avoids bank conflicts). Block (TILE, ROWS); grid (ceil(C/TILE), ceil(R/TILE));
// shared_mem = TILE * (TILE + 1) * sizeof(T).
template <typename T>
__global__ void transpose_tiled(const T* __restrict__ in, T* __restrict__ out, int rows, int cols) {
  extern __shared__ unsigned char tile_bytes[];
  T* tile = reinterpret_cast<T*>(tile_bytes);
  const int tile_dim = blockDim.x;
  const int c = blockIdx.x * tile_dim + threadIdx.x;
  for (int dy = threadIdx.y; dy < tile_dim; dy += blockDim.y) {
    const int r = blockIdx.y * tile_dim + dy;
    if (r < rows && c < cols) tile[dy * (tile_dim + 1) + threadIdx.x] = in[(dl::index_t)r * cols + c];
  }
  __syncthreads();
  const int out_c = blockIdx.y * tile_dim + threadIdx.x;  // a column of out = a row of in
  for (int dy = threadIdx.y; dy < tile_dim; dy += blockDim.y) {
    const int out_r = blockIdx.x * tile_dim + dy;
    if (out_r < cols && out_c < rows)
      out[(dl::index_t)out_r * rows + out_c] = tile[threadIdx.x * (tile_dim + 1) + dy];
  }
}

// Histogram of integer labels into `bins` counters: a per-block histogram in shared memory
// (bins <= 1024), then one global atomicAdd per non-empty bin.
extern "C" __global__ void histogram(const int* __restrict__ labels, int* __restrict__ counts,
                                     long long n, int bins) {
  __shared__ int local[1024];
  for (int b = threadIdx.x; b < bins; b += blockDim.x) local[b] = 0;
  __syncthreads();
  DL_GRID_STRIDE_LOOP(i, n) atomicAdd(&local[labels[i]], 1);
  __syncthreads();
  for (int b = threadIdx.x; b < bins; b += blockDim.x)
    if (local[b] != 0) atomicAdd(&counts[b], local[b]);
}

// y = alpha * x, elementwise.
template <typename T>
__global__ void scale(const T* __restrict__ x, T* __restrict__ y, T alpha, long long n) {
  DL_GRID_STRIDE_LOOP(i, n) y[i] = alpha * x[i];
}

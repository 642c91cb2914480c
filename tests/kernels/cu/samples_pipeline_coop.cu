// samples_pipeline_coop.cu -- small correct kernels for the emulator's asynchronous copies
// (cuda_pipeline.h), cooperative launches (cooperative_groups.h) and __launch_bounds__ (test
// fixtures, not product kernels). NumPy twins in tests/kernels/test_emu_pipeline_coop.py.
// Shape letters: R x C matrices; N elements.
#include <cooperative_groups.h>
#include <cuda_pipeline.h>

#include "common.cuh"

namespace cg = cooperative_groups;

// dlcore: instantiate scale_bounded<128>

// 16 bytes, the widest asynchronous copy.
struct alignas(16) Quad {
  float v[4];
};

// This thread's share of tile `tile` of a row of `chunks` Quads into `slot`: one 16-byte copy;
// past the row's end the copy reads nothing and zero-fills (zfill = 16) instead of branching.
__device__ __forceinline__ void issue_tile(Quad* slot, const Quad* row, int chunks, int tile) {
  const int c = tile * blockDim.x + threadIdx.x;
  const bool inside = c < chunks;
  __pipeline_memcpy_async(&slot[threadIdx.x], inside ? &row[c] : row, sizeof(Quad),
                          inside ? 0 : sizeof(Quad));
}

// Row sums of an R x C matrix (C a multiple of 4), a block per row (grid-stride over rows),
// blockDim.x a multiple of 32 and <= 256. Each row streams through a two-stage ring of
// blockDim.x Quads in shared memory filled by asynchronous copies: tile k+1 is in flight while
// tile k is summed. Each thread sums the Quad its mirror thread copied, so a stage is read only
// after every thread waited for its own copies and the block met at a barrier.
extern "C" __global__ void row_sums_pipelined(const float* __restrict__ x,
                                              float* __restrict__ sums, int rows, int cols) {
  __shared__ Quad stage[2 * 256];
  const int mirror = blockDim.x - 1 - threadIdx.x;
  const int chunks = cols / 4, tiles = (chunks + blockDim.x - 1) / blockDim.x;
  for (int r = blockIdx.x; r < rows; r += gridDim.x) {
    const Quad* row = reinterpret_cast<const Quad*>(x + (dl::index_t)r * cols);
    float acc = 0.f;
    issue_tile(stage, row, chunks, 0);
    __pipeline_commit();
    for (int k = 0; k < tiles; ++k) {
      if (k + 1 < tiles) issue_tile(stage + ((k + 1) & 1) * blockDim.x, row, chunks, k + 1);
      __pipeline_commit();       // possibly empty: one group per iteration keeps the count
      __pipeline_wait_prior(1);  // this thread's copies of tile k have landed ...
      __syncthreads();           // ... and every other thread's
      const Quad q = stage[(k & 1) * blockDim.x + mirror];
      acc += (q.v[0] + q.v[1]) + (q.v[2] + q.v[3]);
      __syncthreads();  // the stage is free for tile k + 2
    }
    const float total = dl::block_reduce_sum(acc);
    if (threadIdx.x == 0) sums[r] = total;
  }
}

// out = x / sum(x) in one cooperative launch: per-block partial sums, grid.sync(), then every
// block adds the partials in block order (the same bits in every block) and scales its share.
// blockDim.x a power of two <= 256; the grid must be co-resident (a cooperative launch).
extern "C" __global__ void normalize_by_sum(const float* __restrict__ x, float* partial,
                                            float* __restrict__ out, long long n) {
  cg::grid_group grid = cg::this_grid();
  cg::thread_block block = cg::this_thread_block();
  __shared__ float buf[256];
  const unsigned t = block.thread_rank();
  float acc = 0.f;
  for (unsigned long long i = grid.thread_rank(); i < (unsigned long long)n; i += grid.size())
    acc += x[i];
  buf[t] = acc;
  block.sync();
  for (unsigned stride = block.num_threads() / 2; stride > 0; stride >>= 1) {
    if (t < stride) buf[t] += buf[t + stride];
    block.sync();
  }
  if (t == 0) partial[blockIdx.x] = buf[0];
  grid.sync();
  float total = 0.f;
  for (unsigned b = 0; b < gridDim.x; ++b) total += partial[b];
  for (unsigned long long i = grid.thread_rank(); i < (unsigned long long)n; i += grid.size())
    out[i] = x[i] / total;
}

// y = alpha * x, with the block size bounded by a template parameter.
template <int kThreads>
__global__ void __launch_bounds__(kThreads) scale_bounded(const float* __restrict__ x,
                                                          float* __restrict__ y, float alpha,
                                                          long long n) {
  DL_GRID_STRIDE_LOOP(i, n) y[i] = alpha * x[i];
}

// y = x, with a bound and a minimum-blocks hint, bounds before `void`.
extern "C" __global__ __launch_bounds__(64, 4) void copy_bounded(const float* __restrict__ x,
                                                                 float* __restrict__ y,
                                                                 long long n) {
  DL_GRID_STRIDE_LOOP(i, n) y[i] = x[i];
}

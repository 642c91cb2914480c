// planted_bugs_pipeline_coop.cu -- kernels with one deliberate bug each, so the tests can prove
// the emulator catches it; the bug is marked "BUG:". Correct twins in samples_pipeline_coop.cu.
#include <cooperative_groups.h>
#include <cuda_pipeline.h>

#include "common.cuh"

namespace cg = cooperative_groups;

struct alignas(16) Quad {
  float v[4];
};

// row_sums_pipelined (one row per block, a single tile: cols <= 4 * blockDim.x) without the
// wait: the copies never land, so the stage still holds the 0xFF fill, a NaN.
extern "C" __global__ void row_sums_no_wait(const float* __restrict__ x, float* __restrict__ sums,
                                            int cols) {
  __shared__ Quad stage[256];
  const Quad* row = reinterpret_cast<const Quad*>(x + (dl::index_t)blockIdx.x * cols);
  const int c = threadIdx.x;
  const bool inside = c < cols / 4;
  __pipeline_memcpy_async(&stage[c], inside ? &row[c] : row, sizeof(Quad), inside ? 0 : 16);
  __pipeline_commit();
  // BUG: missing __pipeline_wait_prior(0);
  __syncthreads();
  const Quad q = stage[blockDim.x - 1 - c];
  const float total = dl::block_reduce_sum((q.v[0] + q.v[1]) + (q.v[2] + q.v[3]));
  if (threadIdx.x == 0) sums[blockIdx.x] = total;
}

// The same with the wait after the barrier: each thread's own copy lands, but its mirror
// thread may read the slot before that (per-thread commit groups), depending on the order.
extern "C" __global__ void row_sums_wait_after_barrier(const float* __restrict__ x,
                                                       float* __restrict__ sums, int cols) {
  __shared__ Quad stage[256];
  const Quad* row = reinterpret_cast<const Quad*>(x + (dl::index_t)blockIdx.x * cols);
  const int c = threadIdx.x;
  const bool inside = c < cols / 4;
  __pipeline_memcpy_async(&stage[c], inside ? &row[c] : row, sizeof(Quad), inside ? 0 : 16);
  __pipeline_commit();
  __syncthreads();
  __pipeline_wait_prior(0);  // BUG: after the barrier, so other threads may not see the data
  const Quad q = stage[blockDim.x - 1 - c];
  const float total = dl::block_reduce_sum((q.v[0] + q.v[1]) + (q.v[2] + q.v[3]));
  if (threadIdx.x == 0) sums[blockIdx.x] = total;
}

// The sum of x through one float atomicAdd per block: a correct total, but float addition is
// not associative, so its bits depend on the order the blocks run in.
extern "C" __global__ void total_by_atomic_add(const float* __restrict__ x, float* total,
                                               long long n) {
  float acc = 0.f;
  DL_GRID_STRIDE_LOOP(i, n) acc += x[i];
  acc = dl::block_reduce_sum(acc);
  if (threadIdx.x == 0) atomicAdd(total, acc);  // BUG: order-dependent float accumulation
}

// normalize_by_sum's two phases, where the threads past the end of x leave before the grid
// barrier that the others wait at.
extern "C" __global__ void grid_sync_after_early_exit(const float* __restrict__ x, float* partial,
                                                      long long n) {
  cg::grid_group grid = cg::this_grid();
  if (grid.thread_rank() >= (unsigned long long)n) return;  // BUG: skips grid.sync()
  partial[blockIdx.x] = x[grid.thread_rank()];
  grid.sync();
}

// The dlcore emulator's stand-in for CUDA's <cooperative_groups.h> (the emulator's folder comes
// first on g++'s include path): the grid and block groups, run by dlcore_emu_coop.h (see there
// for the model). grid.sync() needs a cooperative launch (RawModule(...,
// enable_cooperative_groups=True)). Tiled partitions, coalesced groups, cluster groups and the
// collectives of <cooperative_groups/reduce.h> are not emulated. The trailing line arguments are
// the emulator's, for its messages.
#pragma once

namespace cooperative_groups {

class thread_block {
 public:
  static void sync(int line = __builtin_LINE()) { ::dlemu::syncthreads_at(line); }
  static unsigned thread_rank() {
    return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  }
  static unsigned num_threads() { return blockDim.x * blockDim.y * blockDim.z; }
  static unsigned size() { return num_threads(); }
  static dim3 group_index() { return blockIdx; }
  static dim3 thread_index() { return threadIdx; }
  static dim3 group_dim() { return blockDim; }
  static dim3 dim_threads() { return blockDim; }
};

class grid_group {
 public:
  static void sync(int line = __builtin_LINE()) { ::dlemu::grid_sync_at(line); }
  static bool is_valid() { return ::dlemu::running_grid != nullptr; }
  static unsigned long long num_blocks() {
    return (unsigned long long)gridDim.x * gridDim.y * gridDim.z;
  }
  static unsigned long long block_rank() {
    return blockIdx.x + gridDim.x * (blockIdx.y + (unsigned long long)gridDim.y * blockIdx.z);
  }
  static unsigned long long num_threads() { return num_blocks() * thread_block::num_threads(); }
  static unsigned long long size() { return num_threads(); }
  static unsigned long long thread_rank() {
    return block_rank() * thread_block::num_threads() + thread_block::thread_rank();
  }
  static dim3 group_dim() { return blockDim; }
  static dim3 dim_blocks() { return gridDim; }
  static dim3 block_index() { return blockIdx; }
};

inline thread_block this_thread_block() { return thread_block(); }
inline grid_group this_grid() { return grid_group(); }

template <typename Group>
inline void sync(const Group& group, int line = __builtin_LINE()) {
  group.sync(line);
}

}  // namespace cooperative_groups

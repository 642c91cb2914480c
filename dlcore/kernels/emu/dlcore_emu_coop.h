// dlcore CUDA emulator: cooperative launches -- the grid barrier behind
// cooperative_groups::this_grid().sync(), the co-residency limit, and the scheduler that runs
// every block of a cooperative grid at once. The CUDA names are declared by the emulator's
// stand-in cooperative_groups.h; the launch itself is set up in dlcore_emu_launch.h. Included
// from dlcore_emu.h.
//
// Model. A module built with enable_cooperative_groups=True launches each of its kernels
// cooperatively, as CuPy does (cuLaunchCooperativeKernel): every block of the grid is resident
// at once, so the threads of all blocks are fibers of one scheduler, run in a seeded random
// order across blocks, and grid.sync() returns once every thread of the grid waits at it. A
// grid.sync() in a kernel launched otherwise raises: on a GPU its blocks need not be resident
// together, and the barrier may hang.
//
// Co-residency limit. CUDA refuses a cooperative grid larger than (blocks per SM) x (SMs)
// (cudaErrorCooperativeLaunchTooLarge). The emulated device has kCoopSMs = 8 SMs with sm_90's
// per-SM limits: 2048 threads, 32 blocks, 228 KiB of shared memory of which 1 KiB is reserved
// per block; registers and static shared memory are not counted (unknown before the run). Eight
// SMs rather than a real GPU's 80-132 bound a cooperative launch to 16384 fibers: their stacks
// (256 KiB reserved, a few KiB touched each) and guard pages (two mappings per stack, under
// Linux's default limit of 65530 mappings) stay small. A kernel sizes a cooperative grid from
// the occupancy of the device it runs on, never from a fixed count, so the small emulated
// device is a valid one to test against.
#pragma once

namespace dlemu {

constexpr uint64_t kCoopSMs = 8, kSMThreads = 2048, kSMBlocks = 32;
constexpr uint64_t kSMShared = 228 * 1024, kBlockReservedShared = 1024;

// The running cooperative grid: one Launch per block (its fibers, shared memory and index).
struct Grid {
  Launch* master = nullptr;
  std::vector<Launch*> blocks;
};

inline thread_local Grid* running_grid = nullptr;

// How many blocks of `threads` threads and `dynamic_shared` bytes can be co-resident.
inline uint64_t coop_block_limit(unsigned threads, int64_t dynamic_shared) {
  uint64_t warp_threads = (threads + kWarp - 1) / kWarp * kWarp;
  uint64_t by_threads = kSMThreads / warp_threads;
  uint64_t by_shared = kSMShared / ((uint64_t)dynamic_shared + kBlockReservedShared);
  uint64_t per_sm = kSMBlocks < by_threads ? kSMBlocks : by_threads;
  per_sm = per_sm < by_shared ? per_sm : by_shared;
  return per_sm * kCoopSMs;
}

inline bool check_co_residency(uint64_t nblocks, unsigned threads) {
  uint64_t limit = coop_block_limit(threads, L->spec->shared_mem);
  if (nblocks <= limit) return true;
  set_error("cooperative launch too large (CUDA: cudaErrorCooperativeLaunchTooLarge): grid "
            "(%u,%u,%u) has %llu blocks of %u threads and %lld bytes of dynamic shared memory, "
            "but at most %llu such blocks can be co-resident on the emulated device (%llu SMs "
            "x %llu blocks; per SM: %llu threads, %llu blocks, %llu KiB shared memory)",
            L->grid.x, L->grid.y, L->grid.z, (unsigned long long)nblocks, threads,
            (long long)L->spec->shared_mem, (unsigned long long)limit,
            (unsigned long long)kCoopSMs, (unsigned long long)(limit / kCoopSMs),
            (unsigned long long)kSMThreads, (unsigned long long)kSMBlocks,
            (unsigned long long)(kSMShared / 1024));
  return false;
}

// A fiber waiting at grid.sync() is at State::Barrier with a negative line (-line of the call);
// one at __syncthreads has a positive line.
inline void grid_sync_at(int line) {
  if (!running_grid) {
    set_error("grid.sync() (line %d) in a kernel not launched cooperatively: build its module "
              "with RawModule(..., enable_cooperative_groups=True) (a cooperative launch); "
              "otherwise the blocks of a grid need not be resident together and the barrier "
              "can hang", line);
    fiber_abort();
  }
  L->cur->state = State::Barrier;
  L->cur->line = -line;
  yield_to_scheduler();
}

inline void describe_fiber(char* out, size_t n, const Launch* b, const Fiber* f) {
  snprintf(out, n, "block (%u,%u,%u) thread (%u,%u,%u)", b->bid.x, b->bid.y, b->bid.z, f->tid.x,
           f->tid.y, f->tid.z);
}

// Nothing can run: release the block barriers and the grid barrier that every participant
// reached, or report why the grid is stuck. False when the grid finished or failed.
inline bool resolve_grid_stall(Grid& g) {
  bool released = false;
  uint64_t waiting = 0, exited = 0;
  const Launch *wait_block = nullptr, *exit_block = nullptr;
  const Fiber *waiter = nullptr, *leaver = nullptr;
  int line_a = 0, line_b = 0;
  for (Launch* b : g.blocks) {
    unsigned in_block_sync = 0, at_grid = 0;
    for (const Fiber& f : b->fibers) {
      if (f.state == State::Collective || (f.state == State::Barrier && f.line > 0)) {
        ++in_block_sync;
      } else if (f.state == State::Barrier) {
        ++at_grid;
        if (!waiter) waiter = &f, wait_block = b;
        if (!line_a || -f.line == line_a) line_a = -f.line;
        else line_b = -f.line;
      } else if (f.state == State::Done) {
        ++exited;
        if (!leaver) leaver = &f, exit_block = b;
      }
    }
    waiting += at_grid;
    if (!in_block_sync) continue;
    L = b;
    if (at_grid) {
      set_error("barrier divergence: %u thread(s) wait at grid.sync() (line %d) while %u wait at "
                "__syncthreads or a warp collective", at_grid, line_a, in_block_sync);
      return false;
    }
    resolve_stall();  // releases the block's barrier, or reports why the block is stuck
    if (b->failed) return false;
    released = true;
  }
  if (released) return true;
  if (!waiting) return false;  // every thread has exited
  L = g.master;
  char w[64], e[64];
  describe_fiber(w, sizeof w, wait_block, waiter);
  if (exited) {
    describe_fiber(e, sizeof e, exit_block, leaver);
    set_error("grid barrier divergence: %llu thread(s) (first %s) wait at grid.sync() (line %d) "
              "but %llu thread(s) (first %s) exited without reaching it",
              (unsigned long long)waiting, w, line_a, (unsigned long long)exited, e);
    return false;
  }
  if (line_b) {
    set_error("grid barrier divergence: threads wait at different grid.sync() calls (lines %d "
              "and %d)", line_a, line_b);
    return false;
  }
  for (Launch* b : g.blocks)
    for (Fiber& f : b->fibers) f.state = State::Runnable;
  return true;
}

// Run every block's fibers together: each round runs each runnable fiber of the grid once, in a
// random order (the master's seeded generator), up to its next sync point.
inline void run_grid(Grid& g) {
  std::vector<std::pair<Launch*, Fiber*>> runnable;
  while (true) {
    runnable.clear();
    for (Launch* b : g.blocks)
      for (Fiber& f : b->fibers)
        if (f.state == State::Runnable) runnable.emplace_back(b, &f);
    if (runnable.empty()) {
      if (!resolve_grid_stall(g)) return;
      continue;
    }
    for (size_t k = runnable.size(); k > 0; --k) {
      L = g.master;
      size_t pick = (size_t)(next_random() % k);
      Launch* b = runnable[pick].first;
      Fiber* f = runnable[pick].second;
      runnable[pick] = runnable[k - 1];
      if (f->state != State::Runnable) continue;
      L = b;
      b->cur = f;
      swapcontext(&b->sched, &f->ctx);
      b->cur = nullptr;
      if (f->state == State::Collective) try_complete(*f);
      if (b->failed) return;
    }
  }
}

}  // namespace dlemu

// dlcore CUDA emulator: asynchronous global -> shared memory copies, the runtime behind the
// primitives of CUDA's <cuda_pipeline.h> (cp.async on sm_80 and later). The CUDA names are
// declared by the emulator's stand-in cuda_pipeline.h; included from dlcore_emu.h.
//
// Model. Each thread has its own sequence of commit groups, as on the hardware. A copy reads its
// source when it is issued (so a checked launch names an out-of-bounds source at the issuing
// thread) but writes its destination only when the issuing thread waits for its group
// (__pipeline_wait_prior): until then the destination keeps its previous bytes -- 0xFF, a NaN,
// if it was never written -- so a read before the wait, by the thread itself or by another
// after a barrier, shows as a wrong result, as a missing barrier does. Copies issued since the
// last commit join the next commit; copies never waited for are dropped when the block ends.
#pragma once

#include <unordered_map>

namespace dlemu {

struct AsyncCopy {
  char* dst;
  unsigned char bytes[16];
  unsigned size;
  uint64_t group;  // the number of commits the thread had made when it issued the copy
};

struct PipelineThread {
  std::vector<AsyncCopy> pending;
  uint64_t commits = 0;
};

// Per fiber of the running block (or cooperative grid); cleared when one starts.
inline thread_local std::unordered_map<const Fiber*, PipelineThread> pipelines;

inline void pipelines_reset() { pipelines.clear(); }

inline bool in_block_shared(const void* p, size_t n) {
  const char* c = static_cast<const char*>(p);
  if (c >= L->static_shared && c + n <= L->static_shared + kSharedLimit) return true;
  return L->dynamic_shared && c >= L->dynamic_shared &&
         c + n <= L->dynamic_shared + L->spec->shared_mem;
}

inline void pipeline_memcpy_async(void* dst, const void* src, size_t size, size_t zfill, int line) {
  char problem[192] = "";
  if (size != 4 && size != 8 && size != 16)
    snprintf(problem, sizeof problem, "size_and_align is %zu, not 4, 8 or 16", size);
  else if (zfill > size)
    snprintf(problem, sizeof problem, "zfill %zu exceeds size_and_align %zu", zfill, size);
  else if ((uintptr_t)dst % size || (uintptr_t)src % size)
    snprintf(problem, sizeof problem, "source %p and destination %p must be %zu-byte aligned",
             src, dst, size);
  else if (!in_block_shared(dst, size))
    snprintf(problem, sizeof problem, "the destination is not inside this block's shared memory "
             "(static __shared__ or the %lld bytes of dynamic shared memory)",
             (long long)L->spec->shared_mem);
  if (problem[0]) {
    char who[16];
    fmt_tid(who, sizeof who, L->cur->tid);
    set_error("__pipeline_memcpy_async (line %d) in thread %s: %s", line, who, problem);
    fiber_abort();
  }
  AsyncCopy c{static_cast<char*>(dst), {}, (unsigned)size, 0};
  memcpy(c.bytes, src, size - zfill);
  memset(c.bytes + (size - zfill), 0, zfill);
  PipelineThread& t = pipelines[L->cur];
  c.group = t.commits;
  t.pending.push_back(c);
}

inline void pipeline_commit() { ++pipelines[L->cur].commits; }

// Land every copy of the thread's committed groups except the newest `prior` ones.
inline void pipeline_wait_prior(size_t prior) {
  PipelineThread& t = pipelines[L->cur];
  if (prior > 8) prior = 8;  // as CUDA's header, which waits with at most 8 groups in flight
  uint64_t complete_below = t.commits > prior ? t.commits - prior : 0;
  size_t kept = 0;
  for (const AsyncCopy& c : t.pending) {
    if (c.group < complete_below) memcpy(c.dst, c.bytes, c.size);
    else t.pending[kept++] = c;
  }
  t.pending.resize(kept);
}

}  // namespace dlemu

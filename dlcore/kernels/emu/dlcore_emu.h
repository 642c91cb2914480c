// dlcore CUDA emulator runtime: lets g++ build an unmodified kernels/*.cu file (after the
// small source rewrite in build.py) into a shared object that runs kernels on the CPU.
//
// Model. A launch runs its blocks one after another on the calling OS thread. The threads of
// a block are cooperative fibers (ucontext): each runs until it reaches a sync point
// (__syncthreads, a warp collective) or returns, then the scheduler picks the next runnable
// fiber at random (seeded), so code that silently relies on an ordering between barriers gives
// a wrong answer instead of a lucky right one. Shared memory is filled with 0xFF bytes (a NaN
// for floats, -1 for ints) at each block's start, so a read of an unwritten slot shows.
//
// Bug finding raises (through Python) an EmulatorError naming the kernel: barrier divergence
// and warp-collective deadlocks always; in checked mode, out-of-bounds global reads and writes:
// every array argument is copied into its own mapping whose end abuts a PROT_NONE guard region,
// so the first byte past the end faults, and the SIGSEGV handler names the argument, the
// element, read or write, and the thread; writes before the start land in a 0xFF canary area
// that is verified after the launch.
//
// Everything is header-only and `inline`: each kernel source is one translation unit.
#pragma once

#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// ---- CUDA keywords ------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __restrict__ __restrict
// build.py moves each __launch_bounds__ into a check in the kernel body; one left here is in a
// form it does not parse (e.g. hidden behind another macro), and fails to compile with this name.
#define __launch_bounds__(...) alignas(::dlemu::launch_bounds_must_precede_the_kernel_name)
#define __align__(n) alignas(n)

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
using uint3 = dim3;

namespace dlemu {

constexpr int kWarp = 32;
constexpr size_t kSharedLimit = 48 * 1024;  // CUDA's default per-block limit without opt-in
constexpr size_t kStackBytes = 256 * 1024;
constexpr int kMaxStatic = 64;

enum class State { Runnable, Barrier, Collective, Done };
enum class Op { Shfl, ShflUp, ShflDown, ShflXor, Ballot, Any, All, SyncWarp,
                WmmaLoad, WmmaStore, WmmaMma };

inline const char* op_name(Op op) {
  switch (op) {
    case Op::Shfl: return "__shfl_sync";
    case Op::ShflUp: return "__shfl_up_sync";
    case Op::ShflDown: return "__shfl_down_sync";
    case Op::ShflXor: return "__shfl_xor_sync";
    case Op::Ballot: return "__ballot_sync";
    case Op::Any: return "__any_sync";
    case Op::All: return "__all_sync";
    case Op::SyncWarp: return "__syncwarp";
    case Op::WmmaLoad: return "wmma::load_matrix_sync";
    case Op::WmmaStore: return "wmma::store_matrix_sync";
    case Op::WmmaMma: return "wmma::mma_sync";
  }
  return "?";
}

struct Fiber {
  ucontext_t ctx;
  dim3 tid;
  unsigned warp = 0, lane = 0;
  State state = State::Runnable;
  int line = 0;  // source line of the sync point it waits at
  int static_count = 0;
  Op op = Op::SyncWarp;
  unsigned mask = 0;
  int arg = 0, width = kWarp;
  uint64_t value = 0, result = 0;
};

// One array argument of a checked launch, living in a guarded mapping.
struct Guarded {
  char* map = nullptr;
  size_t map_len = 0;
  char* data = nullptr;  // where the kernel sees the array
  char* orig = nullptr;  // the caller's array
  size_t nbytes = 0, itemsize = 1, slack = 0;
  int argi = -1;  // -1: dynamic shared memory
  bool copy_back = false;
};

// What Python passes for one kernel argument (mirrors _ArgDesc in build.py).
struct ArgDesc {
  void* ptr;         // array data, or the scalar's bytes
  int64_t nbytes;    // array size in bytes, or the scalar's size
  int64_t itemsize;  // array element size; 0 for a scalar
  const char* name;  // parameter name from the source, or "#i"
  int32_t writable;
};

struct LaunchSpec {
  uint32_t grid[3], block[3];
  int64_t shared_mem;
  uint64_t seed;
  int32_t checked;
  int32_t nargs;
  const ArgDesc* args;
  char* err;
  int32_t errlen;
};

struct Launch {
  const LaunchSpec* spec = nullptr;
  dim3 grid, block, bid;
  std::vector<Fiber> fibers;
  std::vector<char*> stacks;
  std::vector<Guarded> guarded;
  ucontext_t sched;
  Fiber* cur = nullptr;
  char static_shared[kSharedLimit] __attribute__((aligned(128)));
  size_t static_off[kMaxStatic], static_size[kMaxStatic], static_top = 0;
  int nstatic = 0;
  char* dynamic_shared = nullptr;
  std::vector<char> dynamic_plain;
  void (*body)(void*) = nullptr;
  void* body_ctx = nullptr;
  uint64_t rng = 0;
  bool failed = false;
  bool running = false;  // inside the block loop: errors name the block
};

inline thread_local Launch* L = nullptr;

// ---- errors -------------------------------------------------------------------------------
inline void fmt_tid(char* out, size_t n, const dim3& t) { snprintf(out, n, "(%u,%u,%u)", t.x, t.y, t.z); }

__attribute__((format(printf, 1, 2))) inline void set_error(const char* fmt, ...) {
  if (L->failed) return;
  L->failed = true;
  char* out = L->spec->err;
  size_t n = (size_t)L->spec->errlen;
  int used = L->running ? snprintf(out, n, "block (%u,%u,%u): ", L->bid.x, L->bid.y, L->bid.z) : 0;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(out + used, n - (size_t)used, fmt, ap);
  va_end(ap);
}

// Called from a fiber: record the error and leave the fiber for good.
[[noreturn]] inline void fiber_abort() {
  Fiber* f = L->cur;
  f->state = State::Done;
  setcontext(&L->sched);
  __builtin_unreachable();
}

// ---- fiber scheduling ---------------------------------------------------------------------
inline uint64_t next_random() {
  uint64_t x = L->rng;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return L->rng = x;
}

inline void yield_to_scheduler() { swapcontext(&L->cur->ctx, &L->sched); }

inline void fiber_main() {
  L->body(L->body_ctx);
  L->cur->state = State::Done;
  setcontext(&L->sched);
}

inline unsigned warp_lanes(unsigned warp) {
  unsigned nthreads = L->block.x * L->block.y * L->block.z;
  unsigned first = warp * kWarp;
  unsigned n = nthreads - first < (unsigned)kWarp ? nthreads - first : (unsigned)kWarp;
  return n == 32 ? 0xffffffffu : ((1u << n) - 1u);
}

inline uint64_t undefined_bits() { return ~0ull; }

// Complete the collective of `f`'s group if every lane named in its mask has arrived.
inline bool try_complete(Fiber& f) {
  unsigned live = warp_lanes(f.warp), group = f.mask & live;
  Fiber* base = &L->fibers[f.warp * kWarp];
  for (unsigned l = 0; l < (unsigned)kWarp; ++l) {
    if (!(group >> l & 1u)) continue;
    Fiber& g = base[l];
    if (g.state != State::Collective || g.mask != f.mask || g.op != f.op) return false;
  }
  uint64_t ballot = 0;
  for (unsigned l = 0; l < (unsigned)kWarp; ++l)
    if ((group >> l & 1u) && base[l].value) ballot |= 1ull << l;
  for (unsigned l = 0; l < (unsigned)kWarp; ++l) {
    if (!(group >> l & 1u)) continue;
    Fiber& g = base[l];
    int w = g.width, seg = (int)l & ~(w - 1), src = -1;
    switch (g.op) {
      case Op::Shfl: src = seg + (g.arg & (w - 1)); break;
      case Op::ShflUp: src = ((int)l & (w - 1)) - g.arg < 0 ? (int)l : (int)l - g.arg; break;
      case Op::ShflDown: src = ((int)l & (w - 1)) + g.arg >= w ? (int)l : (int)l + g.arg; break;
      case Op::ShflXor: src = ((int)l ^ g.arg) >= seg + w ? (int)l : ((int)l ^ g.arg); break;
      case Op::Ballot: g.result = ballot; break;
      case Op::Any: g.result = ballot != 0; break;
      case Op::All: g.result = ballot == (uint64_t)group; break;
      case Op::SyncWarp:
      case Op::WmmaLoad:  // the last lane to arrive did the work (dlcore_emu_wmma.h)
      case Op::WmmaStore:
      case Op::WmmaMma: break;
    }
    if (src >= 0)  // a lane outside the group has no defined value on hardware either
      g.result = (group >> src & 1u) ? base[src].value : undefined_bits();
  }
  for (unsigned l = 0; l < (unsigned)kWarp; ++l)
    if (group >> l & 1u) base[l].state = State::Runnable;
  return true;
}

inline void describe_lanes(char* out, size_t n, unsigned warp, unsigned lanes) {
  int used = snprintf(out, n, "warp %u lanes {", warp);
  bool first = true;
  for (unsigned l = 0; l < (unsigned)kWarp && (size_t)used < n; ++l)
    if (lanes >> l & 1u) {
      used += snprintf(out + used, n - (size_t)used, first ? "%u" : ",%u", l);
      first = false;
    }
  if ((size_t)used < n) snprintf(out + used, n - (size_t)used, "}");
}

// Nothing can run: release a barrier everyone reached, or report why the block is stuck.
inline void resolve_stall() {
  int at_barrier = 0, done = 0, line_a = 0, line_b = 0, n_a = 0, n_b = 0;
  Fiber *waiting = nullptr, *exited = nullptr;
  for (Fiber& f : L->fibers) {
    if (f.state == State::Collective) {
      unsigned live = warp_lanes(f.warp), missing = 0;
      for (unsigned l = 0; l < (unsigned)kWarp; ++l) {
        Fiber& g = L->fibers[f.warp * kWarp + l];
        if ((f.mask & live) >> l & 1u && !(g.state == State::Collective && g.mask == f.mask && g.op == f.op))
          missing |= 1u << l;
      }
      char lanes[160], who[16];
      describe_lanes(lanes, sizeof lanes, f.warp, missing);
      fmt_tid(who, sizeof who, f.tid);
      set_error("warp collective deadlock: thread %s waits at %s (line %d, mask 0x%08x) but %s "
                "never join it (they exited, wait at a barrier, or use another mask/collective)",
                who, op_name(f.op), f.line, f.mask, lanes);
      return;
    }
    if (f.state == State::Done) {
      ++done;
      if (!exited) exited = &f;
    } else if (f.state == State::Barrier) {
      ++at_barrier;
      if (!waiting) waiting = &f;
      if (n_a == 0 || f.line == line_a) line_a = f.line, ++n_a;
      else line_b = f.line, ++n_b;
    }
  }
  if (at_barrier == 0) return;
  char w[16], e[16];
  fmt_tid(w, sizeof w, waiting->tid);
  if (done > 0) {
    fmt_tid(e, sizeof e, exited->tid);
    set_error("barrier divergence: %d thread(s) (first %s) wait at __syncthreads (line %d) but %d "
              "thread(s) (first %s) exited without reaching it",
              at_barrier, w, waiting->line, done, e);
    return;
  }
  if (n_b > 0) {
    set_error("barrier divergence: threads wait at different __syncthreads calls "
              "(%d at line %d, %d at line %d)", n_a, line_a, n_b, line_b);
    return;
  }
  for (Fiber& f : L->fibers) f.state = State::Runnable;
}

inline void run_block(const ucontext_t& proto) {
  unsigned n = L->block.x * L->block.y * L->block.z;
  memset(L->static_shared, 0xFF, sizeof L->static_shared);
  if (L->dynamic_shared) memset(L->dynamic_shared, 0xFF, (size_t)L->spec->shared_mem);
  L->nstatic = 0;
  L->static_top = 0;
  std::vector<unsigned> runnable;
  runnable.reserve(n);
  for (unsigned i = 0; i < n; ++i) {
    Fiber& f = L->fibers[i];
    f.tid = dim3(i % L->block.x, (i / L->block.x) % L->block.y, i / (L->block.x * L->block.y));
    f.warp = i / kWarp;
    f.lane = i % kWarp;
    f.state = State::Runnable;
    f.static_count = 0;
    f.ctx = proto;
    f.ctx.uc_stack.ss_sp = L->stacks[i];
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, fiber_main, 0);
  }
  while (!L->failed) {
    runnable.clear();
    for (unsigned i = 0; i < n; ++i)
      if (L->fibers[i].state == State::Runnable) runnable.push_back(i);
    if (runnable.empty()) {
      bool all_done = true;
      for (unsigned i = 0; i < n; ++i) all_done &= L->fibers[i].state == State::Done;
      if (all_done) return;
      resolve_stall();
      continue;
    }
    // Run every currently runnable fiber once, in a random order, up to its next sync point.
    for (size_t k = runnable.size(); k > 0 && !L->failed; --k) {
      size_t pick = (size_t)(next_random() % k);
      Fiber& f = L->fibers[runnable[pick]];
      runnable[pick] = runnable[k - 1];
      if (f.state != State::Runnable) continue;
      L->cur = &f;
      swapcontext(&L->sched, &f.ctx);
      L->cur = nullptr;
      if (f.state == State::Collective) try_complete(f);
    }
  }
}

// ---- sync points called from kernels ------------------------------------------------------
inline void syncthreads_at(int line) {
  L->cur->state = State::Barrier;
  L->cur->line = line;
  yield_to_scheduler();
}

inline uint64_t collective(int line, Op op, unsigned mask, uint64_t value, int arg, int width) {
  Fiber* f = L->cur;
  if (!(mask >> f->lane & 1u)) {
    char who[16];
    fmt_tid(who, sizeof who, f->tid);
    set_error("%s (line %d): mask 0x%08x does not include the calling lane %u of thread %s",
              op_name(op), line, mask, f->lane, who);
    fiber_abort();
  }
  if (width <= 0 || width > kWarp || (width & (width - 1))) {
    set_error("%s (line %d): width %d is not a power of two in [1, 32]", op_name(op), line, width);
    fiber_abort();
  }
  f->state = State::Collective;
  f->line = line;
  f->op = op;
  f->mask = mask;
  f->value = value;
  f->arg = arg;
  f->width = width;
  yield_to_scheduler();
  return f->result;
}

inline void syncwarp_at(int line, unsigned mask = 0xffffffffu) {
  collective(line, Op::SyncWarp, mask, 0, 0, kWarp);
}

// __syncwarp() and __syncwarp(mask) both: the macro makes this object (carrying the line) and
// the call supplies the optional mask. NOTE: not `f(__LINE__, ##__VA_ARGS__)`: under
// -std=c++17 (not gnu++17) g++ keeps the comma when the arguments are empty.
struct SyncWarpAt {
  int line;
  void operator()(unsigned mask = 0xffffffffu) const { syncwarp_at(line, mask); }
};

template <typename T>
inline uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a type over 8 bytes");
  uint64_t b = 0;
  memcpy(&b, &v, sizeof(T));
  return b;
}

template <typename T>
inline T from_bits(uint64_t b) {
  T v;
  memcpy(&v, &b, sizeof(T));
  return v;
}

template <typename T>
inline T shfl(int line, Op op, unsigned mask, T v, int arg, int width = kWarp) {
  return from_bits<T>(collective(line, op, mask, to_bits(v), arg, width));
}

// ---- shared memory ------------------------------------------------------------------------
// The k-th static __shared__ declaration a thread executes maps to the k-th slot of the block.
inline void* static_shared(size_t bytes, size_t align, const char* name, int line) {
  Fiber* f = L->cur;
  int k = f->static_count++;
  if (k >= kMaxStatic) {
    set_error("more than %d __shared__ declarations executed in one block", kMaxStatic);
    fiber_abort();
  }
  if (k == L->nstatic) {
    size_t off = (L->static_top + align - 1) / align * align;
    if (off + bytes + (size_t)L->spec->shared_mem > kSharedLimit) {
      set_error("__shared__ %s (line %d): %zu static + %lld dynamic bytes exceed the %zu-byte "
                "per-block limit", name, line, off + bytes, (long long)L->spec->shared_mem,
                kSharedLimit);
      fiber_abort();
    }
    L->static_off[k] = off;
    L->static_size[k] = bytes;
    L->static_top = off + bytes;
    ++L->nstatic;
  } else if (L->static_size[k] != bytes) {
    set_error("__shared__ %s (line %d): threads executed different __shared__ declarations",
              name, line);
    fiber_abort();
  }
  return L->static_shared + L->static_off[k];
}

inline void* dynamic_shared() { return L->dynamic_shared; }

// ---- atomics (cooperative fibers on one OS thread: plain read-modify-write is atomic) ------
template <typename T>
inline T atomic_rmw(T* p, T v, int op) {
  T old = *p;
  switch (op) {
    case 0: *p = old + v; break;
    case 1: *p = old < v ? v : old; break;
    case 2: *p = v < old ? v : old; break;
    case 3: *p = v; break;
    case 4: *p = old - v; break;
  }
  return old;
}

}  // namespace dlemu

// ---- CUDA built-ins -----------------------------------------------------------------------
#define threadIdx (::dlemu::L->cur->tid)
#define blockIdx (::dlemu::L->bid)
#define blockDim (::dlemu::L->block)
#define gridDim (::dlemu::L->grid)
#define warpSize 32

#define __syncthreads() ::dlemu::syncthreads_at(__LINE__)
#define __syncwarp ::dlemu::SyncWarpAt{__LINE__}
#define __shfl_sync(m, ...) ::dlemu::shfl(__LINE__, ::dlemu::Op::Shfl, m, __VA_ARGS__)
#define __shfl_up_sync(m, ...) ::dlemu::shfl(__LINE__, ::dlemu::Op::ShflUp, m, __VA_ARGS__)
#define __shfl_down_sync(m, ...) ::dlemu::shfl(__LINE__, ::dlemu::Op::ShflDown, m, __VA_ARGS__)
#define __shfl_xor_sync(m, ...) ::dlemu::shfl(__LINE__, ::dlemu::Op::ShflXor, m, __VA_ARGS__)
#define __ballot_sync(m, p) ((unsigned)::dlemu::collective(__LINE__, ::dlemu::Op::Ballot, m, (p) ? 1 : 0, 0, 32))
#define __any_sync(m, p) ((int)::dlemu::collective(__LINE__, ::dlemu::Op::Any, m, (p) ? 1 : 0, 0, 32))
#define __all_sync(m, p) ((int)::dlemu::collective(__LINE__, ::dlemu::Op::All, m, (p) ? 1 : 0, 0, 32))

inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

template <typename T> inline T __ldg(const T* p) { return *p; }

#define DLEMU_ATOMICS(T)                                                                \
  inline T atomicAdd(T* p, T v) { return ::dlemu::atomic_rmw<T>(p, v, 0); }             \
  inline T atomicExch(T* p, T v) { return ::dlemu::atomic_rmw<T>(p, v, 3); }
DLEMU_ATOMICS(int)
DLEMU_ATOMICS(unsigned)
DLEMU_ATOMICS(unsigned long long)
DLEMU_ATOMICS(float)
DLEMU_ATOMICS(double)
#undef DLEMU_ATOMICS
#define DLEMU_INT_ATOMICS(T)                                                            \
  inline T atomicMax(T* p, T v) { return ::dlemu::atomic_rmw<T>(p, v, 1); }             \
  inline T atomicMin(T* p, T v) { return ::dlemu::atomic_rmw<T>(p, v, 2); }             \
  inline T atomicSub(T* p, T v) { return ::dlemu::atomic_rmw<T>(p, v, 4); }             \
  inline T atomicCAS(T* p, T cmp, T v) { T old = *p; if (old == cmp) *p = v; return old; }
DLEMU_INT_ATOMICS(int)
DLEMU_INT_ATOMICS(unsigned)
DLEMU_INT_ATOMICS(unsigned long long)
#undef DLEMU_INT_ATOMICS

// ---- device math not in <math.h> ----------------------------------------------------------
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanhf(float x) { return tanhf(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __fdividef(float x, float y) { return x / y; }
inline void sincospi(double x, double* s, double* c) {
  *s = sin(M_PI * x);
  *c = cos(M_PI * x);
}
inline void sincospif(float x, float* s, float* c) {
  *s = sinf((float)M_PI * x);
  *c = cosf((float)M_PI * x);
}
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
inline float __int_as_float(int v) { return ::dlemu::from_bits<float>((uint32_t)v); }
inline int __float_as_int(float v) { return (int)(uint32_t)::dlemu::to_bits(v); }
inline float __uint_as_float(unsigned v) { return ::dlemu::from_bits<float>(v); }
inline unsigned __float_as_uint(float v) { return (unsigned)::dlemu::to_bits(v); }
inline unsigned __umulhi(unsigned a, unsigned b) {
  return (unsigned)(((unsigned long long)a * b) >> 32);
}
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
  return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
inline int __clz(int v) { return v == 0 ? 32 : __builtin_clz((unsigned)v); }
inline int __ffs(int v) { return __builtin_ffs(v); }

template <typename A, typename B>
inline typename std::common_type<A, B>::type min(A a, B b) { return b < a ? b : a; }
template <typename A, typename B>
inline typename std::common_type<A, B>::type max(A a, B b) { return a < b ? b : a; }

#include "dlcore_emu_vector.h"  // float2 float4 int2 int4 ..., misaligned-access check
#include "dlcore_emu_fp16.h"    // __half __half2 __nv_bfloat16 __nv_bfloat162
#include "dlcore_emu_wmma.h"    // nvcuda::wmma tensor-core fragments
#include "dlcore_emu_pipeline.h"  // cuda_pipeline.h asynchronous copies
#include "dlcore_emu_coop.h"      // cooperative launches, grid.sync()
#include "dlcore_emu_launch.h"

// dlcore CUDA emulator: the launch entry (argument unpacking, launch checks, guarded memory,
// the fault handler, the denormal mode, the block order, the setup of a cooperative grid).
// Included at the end of dlcore_emu.h; see there for the model.
#pragma once

namespace dlemu {

inline size_t page_size() {
  static const size_t p = (size_t)sysconf(_SC_PAGESIZE);
  return p;
}

inline size_t round_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

// Fiber stacks, reused across launches on this OS thread; each has a PROT_NONE page below it.
struct StackPool {
  char* base = nullptr;
  size_t count = 0, slot = 0;
};
inline thread_local StackPool pool;

inline void release_stacks_over(size_t n) {
  if (pool.count <= n) return;
  munmap(pool.base, pool.slot * pool.count);
  pool = StackPool();
}

inline bool ensure_stacks(size_t n) {
  if (pool.count >= n) return true;
  release_stacks_over(0);
  pool.slot = kStackBytes + page_size();
  void* m = mmap(nullptr, pool.slot * n, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) {
    pool = StackPool();
    return false;
  }
  pool.base = (char*)m;
  pool.count = n;
  for (size_t i = 0; i < n; ++i) mprotect(pool.base + i * pool.slot, page_size(), PROT_NONE);
  return true;
}

// Map g.nbytes so the data's last byte abuts a PROT_NONE guard; the slack before the data is
// a 0xFF canary and below it another guard. Guards are at least as large as the data.
inline bool guard_region(Guarded& g) {
  size_t page = page_size();
  size_t body = round_up(g.nbytes, page);
  size_t guard = round_up(g.nbytes, page) < (1u << 20) ? (1u << 20) : round_up(g.nbytes, page);
  g.map_len = guard + body + guard;
  void* m = mmap(nullptr, g.map_len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) return false;
  g.map = (char*)m;
  if (body && mprotect(g.map + guard, body, PROT_READ | PROT_WRITE) != 0) return false;
  g.slack = body - g.nbytes;
  g.data = g.map + guard + g.slack;
  memset(g.map + guard, 0xFF, g.slack);
  if (g.orig) memcpy(g.data, g.orig, g.nbytes);
  return true;
}

inline const char* arg_label(const Guarded& g, char* buf, size_t n) {
  if (g.argi < 0)
    snprintf(buf, n, "dynamic shared memory (extern __shared__, %zu bytes)", g.nbytes);
  else
    snprintf(buf, n, "argument '%s' (#%d, %zu elements of %zu bytes)",
             L->spec->args[g.argi].name, g.argi, g.nbytes / g.itemsize, g.itemsize);
  return buf;
}

inline thread_local struct sigaction old_segv, old_bus;

inline void on_fault(int sig, siginfo_t* si, void* uctx) {
  char* a = (char*)si->si_addr;
  if (L && L->cur) {
    char who[16], what[160];
    fmt_tid(who, sizeof who, L->cur->tid);
    const char* kind = "access";
#if defined(__x86_64__)
    kind = (((ucontext_t*)uctx)->uc_mcontext.gregs[REG_ERR] & 2) ? "write" : "read";
#else
    (void)uctx;
#endif
    for (const Guarded& g : L->guarded) {
      if (a < g.map || a >= g.map + g.map_len) continue;
      long long off = (long long)(a - g.data);
      long long elem = off >= 0 ? off / (long long)g.itemsize : -((-off + (long long)g.itemsize - 1) / (long long)g.itemsize);
      set_error("out-of-bounds %s of %s by thread %s: byte offset %lld (element %lld)", kind,
                arg_label(g, what, sizeof what), who, off, elem);
      fiber_abort();
    }
    if (pool.base && a >= pool.base && a < pool.base + pool.slot * pool.count) {
      set_error("stack overflow in thread %s (emulator fiber stacks are %zu KiB; large local "
                "arrays?)", who, kStackBytes / 1024);
      fiber_abort();
    }
  }
  // Not ours: put the previous handler back and let the fault happen again.
  sigaction(sig, sig == SIGSEGV ? &old_segv : &old_bus, nullptr);
}

inline thread_local std::vector<char> altstack;

struct FaultHandler {
  stack_t old_stack{};
  FaultHandler() {
    altstack.resize(1 << 16);
    stack_t ss{};
    ss.ss_sp = altstack.data();
    ss.ss_size = altstack.size();
    sigaltstack(&ss, &old_stack);
    struct sigaction sa {};
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &old_segv);
    sigaction(SIGBUS, &sa, &old_bus);
  }
  ~FaultHandler() {
    sigaction(SIGSEGV, &old_segv, nullptr);
    sigaction(SIGBUS, &old_bus, nullptr);
    sigaltstack(&old_stack, nullptr);
  }
};

// ---- argument unpacking -------------------------------------------------------------------
template <typename T>
inline bool unpack_one(T& out, int i, void* ptr) {
  const ArgDesc& a = L->spec->args[i];
  if constexpr (std::is_pointer<T>::value) {
    if (a.itemsize == 0) {
      set_error("argument '%s' (#%d) is a pointer parameter but got a scalar", a.name, i);
      return false;
    }
    out = reinterpret_cast<T>(ptr);
  } else {
    static_assert(std::is_trivially_copyable<T>::value, "kernel parameters must be trivially copyable");
    if (a.itemsize != 0) {
      set_error("argument '%s' (#%d) is a %zu-byte scalar parameter but got an array", a.name, i,
                sizeof(T));
      return false;
    }
    if ((size_t)a.nbytes != sizeof(T)) {
      set_error("argument '%s' (#%d): the kernel takes a %zu-byte scalar but got %lld bytes "
                "(pass a NumPy scalar of the parameter's type, e.g. numpy.int32 for int)",
                a.name, i, sizeof(T), (long long)a.nbytes);
      return false;
    }
    memcpy(&out, ptr, sizeof(T));
  }
  return true;
}

template <typename... A>
struct Call {
  void (*fn)(A...);
  std::tuple<std::decay_t<A>...> args;
  static void invoke(void* self) {
    Call* c = static_cast<Call*>(self);
    std::apply(c->fn, c->args);
  }
  template <size_t... I>
  bool unpack(void* const* ptrs, std::index_sequence<I...>) {
    bool ok = true;
    ((ok = ok && unpack_one(std::get<I>(args), (int)I, ptrs[I])), ...);
    return ok;
  }
};

inline bool check_config(const LaunchSpec* s) {
  const uint32_t* g = s->grid;
  const uint32_t* b = s->block;
  if (!g[0] || !g[1] || !g[2] || !b[0] || !b[1] || !b[2]) {
    set_error("invalid launch: grid and block dimensions must be >= 1");
    return false;
  }
  if ((uint64_t)b[0] * b[1] * b[2] > 1024 || b[2] > 64) {
    set_error("invalid launch: block (%u,%u,%u) exceeds 1024 threads (or z > 64)", b[0], b[1], b[2]);
    return false;
  }
  if (g[0] > 0x7fffffffu || g[1] > 65535 || g[2] > 65535) {
    set_error("invalid launch: grid (%u,%u,%u) exceeds (2^31-1, 65535, 65535)", g[0], g[1], g[2]);
    return false;
  }
  if (s->shared_mem < 0 || (size_t)s->shared_mem > kSharedLimit) {
    set_error("invalid launch: shared_mem=%lld bytes is outside [0, %zu]", (long long)s->shared_mem,
              kSharedLimit);
    return false;
  }
  return true;
}

// Give each contiguous array argument its own guarded copy (identical aliases share one; a
// partial overlap stays unguarded, since copies would break its aliasing).
inline bool guard_arguments(std::vector<void*>& ptrs) {
  const LaunchSpec* s = L->spec;
  for (int i = 0; i < s->nargs; ++i) {
    const ArgDesc& a = s->args[i];
    if (a.itemsize == 0) continue;
    bool shared = false, overlap = false;
    for (int j = 0; j < i; ++j) {
      const ArgDesc& b = s->args[j];
      if (b.itemsize == 0) continue;
      if (b.ptr == a.ptr && b.nbytes == a.nbytes) shared = true, ptrs[i] = ptrs[j];
      else if ((char*)a.ptr < (char*)b.ptr + b.nbytes && (char*)b.ptr < (char*)a.ptr + a.nbytes) overlap = true;
    }
    if (shared || overlap) continue;
    Guarded g;
    g.orig = (char*)a.ptr;
    g.nbytes = (size_t)a.nbytes;
    g.itemsize = (size_t)a.itemsize;
    g.argi = i;
    g.copy_back = a.writable != 0;
    L->guarded.push_back(g);
    if (!guard_region(L->guarded.back())) {
      set_error("could not map a guarded copy of argument '%s' (#%d)", a.name, i);
      return false;
    }
    ptrs[i] = L->guarded.back().data;
  }
  Guarded dyn;
  dyn.nbytes = (size_t)s->shared_mem;
  L->guarded.push_back(dyn);
  if (!guard_region(L->guarded.back())) {
    set_error("could not map guarded dynamic shared memory");
    return false;
  }
  L->dynamic_shared = L->guarded.back().data;
  return true;
}

// After a checked launch: a changed canary byte is a write before an array's start.
inline void check_canaries_and_release() {
  char what[160];
  for (Guarded& g : L->guarded) {
    if (!L->failed && g.argi >= 0) {
      const char* low = g.data - g.slack;
      for (size_t k = 0; k < g.slack; ++k)
        if ((unsigned char)low[k] != 0xFF) {
          long long off = (long long)(low + k - g.data);
          set_error("out-of-bounds write before the start of %s: byte offset %lld (found after "
                    "the launch; the writing thread is unknown)", arg_label(g, what, sizeof what), off);
          break;
        }
    }
    if (!L->failed && g.copy_back) memcpy(g.orig, g.data, g.nbytes);
    munmap(g.map, g.map_len);
  }
  L->guarded.clear();
}

inline uint64_t splitmix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return (x ^ (x >> 31)) | 1;
}

// Called first in the body of a kernel declared with __launch_bounds__(max_threads, ...)
// (build.py moves the bounds there, where template parameters are in scope): CUDA refuses a
// launch with more threads per block than the bound.
inline void check_launch_bounds(int line, long long max_threads, long long = 0, long long = 0) {
  unsigned n = L->block.x * L->block.y * L->block.z;
  if ((long long)n <= max_threads) return;
  L->running = false;  // no block is to blame: the launch is
  set_error("invalid launch: block (%u,%u,%u) has %u threads, more than the kernel's "
            "__launch_bounds__(%lld) (line %d) allows; CUDA refuses it "
            "(cudaErrorLaunchOutOfResources)", L->block.x, L->block.y, L->block.z, n, max_threads,
            line);
  fiber_abort();
}

// CuPy compiles with -ftz=true, so a GPU flushes float denormals to zero. On x86-64 a launch
// sets MXCSR's FTZ (results) and DAZ (inputs) bits, restored after it; fibers inherit them
// through getcontext, and swapcontext keeps them. MXCSR has no per-precision control, so double
// denormals (below 2.2e-308) are flushed too, where the GPU keeps them. Other CPUs keep
// denormals (IEEE semantics) in both precisions.
struct FlushDenormals {
#if defined(__x86_64__)
  unsigned saved = __builtin_ia32_stmxcsr();
  FlushDenormals() { __builtin_ia32_ldmxcsr(saved | 0x8040u); }
  ~FlushDenormals() { __builtin_ia32_ldmxcsr(saved); }
#endif
};

// The order blocks run in: index order for seed 0 (the default, so the first failing block of a
// plain run is the lowest-numbered one), otherwise a seeded pseudo-random permutation of
// [0, n): a 4-round Feistel network on the smallest even-bit domain covering n, cycle-walked
// back into range, so no table of n entries is needed.
struct BlockOrder {
  uint64_t n, keys[4];
  unsigned half_bits = 0;
  bool shuffled;
  BlockOrder(uint64_t n_, uint64_t seed) : n(n_), shuffled(seed != 0 && n_ > 1) {
    while (half_bits < 32 && (1ull << (2 * half_bits)) < n) ++half_bits;
    for (int k = 0; k < 4; ++k) keys[k] = splitmix(seed * 4 + (uint64_t)k);
  }
  uint64_t permute(uint64_t x) const {
    uint64_t mask = (1ull << half_bits) - 1, l = x >> half_bits, r = x & mask;
    for (uint64_t key : keys) {
      uint64_t t = l ^ ((splitmix(r ^ key) >> 1) & mask);  // splitmix sets bit 0
      l = r;
      r = t;
    }
    return l << half_bits | r;
  }
  uint64_t operator[](uint64_t k) const {
    if (!shuffled) return k;
    do k = permute(k);
    while (k >= n);
    return k;
  }
};

inline dim3 block_index(uint64_t b, const dim3& grid) {
  return dim3((unsigned)(b % grid.x), (unsigned)(b / grid.x % grid.y),
              (unsigned)(b / ((uint64_t)grid.x * grid.y)));
}

inline uint64_t block_seed(uint64_t seed, const dim3& b) {
  return splitmix(seed * 0x100000001b3ull + ((uint64_t)b.z << 42) + ((uint64_t)b.y << 31) + b.x);
}

// An ordinary launch: the blocks run one after another, in BlockOrder.
inline void run_blocks(const ucontext_t& proto, unsigned nthreads, uint64_t nblocks) {
  Launch* l = L;
  l->fibers.resize(nthreads);
  for (unsigned i = 0; i < nthreads; ++i) l->stacks.push_back(pool.base + i * pool.slot + page_size());
  BlockOrder order(nblocks, l->spec->seed);
  l->running = true;
  for (uint64_t k = 0; k < nblocks && !l->failed; ++k) {
    l->bid = block_index(order[k], l->grid);
    l->rng = block_seed(l->spec->seed, l->bid);
    pipelines_reset();
    run_block(proto);
  }
  l->running = false;
}

// Block `b` of a cooperative grid: its own fibers (stacks b * nthreads ...), shared memory and,
// in checked mode, a guarded dynamic shared region plus the master's guarded arguments.
inline Launch* cooperative_block(Launch* master, const ucontext_t& proto, uint64_t b,
                                 unsigned nthreads) {
  Launch* blk = new Launch();
  const LaunchSpec* s = master->spec;
  blk->spec = s;
  blk->grid = master->grid;
  blk->block = master->block;
  blk->bid = block_index(b, master->grid);
  blk->body = master->body;
  blk->body_ctx = master->body_ctx;
  blk->running = true;
  for (const Guarded& g : master->guarded)
    if (g.argi >= 0) blk->guarded.push_back(g);
  if (s->checked) {
    Guarded dyn;
    dyn.nbytes = (size_t)s->shared_mem;
    blk->guarded.push_back(dyn);
    if (!guard_region(blk->guarded.back())) {
      L = master;
      set_error("could not map guarded dynamic shared memory for block %llu", (unsigned long long)b);
      return blk;
    }
    blk->dynamic_shared = blk->guarded.back().data;
  } else if (s->shared_mem > 0) {
    blk->dynamic_plain.assign((size_t)s->shared_mem, 0);
    blk->dynamic_shared = blk->dynamic_plain.data();
  }
  memset(blk->static_shared, 0xFF, sizeof blk->static_shared);
  if (blk->dynamic_shared) memset(blk->dynamic_shared, 0xFF, (size_t)s->shared_mem);
  blk->fibers.resize(nthreads);
  for (unsigned i = 0; i < nthreads; ++i) {
    Fiber& f = blk->fibers[i];
    f.tid = dim3(i % blk->block.x, (i / blk->block.x) % blk->block.y,
                 i / (blk->block.x * blk->block.y));
    f.warp = i / kWarp;
    f.lane = i % kWarp;
    f.ctx = proto;
    f.ctx.uc_stack.ss_sp = pool.base + (b * nthreads + i) * pool.slot + page_size();
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, fiber_main, 0);
  }
  return blk;
}

// A cooperative launch: every block resident at once, their fibers run by run_grid.
inline void run_cooperative(const ucontext_t& proto, unsigned nthreads, uint64_t nblocks) {
  Launch* master = L;
  Grid g;
  g.master = master;
  for (uint64_t b = 0; b < nblocks && !master->failed; ++b)
    g.blocks.push_back(cooperative_block(master, proto, b, nthreads));
  master->rng = splitmix(master->spec->seed ^ 0x636f6f70ull);
  if (!master->failed) {
    running_grid = &g;
    pipelines_reset();
    run_grid(g);
    running_grid = nullptr;
    L = master;
  }
  for (Launch* blk : g.blocks) {
    if (blk->failed) master->failed = true;  // its message is already in the shared buffer
    if (master->spec->checked && !blk->guarded.empty() && blk->guarded.back().argi < 0)
      munmap(blk->guarded.back().map, blk->guarded.back().map_len);
    delete blk;
  }
  pipelines_reset();
  release_stacks_over(1024);  // a large grid's stacks do not outlive it
}

template <typename... A>
inline int run_kernel(LaunchSpec* s, void (*fn)(A...), bool cooperative) {
  Launch* l = new Launch();
  L = l;
  l->spec = s;
  l->grid = dim3(s->grid[0], s->grid[1], s->grid[2]);
  l->block = dim3(s->block[0], s->block[1], s->block[2]);
  bool ok = check_config(s);
  if (ok && s->nargs != (int)sizeof...(A)) {
    set_error("the kernel takes %d arguments but got %d", (int)sizeof...(A), s->nargs);
    ok = false;
  }
  unsigned nthreads = l->block.x * l->block.y * l->block.z;
  uint64_t nblocks = (uint64_t)l->grid.x * l->grid.y * l->grid.z;
  ok = ok && (!cooperative || check_co_residency(nblocks, nthreads));
  std::vector<void*> ptrs;
  for (int i = 0; ok && i < s->nargs; ++i) ptrs.push_back(s->args[i].ptr);
  if (ok && s->checked) {
    ok = guard_arguments(ptrs);
  } else if (ok && s->shared_mem > 0) {
    l->dynamic_plain.assign((size_t)s->shared_mem, 0);
    l->dynamic_shared = l->dynamic_plain.data();
  }
  Call<A...> call{fn, {}};
  ok = ok && call.unpack(ptrs.data(), std::index_sequence_for<A...>{});
  uint64_t nfibers = cooperative ? nblocks * nthreads : nthreads;
  if (ok && !ensure_stacks(nfibers)) {
    set_error("could not map %llu fiber stacks", (unsigned long long)nfibers);
    ok = false;
  }
  if (ok) {
    l->body = &Call<A...>::invoke;
    l->body_ctx = &call;
    FlushDenormals ftz;  // before getcontext: the fibers start from proto's MXCSR
    ucontext_t proto;
    getcontext(&proto);
    FaultHandler* handler = s->checked ? new FaultHandler() : nullptr;
    if (cooperative) run_cooperative(proto, nthreads, nblocks);
    else run_blocks(proto, nthreads, nblocks);
    delete handler;
  }
  if (s->checked) {
    check_canaries_and_release();
  }
  int failed = l->failed ? 1 : 0;
  L = nullptr;
  delete l;
  return failed;
}

}  // namespace dlemu

// dlcore CUDA emulator: the launch entry (argument unpacking, launch checks, guarded memory,
// the fault handler). Included at the end of dlcore_emu.h; see there for the model.
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

inline bool ensure_stacks(unsigned n) {
  if (pool.count >= n) return true;
  if (pool.base) munmap(pool.base, pool.slot * pool.count);
  pool.slot = kStackBytes + page_size();
  void* m = mmap(nullptr, pool.slot * n, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) {
    pool = StackPool();
    return false;
  }
  pool.base = (char*)m;
  pool.count = n;
  for (unsigned i = 0; i < n; ++i) mprotect(pool.base + i * pool.slot, page_size(), PROT_NONE);
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

template <typename... A>
inline int run_kernel(LaunchSpec* s, void (*fn)(A...)) {
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
  unsigned nthreads = l->block.x * l->block.y * l->block.z;
  if (ok && !ensure_stacks(nthreads)) {
    set_error("could not map %u fiber stacks", nthreads);
    ok = false;
  }
  if (ok) {
    l->body = &Call<A...>::invoke;
    l->body_ctx = &call;
    l->fibers.resize(nthreads);
    for (unsigned i = 0; i < nthreads; ++i) l->stacks.push_back(pool.base + i * pool.slot + page_size());
    ucontext_t proto;
    getcontext(&proto);
    FaultHandler* handler = s->checked ? new FaultHandler() : nullptr;
    l->running = true;
    for (unsigned z = 0; z < l->grid.z && !l->failed; ++z)
      for (unsigned y = 0; y < l->grid.y && !l->failed; ++y)
        for (unsigned x = 0; x < l->grid.x && !l->failed; ++x) {
          l->bid = dim3(x, y, z);
          l->rng = splitmix(s->seed * 0x100000001b3ull + ((uint64_t)z << 42) + ((uint64_t)y << 31) + x);
          run_block(proto);
        }
    l->running = false;
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

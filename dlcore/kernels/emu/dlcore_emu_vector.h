// dlcore CUDA emulator: CUDA's vector types (float2 float4 int2 int4 uint2 uint4 double2) with
// their make_<type>() functions, sized and aligned as on a GPU, and the alignment check of vector
// loads and stores. Included from dlcore_emu.h.
//
// Why a check: a GPU moves a float4 with one 16-byte instruction (ld.v4 / st.v4) that faults
// with "misaligned address" unless the address is a multiple of 16 (8 for float2, 4 for __half2);
// x86 does not care, so a kernel that vectorises an unaligned pointer would pass here and fault
// there. Where the check sits: kernels hold raw pointers from reinterpret_cast, so there is no
// pointer wrapper to hang it on; instead the vector types check in their own copy operations. The
// copy constructor is a load (`float4 v = p[i];`, it reads the object at p + i), the copy
// assignment a store (`p[i] = v;`). Member access (`p[i].x`) is a 4-byte access on a GPU too and
// is not checked. A misaligned vector access raises EmulatorError in checked and unchecked mode
// alike: the test is one AND per vector copy, and a GPU would fault either way.
//
// The address tested is the one the kernel would see on the device. An array argument is taken
// to start where cudaMalloc would put it, on a 256-byte boundary, plus the caller's address
// modulo 16 (NumPy aligns to 16, so that part is a view's own offset: a view that starts
// mid-vector is caught). Measuring from the array's start also makes checked mode's guarded
// copies, placed so that their END abuts the guard page (their start is then aligned only to
// the array's size), judge as the caller's arrays. Dynamic shared memory starts aligned; static
// shared memory and locals are taken as they are.
//
// NOTE: the user-provided copy operations make these types (and __half2, __nv_bfloat162) not
// trivially copyable, so they cannot be kernel parameters on the emulator. The copies go through
// memcpy, so a guarded copy that is misaligned in host memory (legal, see above) never meets an
// aligned SSE move. Loads report the source line (a defaulted argument of the copy constructor
// evaluated at the call site); stores cannot (an assignment operator takes one argument).
#pragma once

namespace dlemu {

// Where an address the kernel uses lies: its device-equivalent address (modulo 256, see the
// header comment) and a description.
struct Place {
  uintptr_t device;
  char what[160];
};

inline Place place_of(const void* p) {
  const char* a = static_cast<const char*>(p);
  Place r{(uintptr_t)a, ""};
  for (const Guarded& g : L->guarded) {  // checked mode: guarded copies of the arguments
    if (a < g.map || a >= g.map + g.map_len) continue;
    long long off = (long long)(a - g.data);
    r.device = ((uintptr_t)g.orig & 15) + (uintptr_t)off;  // orig is null for dynamic shared
    if (g.argi < 0)
      snprintf(r.what, sizeof r.what, "byte offset %lld of dynamic shared memory", off);
    else
      snprintf(r.what, sizeof r.what, "byte offset %lld of argument '%s' (#%d)", off,
               L->spec->args[g.argi].name, g.argi);
    return r;
  }
  for (int i = 0; i < L->spec->nargs; ++i) {  // unchecked mode, or an unguarded alias
    const ArgDesc& d = L->spec->args[i];
    const char* base = static_cast<const char*>(d.ptr);
    if (d.itemsize == 0 || a < base || a >= base + d.nbytes) continue;
    r.device = ((uintptr_t)base & 15) + (uintptr_t)(a - base);
    snprintf(r.what, sizeof r.what, "byte offset %lld of argument '%s' (#%d)",
             (long long)(a - base), d.name, i);
    return r;
  }
  if (L->dynamic_shared && a >= L->dynamic_shared && a < L->dynamic_shared + L->spec->shared_mem) {
    r.device = (uintptr_t)(a - L->dynamic_shared);
    snprintf(r.what, sizeof r.what, "byte offset %lld of dynamic shared memory",
             (long long)r.device);
  } else if (a >= L->static_shared && a < L->static_shared + kSharedLimit) {
    snprintf(r.what, sizeof r.what, "byte offset %lld of static shared memory",
             (long long)(a - L->static_shared));
  } else {
    snprintf(r.what, sizeof r.what, "address %p", p);
  }
  return r;
}

// Raise (from the calling fiber) unless `p` is a multiple of `align` on the device.
inline void check_aligned(const void* p, size_t align, const char* type, const char* access,
                          int line, const char* file) {
  if (!L || !L->cur) return;  // outside a kernel (static initialisation)
  if (L->guarded.empty() && ((uintptr_t)p & (align - 1)) == 0) return;  // unchecked: as is
  Place place = place_of(p);
  if ((place.device & (align - 1)) == 0) return;
  char who[16], at[160] = "";
  fmt_tid(who, sizeof who, L->cur->tid);
  if (file) snprintf(at, sizeof at, " at %s:%d", file, line);
  set_error("misaligned %s %s%s by thread %s: %s is not a multiple of %zu bytes (a GPU faults "
            "with 'misaligned address')", type, access, at, who, place.what, align);
  fiber_abort();
}

// The copy operations of the vector types: check, then copy bytes (see the header comment).
inline void vector_load(void* dst, const void* src, size_t size, const char* type, int line,
                        const char* file) {
  check_aligned(src, size, type, "load", line, file);
  memcpy(dst, src, size);
}

inline void vector_store(void* dst, const void* src, size_t size, const char* type) {
  check_aligned(src, size, type, "load", 0, nullptr);
  check_aligned(dst, size, type, "store", 0, nullptr);
  if (dst != src) memcpy(dst, src, size);
}

}  // namespace dlemu

// The copy constructor and assignment of a vector (or __half2-like) type T of `size` bytes.
#define DLEMU_VECTOR_COPY(T)                                                                 \
  T(const T& o, int line_ = __builtin_LINE(), const char* file_ = __builtin_FILE()) {        \
    ::dlemu::vector_load(this, &o, sizeof(T), #T, line_, file_);                             \
  }                                                                                          \
  T& operator=(const T& o) {                                                                 \
    ::dlemu::vector_store(this, &o, sizeof(T), #T);                                          \
    return *this;                                                                            \
  }

// __ldg of a vector type: the same checked load, reporting the caller's line.
#define DLEMU_VECTOR_LDG(T)                                                                  \
  inline T __ldg(const T* p, int line_ = __builtin_LINE(), const char* file_ = __builtin_FILE()) { \
    return T(*p, line_, file_);                                                              \
  }

#define DLEMU_VECTOR2(T, E)                                                                  \
  struct alignas(2 * sizeof(E)) T {                                                          \
    E x, y;                                                                                  \
    T() = default;                                                                           \
    constexpr T(E x_, E y_ = E()) : x(x_), y(y_) {}                                          \
    DLEMU_VECTOR_COPY(T)                                                                     \
  };                                                                                         \
  inline T make_##T(E x, E y) { return T(x, y); }                                            \
  DLEMU_VECTOR_LDG(T)

#define DLEMU_VECTOR4(T, E)                                                                  \
  struct alignas(4 * sizeof(E)) T {                                                          \
    E x, y, z, w;                                                                            \
    T() = default;                                                                           \
    constexpr T(E x_, E y_ = E(), E z_ = E(), E w_ = E()) : x(x_), y(y_), z(z_), w(w_) {}    \
    DLEMU_VECTOR_COPY(T)                                                                     \
  };                                                                                         \
  inline T make_##T(E x, E y, E z, E w) { return T(x, y, z, w); }                            \
  DLEMU_VECTOR_LDG(T)

DLEMU_VECTOR2(float2, float)
DLEMU_VECTOR4(float4, float)
DLEMU_VECTOR2(int2, int)
DLEMU_VECTOR4(int4, int)
DLEMU_VECTOR2(uint2, unsigned)
DLEMU_VECTOR4(uint4, unsigned)
DLEMU_VECTOR2(double2, double)

#undef DLEMU_VECTOR2
#undef DLEMU_VECTOR4

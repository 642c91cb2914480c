// dlcore CUDA emulator: tensor cores through mma.h's nvcuda::wmma. Included from dlcore_emu.h;
// the stub mma.h next to it makes `#include <mma.h>` resolve.
//
// Supported: fragments of __half (m16n16k16, m32n8k16, m8n32k16) and __nv_bfloat16 (same
// shapes) inputs, precision::tf32 (m16n16k8) inputs, float accumulators; fill_fragment,
// load_matrix_sync (row_major / col_major inputs, mem_row_major / mem_col_major accumulators,
// any ldm), mma_sync, store_matrix_sync, __float_to_tf32, frag.x[i] and frag.num_elements.
// Other types (int8, sub-byte, double, half accumulators) fail to compile with a static_assert.
//
// Results. D = A*B + C: every product is exact in float (the inputs have at most 11
// significant bits), and they are accumulated in float, starting from C, in k order. Hardware
// sums groups of products with its own internal precision (unspecified, sometimes truncating),
// so results agree with a GPU to float rounding error, not bit for bit.
//
// tf32. __float_to_tf32 rounds to 10 mantissa bits to nearest with ties AWAY from zero: it is
// the PTX instruction cvt.rna.tf32.f32 (not round-to-nearest-even); NaN gives the canonical NaN.
// mma_sync then uses the top 19 bits of each tf32 input and ignores the low 13, which the
// tensor core does too, so a kernel that forgets __float_to_tf32 gets truncated inputs here as
// it would on the GPU (rounding in mma_sync would hide that accuracy loss).
//
// Warp-collective semantics. load_matrix_sync, store_matrix_sync and mma_sync must be called
// by all 32 lanes of a full warp with the same pointer, ldm, layout and fragment types; they
// are warp collectives of the fiber runtime (like __shfl_sync): a lane that does not take part
// (exited, elsewhere, at another collective) is reported as a warp-collective deadlock naming
// the missing lanes, and a warp with fewer than 32 threads, mismatched arguments, a pointer
// that is not 32-byte aligned (on the device, see dlcore_emu_vector.h) or an ldm that is not a
// multiple of 16 bytes raise EmulatorError. The lane that arrives last does the whole warp's
// work before all are released, so no lane can change its fragments while another reads them;
// out-of-bounds faults inside that work therefore name that lane's thread.
//
// NOTE: fragment element distribution. num_elements is the hardware's, but which matrix
// element frag.x[i] holds in which lane is the emulator's own: element i of lane l is element
// (l * num_elements + i) mod (rows * cols) of the fragment's matrix, read row by row (so the
// half A/B fragments, which hold every element twice on the GPU, hold two copies here too, and
// mma_sync reads the first). NVIDIA documents the mapping as unspecified: kernels may apply
// the same operation to every element (scaling, activation, conversion) but must not depend
// on which element a lane holds.
#pragma once

namespace nvcuda {
namespace wmma {

struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
namespace precision {
struct tf32 {};
}  // namespace precision
enum layout_t { mem_row_major, mem_col_major };

// cvt.rna.tf32.f32: keep 10 mantissa bits, round to nearest, ties away from zero.
inline float __float_to_tf32(float in) {
  uint32_t u = ::dlemu::to_bits(in);
  if ((u & 0x7f800000u) == 0x7f800000u) return (u & 0x7fffffu) ? ::dlemu::from_bits<float>(0x7fffffffu) : in;
  return ::dlemu::from_bits<float>((u + 0x1000u) & 0xffffe000u);
}

}  // namespace wmma
}  // namespace nvcuda

namespace dlemu {
namespace wm = ::nvcuda::wmma;

template <typename T> struct wmma_storage { using type = T; };
template <> struct wmma_storage<wm::precision::tf32> { using type = float; };

template <typename A, typename B> struct same_type { static constexpr bool value = false; };
template <typename A> struct same_type<A, A> { static constexpr bool value = true; };

// The static facts of fragment<Use, M, N, K, T, Layout>: its matrix's shape and element count.
template <typename Use, int M, int N, int K, typename T, typename Layout>
struct WmmaShape {
  static constexpr bool is_a = same_type<Use, wm::matrix_a>::value;
  static constexpr bool is_b = same_type<Use, wm::matrix_b>::value;
  static constexpr bool is_acc = same_type<Use, wm::accumulator>::value;
  static constexpr bool is_half = same_type<T, __half>::value;
  static constexpr bool is_16bit = is_half || same_type<T, __nv_bfloat16>::value;
  static constexpr bool is_tf32 = same_type<T, wm::precision::tf32>::value;
  static constexpr bool shape_16bit = (M == 16 && N == 16 && K == 16) ||
                                      (M == 32 && N == 8 && K == 16) || (M == 8 && N == 32 && K == 16);
  static constexpr bool shape_tf32 = M == 16 && N == 16 && K == 8;
  static_assert(is_a || is_b || is_acc, "wmma::fragment: Use must be matrix_a, matrix_b or accumulator");
  static_assert(!(is_a || is_b) || is_16bit || is_tf32,
                "the emulator's wmma supports __half, __nv_bfloat16 and precision::tf32 inputs");
  static_assert(!is_acc || same_type<T, float>::value,
                "the emulator's wmma supports float accumulators only");
  static_assert(!(is_a || is_b) || same_type<Layout, wm::row_major>::value ||
                    same_type<Layout, wm::col_major>::value,
                "matrix_a / matrix_b fragments need a row_major or col_major layout");
  static_assert(!is_acc || same_type<Layout, void>::value,
                "accumulator fragments take no layout (it is given to load/store_matrix_sync)");
  static_assert(is_tf32 ? shape_tf32 : (shape_16bit || (is_acc && shape_tf32)),
                "wmma shape: m16n16k16, m32n8k16 or m8n32k16 for 16-bit inputs, m16n16k8 for tf32");
  static constexpr int rows = is_b ? K : M;
  static constexpr int cols = is_a ? K : N;
  // The hardware's counts: half A/B fragments hold 16 elements (duplicated), the rest a share.
  static constexpr int count = (is_half && !is_acc) ? 16 : rows * cols / kWarp;
  static constexpr bool row_major_input = same_type<Layout, wm::row_major>::value;
  using storage = typename wmma_storage<T>::type;
};

}  // namespace dlemu

namespace nvcuda {
namespace wmma {

template <typename Use, int m, int n, int k, typename T, typename Layout = void>
class fragment {
  using Shape = ::dlemu::WmmaShape<Use, m, n, k, T, Layout>;

 public:
  enum { num_elements = Shape::count, num_storage_elements = Shape::count };
  typedef T element_type;
  typedef typename Shape::storage storage_element_type;
  storage_element_type x[num_elements];
};

template <typename Use, int m, int n, int k, typename T, typename Layout>
inline void fill_fragment(fragment<Use, m, n, k, T, Layout>& f,
                          const typename fragment<Use, m, n, k, T, Layout>::storage_element_type& v) {
  for (int i = 0; i < f.num_elements; ++i) f.x[i] = v;
}

}  // namespace wmma
}  // namespace nvcuda

namespace dlemu {

// One lane's arguments to a wmma collective, read by the lane that arrives last.
struct WmmaCall {
  const void* kind;  // the operation and fragment types (address of a per-instantiation tag)
  const void* mem;
  unsigned ldm;
  int layout;
  void* d;
  const void* a;
  const void* b;
  const void* c;
};

inline thread_local std::vector<WmmaCall> wmma_calls;

template <typename Tag>
inline const void* wmma_kind() {
  static const char tag = 0;
  return &tag;
}

[[noreturn]] inline void wmma_fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
inline void wmma_fail(const char* fmt, ...) {
  char msg[512], who[16];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  fmt_tid(who, sizeof who, L->cur->tid);
  set_error("%s (thread %s)", msg, who);
  fiber_abort();
}

// The per-lane checks of a load or store: a 32-byte aligned matrix pointer, ldm in 16 bytes.
inline void wmma_check_memory(int line, Op op, const void* p, unsigned ldm, size_t elem) {
  Place place = place_of(p);
  if (place.device % 32 != 0)
    wmma_fail("%s (line %d): the matrix pointer must be 32-byte (256-bit) aligned, got %s",
              op_name(op), line, place.what);
  if ((ldm * elem) % 16 != 0)
    wmma_fail("%s (line %d): ldm=%u elements of %zu bytes is not a multiple of 16 bytes",
              op_name(op), line, ldm, elem);
}

// Enter a wmma collective: record this lane's call; the last lane of the warp to arrive
// checks that all calls agree and runs `work` on them (indexed by lane); then every lane waits
// at the collective until the warp is complete.
template <typename Work>
inline void wmma_collective(int line, Op op, const WmmaCall& call, Work work) {
  Fiber* f = L->cur;
  unsigned live = warp_lanes(f->warp);
  if (live != 0xffffffffu)
    wmma_fail("%s (line %d) needs all 32 lanes of a warp, but warp %u of this block has %d "
              "thread(s) (blockDim (%u,%u,%u))", op_name(op), line, f->warp,
              __builtin_popcount(live), L->block.x, L->block.y, L->block.z);
  if (wmma_calls.size() < L->fibers.size()) wmma_calls.resize(L->fibers.size());
  WmmaCall* warp = &wmma_calls[f->warp * kWarp];
  warp[f->lane] = call;
  bool last = true;
  for (unsigned l = 0; l < (unsigned)kWarp && last; ++l) {
    const Fiber& g = L->fibers[f->warp * kWarp + l];
    last = l == f->lane || (g.state == State::Collective && g.op == op && g.mask == 0xffffffffu);
  }
  if (last) {
    for (unsigned l = 0; l < (unsigned)kWarp; ++l) {
      const WmmaCall& o = warp[l];
      if (o.kind != call.kind)
        wmma_fail("%s (line %d): lanes %u and %u of warp %u pass different fragment types",
                  op_name(op), line, f->lane, l, f->warp);
      if (o.mem != call.mem || o.ldm != call.ldm || o.layout != call.layout)
        wmma_fail("%s (line %d): lanes %u and %u of warp %u pass different pointers, ldm or "
                  "layout (%p, %u, %d vs %p, %u, %d); all lanes must pass the same",
                  op_name(op), line, f->lane, l, f->warp, call.mem, call.ldm, call.layout,
                  o.mem, o.ldm, o.layout);
    }
    work(warp);
  }
  collective(line, op, 0xffffffffu, 0, 0, kWarp);
}

// Element (lane, i) of a fragment <-> row-major index in its rows x cols matrix; a matrix
// element's offset in memory for a layout.
template <typename S>
inline int wmma_flat(unsigned lane, int i) { return (int)((lane * S::count + i) % (S::rows * S::cols)); }

template <typename S>
inline size_t wmma_offset(int flat, unsigned ldm, bool row_major) {
  int r = flat / S::cols, c = flat % S::cols;
  return row_major ? (size_t)r * ldm + c : (size_t)c * ldm + r;
}

template <typename Frag, typename S, typename T>
inline void wmma_load(const T* p, unsigned ldm, bool row_major, WmmaCall* warp) {
  for (unsigned l = 0; l < (unsigned)kWarp; ++l) {
    Frag* frag = static_cast<Frag*>(warp[l].d);
    for (int i = 0; i < S::count; ++i) frag->x[i] = p[wmma_offset<S>(wmma_flat<S>(l, i), ldm, row_major)];
  }
}

// Gather a fragment's matrix from the first copy of each element (see the header comment), as
// the tensor core reads it: 16-bit inputs exactly, tf32 inputs without their low 13 bits.
template <typename Frag, typename S>
inline void wmma_gather(const WmmaCall* warp, const void* WmmaCall::*which, float* out) {
  for (int flat = 0; flat < S::rows * S::cols; ++flat) {
    const Frag* frag = static_cast<const Frag*>(warp[flat / S::count].*which);
    float v = (float)frag->x[flat % S::count];
    if constexpr (S::is_tf32) v = from_bits<float>(to_bits(v) & 0xffffe000u);
    out[flat] = v;
  }
}

}  // namespace dlemu

namespace nvcuda {
namespace wmma {

template <typename Use, int m, int n, int k, typename T, typename Layout>
inline void load_matrix_sync(fragment<Use, m, n, k, T, Layout>& f,
                             const typename ::dlemu::WmmaShape<Use, m, n, k, T, Layout>::storage* p,
                             unsigned ldm, int line = __builtin_LINE()) {
  using Frag = fragment<Use, m, n, k, T, Layout>;
  using S = ::dlemu::WmmaShape<Use, m, n, k, T, Layout>;
  static_assert(!S::is_acc, "load_matrix_sync of an accumulator takes a layout_t");
  ::dlemu::wmma_check_memory(line, ::dlemu::Op::WmmaLoad, p, ldm, sizeof(*p));
  ::dlemu::WmmaCall call{::dlemu::wmma_kind<Frag>(), p, ldm, 0, &f, nullptr, nullptr, nullptr};
  ::dlemu::wmma_collective(line, ::dlemu::Op::WmmaLoad, call, [&](::dlemu::WmmaCall* warp) {
    ::dlemu::wmma_load<Frag, S>(p, ldm, S::row_major_input, warp);
  });
}

template <int m, int n, int k>
inline void load_matrix_sync(fragment<accumulator, m, n, k, float>& f, const float* p,
                             unsigned ldm, layout_t layout, int line = __builtin_LINE()) {
  using Frag = fragment<accumulator, m, n, k, float>;
  using S = ::dlemu::WmmaShape<accumulator, m, n, k, float, void>;
  ::dlemu::wmma_check_memory(line, ::dlemu::Op::WmmaLoad, p, ldm, sizeof(float));
  ::dlemu::WmmaCall call{::dlemu::wmma_kind<Frag>(), p, ldm, (int)layout, &f, nullptr, nullptr,
                         nullptr};
  ::dlemu::wmma_collective(line, ::dlemu::Op::WmmaLoad, call, [&](::dlemu::WmmaCall* warp) {
    ::dlemu::wmma_load<Frag, S>(p, ldm, layout == mem_row_major, warp);
  });
}

template <int m, int n, int k>
inline void store_matrix_sync(float* p, const fragment<accumulator, m, n, k, float>& f,
                              unsigned ldm, layout_t layout, int line = __builtin_LINE()) {
  using Frag = fragment<accumulator, m, n, k, float>;
  using S = ::dlemu::WmmaShape<accumulator, m, n, k, float, void>;
  ::dlemu::wmma_check_memory(line, ::dlemu::Op::WmmaStore, p, ldm, sizeof(float));
  ::dlemu::WmmaCall call{::dlemu::wmma_kind<Frag>(), p, ldm, (int)layout, nullptr, &f, nullptr,
                         nullptr};
  ::dlemu::wmma_collective(line, ::dlemu::Op::WmmaStore, call, [&](::dlemu::WmmaCall* warp) {
    for (int flat = 0; flat < S::rows * S::cols; ++flat) {
      const Frag* frag = static_cast<const Frag*>(warp[flat / S::count].a);
      p[::dlemu::wmma_offset<S>(flat, ldm, layout == mem_row_major)] = frag->x[flat % S::count];
    }
  });
}

template <int m, int n, int k, typename T, typename LA, typename LB>
inline void mma_sync(fragment<accumulator, m, n, k, float>& d,
                     const fragment<matrix_a, m, n, k, T, LA>& a,
                     const fragment<matrix_b, m, n, k, T, LB>& b,
                     const fragment<accumulator, m, n, k, float>& c, int line = __builtin_LINE()) {
  using FragA = fragment<matrix_a, m, n, k, T, LA>;
  using FragB = fragment<matrix_b, m, n, k, T, LB>;
  using FragC = fragment<accumulator, m, n, k, float>;
  using SA = ::dlemu::WmmaShape<matrix_a, m, n, k, T, LA>;
  using SB = ::dlemu::WmmaShape<matrix_b, m, n, k, T, LB>;
  using SC = ::dlemu::WmmaShape<accumulator, m, n, k, float, void>;
  struct Tag;
  ::dlemu::WmmaCall call{::dlemu::wmma_kind<Tag>(), nullptr, 0, 0, &d, &a, &b, &c};
  ::dlemu::wmma_collective(line, ::dlemu::Op::WmmaMma, call, [&](::dlemu::WmmaCall* warp) {
    float A[m * k], B[k * n], D[m * n];
    ::dlemu::wmma_gather<FragA, SA>(warp, &::dlemu::WmmaCall::a, A);
    ::dlemu::wmma_gather<FragB, SB>(warp, &::dlemu::WmmaCall::b, B);
    ::dlemu::wmma_gather<FragC, SC>(warp, &::dlemu::WmmaCall::c, D);  // D starts as C
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < n; ++j) {
        float acc = D[i * n + j];
        for (int kk = 0; kk < k; ++kk) acc += A[i * k + kk] * B[kk * n + j];
        D[i * n + j] = acc;
      }
    for (unsigned l = 0; l < (unsigned)::dlemu::kWarp; ++l) {
      FragC* out = static_cast<FragC*>(warp[l].d);
      for (int i = 0; i < SC::count; ++i) out->x[i] = D[::dlemu::wmma_flat<SC>(l, i)];
    }
  });
}

}  // namespace wmma
}  // namespace nvcuda

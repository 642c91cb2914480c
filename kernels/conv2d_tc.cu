// conv2d_tc.cu -- 2-D convolution on tensor cores (nvcuda::wmma) as implicit GEMM: forward,
// backward-data, backward-weight. float tensors run as TF32 (precision::tf32, m16n16k8: sm_80
// and later), __half tensors as FP16 (m16n16k16: sm_70 and later); both accumulate in float and
// round the result to the tensor's type once, at the end.
//
// Shape letters (as in conv2d.cu): N batch, C / F input / output channels, H x W / Ho x Wo input
// / output plane, KH x KW taps, G groups, Cg = C / G, Fg = F / G. x (N, C, H, W), w (F, Cg, KH,
// KW), y (N, F, Ho, Wo), C-contiguous. Stride (SH, SW), padding (PH, PW), dilation (DH, DW).
//
// Algorithm. The three GEMMs of conv2d.cu, D[M x Nc] = sum_k A[M x K] B[K x Nc] per group:
//
//   forward         D = y      rows (n, oh, ow)  cols f  K = (c, kh, kw)  A = x, B = w
//   backward-data   D = gx     rows (n, ih, iw)  cols c  K = (f, kh, kw)  A = gy, B = w
//   backward-weight D = gw^T   rows (c, kh, kw)  cols f  K = (n, oh, ow)  A = x, B = gy
//
// A block computes a 128 x 128 tile of D with 8 warps in a 2 x 4 grid; each warp owns a 64 x 32
// sub-tile, 4 x 2 accumulator fragments of 16 x 16 floats. The K loop moves in BK = 16 steps
// (two tf32 k8 MMAs or one half k16 MMA per fragment): every thread gathers 8 elements of the A
// slice and 8 of the B slice from global memory into registers, zero outside the problem,
// converts them to the MMA operand type (__float_to_tf32, round to nearest, ties away, as
// cvt.rna: the rounding happens once per element here rather than once per warp that loads it)
// and stores them into shared memory. Shared memory holds two stages: while the warps multiply
// stage s, the registers already hold slice s + 1 (its loads were issued before the MMAs, so
// their latency overlaps them), which then goes to the other stage; one barrier per step.
// cp.async (cuda_pipeline) is not used: only the weight operand of forward is contiguous, and a
// per-element async copy of 2-byte halves is below its 4-byte minimum.
//
// No integer division in the K loop. The host computes per layer shape (cached) a table of
// k -> {offset, qh, qw, phase} (int4) and, for B, k -> offset:
//   forward        A k = (c, r, s): offset c*H*W + r*DH*W + s*DW, q = (-r*DH, -s*DW), phase 0;
//                  a thread's row gives (ah, aw) = (oh*SH - PH, ow*SW - PW), and x at
//                  (ah - qh, aw - qw) is read when inside the plane.
//   backward-data  A k = (f, r, s): r*DH = qh*SH + eh, s*DW = qw*SW + ew. For a row (ih, iw),
//                  ih + PH = ah*SH + bh (same for w): gy[oh, ow] contributes iff bh == eh and
//                  bw == ew (the stride divides), at oh = ah - qh, ow = aw - qw; the row's
//                  remainders are computed once, so the transposed taps need no division.
//   backward-weight rows (c, r, s) use the forward table; K runs over (n, p = oh*Wo + ow), a
//                  table p -> (oh*SH - PH, ow*SW - PW) (int2) and (n, p) advanced by a host-
//                  computed (16 / plane, 16 % plane) per step with one conditional wrap.
// Tables are padded to a multiple of 128 entries whose q fails every bounds test, so past-K (and
// past-M rows of backward-weight) elements read as zero without a k < K test.
//
// Shared memory (static, 40 KB for float, 24 KB for __half): per stage an A tile and a B tile.
// Operands gathered K-fast (consecutive threads take consecutive k: w, and both operands of
// backward-weight) are stored [row][BK + 4 floats / 8 halves] (K-major, 16 bytes of padding per
// row), operands gathered M-fast (consecutive threads take consecutive rows: the im2col A of
// forward and backward-data, coalesced along ow / iw) are stored [k][128 + 8]. The padding puts
// the 8 rows (or k's) a fragment load touches per 4-byte bank column in distinct banks. The
// epilogue reuses the operand memory: each warp stores one fragment at a time through a
// 16 x 20-float staging tile and writes it out row-contiguously (coalesced along the output
// plane), converting to T.
//
// Backward-weight splits K = N*Ho*Wo into `splits` ranges: split s writes float partial sums into
// partial[s * F*Cg*KH*KW ...], and conv2d_tc_backward_weight_reduce adds the splits in a fixed
// order and rounds to T (deterministic, no atomics). For float and one split, partial is gw.
// Forward adds the bias (when has_bias) to the float sums before the one rounding to T.
//
// Launch shape (256 threads, 1-D blocks; no dynamic shared memory):
//   forward          grid (ceil(N*Ho*Wo / 128), ceil(Fg / 128), G)
//   backward-data    grid (ceil(N*H*W / 128), ceil(Cg / 128), G)
//   backward-weight  grid (ceil(Cg*KH*KW / 128) * splits, ceil(Fg / 128), G); chunk = K per split,
//                    a multiple of 16
//   reduce           1-D grid-stride over F*Cg*KH*KW
//
// Memory traffic. A is read once per 128-column tile of D, B once per 128-row tile; the tables
// add an int4 (A) and an int (B) load per k per warp (one address for all lanes, cached). D is
// written once (with splits: splits * F*Cg*KH*KW floats, read once more by the reduce).
//
// Registers and SASS (NVRTC 12.9, sm_90). __half: 124-128 registers under __launch_bounds__
// (256, 2), two blocks per SM; each K step runs 16 HMMA per warp among about 250 instructions.
// float: 168-194 registers, one block per SM (capped at 128 they spilled); 64 HMMA among about
// 450. The rest of a step is the gather (table load, two bounds tests, the load, the tf32
// rounding, the shared store per element). NOTE: NVRTC emits the tf32 fragment loads as generic
// wmma.load (ptxas: LD, 64-bit addresses) where it gives the f16 ones .shared (LDSM); only inline
// PTX would change that, which the emulator cannot run.
//
// Limits. float needs sm_80 (TF32): compiled for an older architecture the float entry points
// trap; the Python side (dlcore/ops/conv_tc_cuda.py, serves()) never launches them there. Offsets
// inside one image's group of channels are int32: Cg*H*W, Fg*Ho*Wo and Fg*Cg*KH*KW must be below
// 2^31; H, W, Ho, Wo below 2^29 (the table's out-of-range marker); SH, SW below 2^15 (the packed
// remainders). M of forward/backward-data and K of backward-weight are 64-bit. G <= 65535 and
// ceil(Fg / 128), ceil(Cg / 128) <= 65535 (grid y/z). Backward-data with stride S reads all
// Fg*KH*KW taps and zeroes the (1 - 1/(SH*SW)) that the stride skips: correct, not fast for
// strided layers. Depthwise convolution (Cg = Fg = 1) fills 1/128 of a tile: correct, not fast.
#include <cuda_fp16.h>
#include <mma.h>

#include "common.cuh"

// dlcore: instantiate conv2d_tc_forward<float>
// dlcore: instantiate conv2d_tc_forward<__half>
// dlcore: instantiate conv2d_tc_backward_data<float>
// dlcore: instantiate conv2d_tc_backward_data<__half>
// dlcore: instantiate conv2d_tc_backward_weight<float>
// dlcore: instantiate conv2d_tc_backward_weight<__half>
// dlcore: instantiate conv2d_tc_backward_weight_reduce<float>
// dlcore: instantiate conv2d_tc_backward_weight_reduce<__half>

// TF32 wmma exists from sm_80; the emulator (no __CUDA_ARCH__) has it and no __trap.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define CONV_TC_HAS_TF32 1
#else
#define CONV_TC_HAS_TF32 0
#endif
#ifdef __CUDA_ARCH__
#define CONV_TC_TRAP() __trap()
#else
#define CONV_TC_TRAP()
#endif

namespace conv_tc {

using namespace nvcuda;
using dl::index_t;

constexpr int kBM = 128;                        // tile rows (M)
constexpr int kBN = 128;                        // tile columns (Nc)
constexpr int kBK = 16;                         // K step
constexpr int kThreads = 256;                   // 8 warps
constexpr int kWarpM = 64, kWarpN = 32;         // a warp's sub-tile; warps in a 2 x 4 grid
constexpr int kFragM = kWarpM / 16, kFragN = kWarpN / 16;
constexpr int kLoads = kBM * kBK / kThreads;    // elements of A (and of B) a thread gathers
constexpr int kKFastRows = kThreads / kBK;      // rows covered per pass of a K-fast gather
constexpr int kMFastKs = kThreads / kBM;        // k's covered per pass of an M-fast gather
constexpr int kLdMFast = kBM + 8;               // [k][row] tiles: 8 elements of padding
constexpr int kLdStage = 16 + 4;                // epilogue staging tile, floats
constexpr int kOutside = 1 << 29;               // a coordinate no bounds test accepts

// The MMA flavour of an element type: fragment type, k of one MMA, K-major row padding, and
// the conversions into an operand and out of the float accumulator.
template <typename T>
struct Mma;

template <>
struct Mma<__half> {
  using Frag = __half;
  static constexpr int kK = 16;
  static constexpr int kPadK = 8;  // 16 bytes
  static __device__ __forceinline__ __half zero() { return __float2half_rn(0.0f); }
  static __device__ __forceinline__ __half operand(__half v) { return v; }
};

#if CONV_TC_HAS_TF32
template <>
struct Mma<float> {
  using Frag = wmma::precision::tf32;
  static constexpr int kK = 8;
  static constexpr int kPadK = 4;  // 16 bytes
  static __device__ __forceinline__ float zero() { return 0.0f; }
  static __device__ __forceinline__ float operand(float v) { return wmma::__float_to_tf32(v); }
};
#endif

// Blocks per SM asked of ptxas (__launch_bounds__). Two caps registers at 128: the half kernels
// fit (124-128), the tf32 ones spilled 4-32 bytes there (their shared loads are generic, see the
// header: 64-bit addresses), so they get up to 255 and run one block (8 warps) per SM.
template <typename T>
struct MinBlocks {
  static constexpr int value = 2;
};
template <>
struct MinBlocks<float> {
  static constexpr int value = 1;
};

template <typename T>
struct Supported {
  static constexpr bool value = true;
};
template <>
struct Supported<float> {
  static constexpr bool value = CONV_TC_HAS_TF32;
};

__device__ __forceinline__ float to_output(float v, const float*) { return v; }
__device__ __forceinline__ __half to_output(float v, const __half*) { return __float2half_rn(v); }
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }

// wmma layouts of the two shared tile shapes: K-fast tiles are [row][k] (A row-major, B
// column-major), M-fast tiles [k][row].
template <bool KFast>
struct ALayout {
  using type = wmma::row_major;
};
template <>
struct ALayout<false> {
  using type = wmma::col_major;
};

// The shared-memory geometry of one stage, in elements of T.
template <typename T, bool AKFast>
struct Stage {
  static constexpr int kLdK = kBK + Mma<T>::kPadK;     // K-major row length
  static constexpr int kLdA = AKFast ? kLdK : kLdMFast;
  static constexpr int kAElems = AKFast ? kBM * kLdK : kBK * kLdMFast;
  static constexpr int kBElems = kBN * kLdK;
  static constexpr int kElems = kAElems + kBElems;
};
// Both stages, sized for a K-fast A tile (the larger of the two A shapes).
template <typename T>
struct Smem {
  static constexpr int kBytes = 2 * (kBM + kBN) * (kBK + Mma<T>::kPadK) * (int)sizeof(T);
  static_assert(8 * 16 * kLdStage * (int)sizeof(float) <= kBytes,
                "the epilogue's staging tiles fit in the operand memory");
};
static_assert(2 * kWarpM == kBM && 4 * kWarpN == kBN, "8 warps in a 2 x 4 grid");

template <typename T>
using Acc = wmma::fragment<wmma::accumulator, 16, 16, Mma<T>::kK, float>;

// One stage's MMAs: acc += A[warp rows][0:16] * B[0:16][warp cols].
template <typename T, bool AKFast>
__device__ __forceinline__ void multiply_stage(const T* a, const T* b,
                                               Acc<T> (&acc)[kFragM][kFragN]) {
  using M = Mma<T>;
  using S = Stage<T, AKFast>;
  const int warp = threadIdx.x / 32;
  const int wm = warp / 4 * kWarpM, wn = warp % 4 * kWarpN;
#pragma unroll
  for (int kk = 0; kk < kBK; kk += M::kK) {
    wmma::fragment<wmma::matrix_b, 16, 16, M::kK, typename M::Frag, wmma::col_major> fb[kFragN];
#pragma unroll
    for (int j = 0; j < kFragN; ++j)
      wmma::load_matrix_sync(fb[j], b + (wn + 16 * j) * S::kLdK + kk, S::kLdK);
#pragma unroll
    for (int i = 0; i < kFragM; ++i) {
      // One A fragment live at a time: the B pair is reused, registers stay for accumulators.
      wmma::fragment<wmma::matrix_a, 16, 16, M::kK, typename M::Frag,
                     typename ALayout<AKFast>::type> fa;
      const T* pa = AKFast ? a + (wm + 16 * i) * S::kLdA + kk : a + kk * S::kLdA + wm + 16 * i;
      wmma::load_matrix_sync(fa, pa, S::kLdA);
#pragma unroll
      for (int j = 0; j < kFragN; ++j) wmma::mma_sync(acc[i][j], fa, fb[j], acc[i][j]);
    }
  }
}

// Registers -> one shared stage, converted to the operand type. K-fast: k = t % 16, rows
// t / 16 + 16 i; M-fast: row t % 128, k = t / 128 + 2 i (the threads' gather layouts).
template <typename T, bool AKFast>
__device__ __forceinline__ void store_stage(T* a, T* b, const T (&a_regs)[kLoads],
                                            const T (&b_regs)[kLoads]) {
  using S = Stage<T, AKFast>;
  const int t = threadIdx.x;
#pragma unroll
  for (int i = 0; i < kLoads; ++i) {
    const int a_at = AKFast ? (t / kBK + kKFastRows * i) * S::kLdA + t % kBK
                            : (t / kBM + kMFastKs * i) * S::kLdA + t % kBM;
    a[a_at] = Mma<T>::operand(a_regs[i]);
    b[(t / kBK + kKFastRows * i) * S::kLdK + t % kBK] = Mma<T>::operand(b_regs[i]);
  }
}

// The K loop: `steps` slices from `tile` (tile.fetch gathers the next slice into registers and
// advances), double-buffered in `smem`; steps >= 1 (the host never launches an empty K). The
// last step is peeled off so the loop body has no "is there a next slice" test. Ends with a
// barrier, so smem may be reused.
template <typename T, class Tile>
__device__ __forceinline__ void gemm(Tile& tile, int steps, unsigned char* smem,
                                     Acc<T> (&acc)[kFragM][kFragN]) {
  using S = Stage<T, Tile::kAKFast>;
  T* const base = reinterpret_cast<T*>(smem);
  T a_regs[kLoads], b_regs[kLoads];
  tile.fetch(a_regs, b_regs);
  store_stage<T, Tile::kAKFast>(base, base + S::kAElems, a_regs, b_regs);
  __syncthreads();
  for (int s = 0; s + 1 < steps; ++s) {
    tile.fetch(a_regs, b_regs);  // in flight during the MMAs below
    const T* stage = base + (s & 1) * S::kElems;
    multiply_stage<T, Tile::kAKFast>(stage, stage + S::kAElems, acc);
    T* next = base + ((s + 1) & 1) * S::kElems;
    store_stage<T, Tile::kAKFast>(next, next + S::kAElems, a_regs, b_regs);
    // The stage written above is read next step; the one read above is written the step after.
    __syncthreads();
  }
  const T* last = base + ((steps - 1) & 1) * S::kElems;
  multiply_stage<T, Tile::kAKFast>(last, last + S::kAElems, acc);
  __syncthreads();
}

// Accumulators (+ bias[col] when bias is not null, added in float: one rounding to Out) ->
// out[index.base(row) + col * index.col_stride] for rows < index.rows and cols < cols, one
// fragment at a time through the warp's staging tile (column-major, so lane l writes row
// l % 16: a half-warp stores 16 consecutive rows, contiguous in the output).
template <typename T, typename Out, class Index>
__device__ __forceinline__ void store_tile(const Acc<T> (&acc)[kFragM][kFragN],
                                           unsigned char* smem, Out* out, index_t row0, int col0,
                                           int cols, const Index& index, const T* bias) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, r = lane % 16;
  const int wm = warp / 4 * kWarpM, wn = warp % 4 * kWarpN;
  float* stage = reinterpret_cast<float*>(smem) + warp * 16 * kLdStage;
#pragma unroll
  for (int i = 0; i < kFragM; ++i) {
    const index_t row = row0 + wm + 16 * i + r;
    const bool row_ok = row < index.rows;
    const index_t at = row_ok ? index.base(row) : 0;
#pragma unroll
    for (int j = 0; j < kFragN; ++j) {
      wmma::store_matrix_sync(stage, acc[i][j], kLdStage, wmma::mem_col_major);
      __syncwarp(0xffffffffu);
#pragma unroll
      for (int q = 0; q < 8; ++q) {
        const int c = lane / 16 + 2 * q, col = col0 + wn + 16 * j + c;
        if (row_ok && col < cols) {
          const float v = stage[c * kLdStage + r] + (bias != nullptr ? to_float(bias[col]) : 0.0f);
          out[at + (index_t)col * index.col_stride] = to_output(v, out);
        }
      }
      __syncwarp(0xffffffffu);  // the next fragment overwrites the staging tile
    }
  }
}

// Geometry shared by all three directions (plain ints: every dimension fits in int32).
struct Geometry {
  int n, c, h, w, f, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw, groups;
  __device__ int cg() const { return c / groups; }
  __device__ int fg() const { return f / groups; }
};

// Forward and backward-data: A is an image (x or gy) read through the k table, M-fast (the
// thread's row is fixed, decoded once); B is w through the b table, K-fast.
template <typename T>
struct ImageTile {
  static constexpr bool kAKFast = false;
  const T* image;        // the thread's row's image, first channel of the group
  const int4* a_table;   // k -> {offset, qh, qw, phase}
  const int* b_table;    // k -> offset in the group's weights, -1 past K
  const T* b_first;      // the group's weights at the thread's first column
  index_t b_step;        // between the thread's columns: 16 columns of weights
  int pix, ah, aw, phase, plane_h, plane_w, b_cols, k0;

  __device__ void fetch(T (&a)[kLoads], T (&b)[kLoads]) {
    const T zero = Mma<T>::zero();
    const int ka = k0 + threadIdx.x / kBM;
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      const int4 e = __ldg(a_table + ka + kMFastKs * i);
      const bool inside = e.w == phase && (unsigned)(ah - e.y) < (unsigned)plane_h &&
                          (unsigned)(aw - e.z) < (unsigned)plane_w;
      a[i] = inside ? image[pix + e.x] : zero;
    }
    const int off = __ldg(b_table + k0 + threadIdx.x % kBK);
    const T* pb = b_first + off;
#pragma unroll
    for (int i = 0; i < kLoads; ++i, pb += b_step)
      b[i] = (off >= 0 && kKFastRows * i < b_cols) ? *pb : zero;
    k0 += kBK;
  }
};

// Where row `row` of an image-shaped output D (rows (n, pixel), columns channels) starts.
struct ImageIndex {
  index_t rows, plane, col_stride;
  int channels, group_first;  // channels of the output tensor; the group's first channel
  __device__ index_t base(index_t row) const {
    const index_t n = row / plane;
    return (n * channels + group_first) * plane + (row - n * plane);
  }
};

// Backward-weight: both operands K-fast; the thread's k walks (n, p) without division.
template <typename T>
struct WeightTile {
  static constexpr bool kAKFast = true;
  const T* x;
  const T* gy;
  const int4* row_table;   // the forward table: rows (c, r, s)
  const int2* plane_table; // p -> (oh*SH - PH, ow*SW - PW)
  index_t k, k_end, x_image, gy_image;  // x_image / gy_image: per-image strides
  index_t b_step;                       // between the thread's columns: 16 gy planes
  int n, p, plane, step_n, step_p, row_first, cols_left, h, w;
  index_t x_group, gy_group;  // offsets of the group's first channel in an image

  __device__ void fetch(T (&a)[kLoads], T (&b)[kLoads]) {
    const T zero = Mma<T>::zero();
    const bool k_ok = k < k_end;
    const int2 at = __ldg(plane_table + p);
    const index_t xo = n * x_image + x_group + (index_t)at.x * w + at.y;
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      const int4 e = __ldg(row_table + row_first + kKFastRows * i);
      const bool inside = k_ok && (unsigned)(at.x - e.y) < (unsigned)h &&
                          (unsigned)(at.y - e.z) < (unsigned)w;
      a[i] = inside ? x[xo + e.x] : zero;
    }
    const T* pb = gy + (n * gy_image + gy_group + p);
#pragma unroll
    for (int i = 0; i < kLoads; ++i, pb += b_step)
      b[i] = (k_ok && kKFastRows * i < cols_left) ? *pb : zero;
    k += kBK;
    p += step_p;
    n += step_n;
    if (p >= plane) {
      p -= plane;
      ++n;
    }
  }
};

// gw^T rows (c, r, s) are contiguous in gw: row `row` of split s starts at `row`.
struct WeightIndex {
  index_t rows, col_stride;
  __device__ index_t base(index_t row) const { return row; }
};

template <typename T>
__device__ __forceinline__ void run_forward(const T* x, const T* weight, const T* bias, T* y,
                                            const int4* a_table, const int* b_table,
                                            const Geometry& g) {
  __shared__ __align__(128) unsigned char smem[Smem<T>::kBytes];
  const int fg = g.fg(), cg = g.cg(), group = blockIdx.z, col0 = blockIdx.y * kBN;
  const index_t plane = (index_t)g.ho * g.wo, m_total = g.n * plane;
  const index_t row0 = (index_t)blockIdx.x * kBM, row = row0 + threadIdx.x % kBM;
  const int k_total = cg * g.kh * g.kw;
  ImageTile<T> tile;
  tile.image = x;
  tile.pix = 0;
  tile.ah = tile.aw = -kOutside;
  if (row < m_total) {
    const index_t n = row / plane;
    const int p = (int)(row - n * plane), oh = p / g.wo, ow = p - oh * g.wo;
    tile.image = x + (n * g.c + (index_t)group * cg) * g.h * g.w;
    tile.ah = oh * g.sh - g.ph;
    tile.aw = ow * g.sw - g.pw;
    tile.pix = tile.ah * g.w + tile.aw;
  }
  tile.phase = 0;
  tile.plane_h = g.h;
  tile.plane_w = g.w;
  tile.a_table = a_table;
  tile.b_table = b_table;
  const int first_col = col0 + threadIdx.x / kBK;
  tile.b_first = weight + ((index_t)group * fg + first_col) * k_total;
  tile.b_step = (index_t)kKFastRows * k_total;
  tile.b_cols = fg - first_col;
  tile.k0 = 0;
  Acc<T> acc[kFragM][kFragN];
#pragma unroll
  for (int i = 0; i < kFragM; ++i)
#pragma unroll
    for (int j = 0; j < kFragN; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
  gemm<T>(tile, (k_total + kBK - 1) / kBK, smem, acc);
  const ImageIndex index{m_total, plane, plane, g.f, group * fg};
  store_tile<T>(acc, smem, y, row0, col0, fg, index,
                bias != nullptr ? bias + (index_t)group * fg : nullptr);
}

template <typename T>
__device__ __forceinline__ void run_backward_data(const T* gy, const T* weight, T* gx,
                                                  const int4* a_table, const int* b_table,
                                                  const Geometry& g) {
  __shared__ __align__(128) unsigned char smem[Smem<T>::kBytes];
  const int fg = g.fg(), cg = g.cg(), group = blockIdx.z, col0 = blockIdx.y * kBN;
  const int taps = g.kh * g.kw;
  const index_t plane = (index_t)g.h * g.w, m_total = g.n * plane;
  const index_t row0 = (index_t)blockIdx.x * kBM, row = row0 + threadIdx.x % kBM;
  ImageTile<T> tile;
  tile.image = gy;
  tile.pix = 0;
  tile.ah = tile.aw = -kOutside;
  tile.phase = 0;
  if (row < m_total) {
    const index_t n = row / plane;
    const int p = (int)(row - n * plane), ih = p / g.w, iw = p - ih * g.w;
    const int th = ih + g.ph, tw = iw + g.pw;
    tile.image = gy + (n * g.f + (index_t)group * fg) * g.ho * g.wo;
    tile.ah = th / g.sh;
    tile.aw = tw / g.sw;
    tile.phase = (th - tile.ah * g.sh) << 16 | (tw - tile.aw * g.sw);
    tile.pix = tile.ah * g.wo + tile.aw;
  }
  tile.plane_h = g.ho;
  tile.plane_w = g.wo;
  tile.a_table = a_table;
  tile.b_table = b_table;
  const int first_col = col0 + threadIdx.x / kBK;
  tile.b_first = weight + (index_t)group * fg * cg * taps + (index_t)first_col * taps;
  tile.b_step = (index_t)kKFastRows * taps;
  tile.b_cols = cg - first_col;
  tile.k0 = 0;
  Acc<T> acc[kFragM][kFragN];
#pragma unroll
  for (int i = 0; i < kFragM; ++i)
#pragma unroll
    for (int j = 0; j < kFragN; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
  gemm<T>(tile, (fg * taps + kBK - 1) / kBK, smem, acc);
  const ImageIndex index{m_total, plane, plane, g.c, group * cg};
  store_tile<T>(acc, smem, gx, row0, col0, cg, index, (const T*)nullptr);
}

template <typename T>
__device__ __forceinline__ void run_backward_weight(const T* x, const T* gy, float* partial,
                                                    const int4* row_table,
                                                    const int2* plane_table, index_t chunk,
                                                    int step_n, int step_p, const Geometry& g) {
  __shared__ __align__(128) unsigned char smem[Smem<T>::kBytes];
  const int fg = g.fg(), cg = g.cg(), group = blockIdx.z, col0 = blockIdx.y * kBN;
  const int rows = cg * g.kh * g.kw, row_tiles = (rows + kBM - 1) / kBM;
  const int row0 = (blockIdx.x % row_tiles) * kBM, split = blockIdx.x / row_tiles;
  const int plane = g.ho * g.wo;
  const index_t k_total = (index_t)g.n * plane, k_begin = split * chunk;
  const index_t k_end = k_begin + chunk < k_total ? k_begin + chunk : k_total;
  WeightTile<T> tile;
  tile.x = x;
  tile.gy = gy;
  tile.row_table = row_table;
  tile.plane_table = plane_table;
  tile.k = k_begin + threadIdx.x % kBK;
  tile.k_end = k_end;
  tile.n = (int)(tile.k / plane);
  tile.p = (int)(tile.k - (index_t)tile.n * plane);
  tile.plane = plane;
  tile.step_n = step_n;
  tile.step_p = step_p;
  tile.row_first = row0 + threadIdx.x / kBK;
  const int first_col = col0 + threadIdx.x / kBK;
  tile.cols_left = fg - first_col;
  tile.h = g.h;
  tile.w = g.w;
  tile.x_image = (index_t)g.c * g.h * g.w;
  tile.gy_image = (index_t)g.f * plane;
  tile.x_group = (index_t)group * cg * g.h * g.w;
  tile.gy_group = ((index_t)group * fg + first_col) * plane;
  tile.b_step = (index_t)kKFastRows * plane;
  Acc<T> acc[kFragM][kFragN];
#pragma unroll
  for (int i = 0; i < kFragM; ++i)
#pragma unroll
    for (int j = 0; j < kFragN; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
  gemm<T>(tile, (int)((k_end - k_begin + kBK - 1) / kBK), smem, acc);
  float* out = partial + (index_t)split * g.f * rows + (index_t)group * fg * rows;
  const WeightIndex index{rows, rows};
  store_tile<T>(acc, smem, out, row0, col0, fg, index, (const T*)nullptr);
}

}  // namespace conv_tc

// y = conv2d(x, w) (+ bias (F,) when has_bias != 0). a_table: the forward table (K padded to
// 128), b_table: k, -1 past K.
template <typename T>
__global__ void __launch_bounds__(conv_tc::kThreads, conv_tc::MinBlocks<T>::value)
conv2d_tc_forward(
    const T* __restrict__ x, const T* __restrict__ weight, const T* __restrict__ bias,
    T* __restrict__ y, const int4* __restrict__ a_table, const int* __restrict__ b_table,
    int has_bias, int n, int c, int h, int w, int f, int ho, int wo, int kh, int kw, int sh,
    int sw, int ph, int pw, int dh, int dw, int groups) {
  if constexpr (conv_tc::Supported<T>::value) {
    const conv_tc::Geometry geo = {n, c, h, w, f, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw, groups};
    conv_tc::run_forward(x, weight, has_bias ? bias : nullptr, y, a_table, b_table, geo);
  } else {
    CONV_TC_TRAP();
  }
}

// gx from gy. a_table: the backward-data table, b_table: k = (f, r, s) -> f*Cg*KH*KW + r*KW + s.
template <typename T>
__global__ void __launch_bounds__(conv_tc::kThreads, conv_tc::MinBlocks<T>::value)
conv2d_tc_backward_data(
    const T* __restrict__ gy, const T* __restrict__ weight, T* __restrict__ gx,
    const int4* __restrict__ a_table, const int* __restrict__ b_table, int n, int c, int h, int w,
    int f, int ho, int wo, int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw,
    int groups) {
  if constexpr (conv_tc::Supported<T>::value) {
    const conv_tc::Geometry geo = {n, c, h, w, f, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw, groups};
    conv_tc::run_backward_data(gy, weight, gx, a_table, b_table, geo);
  } else {
    CONV_TC_TRAP();
  }
}

// Float partial gw over K range [split * chunk, (split + 1) * chunk) into
// partial[split * F*Cg*KH*KW ...]; (step_n, step_p) = (16 / (Ho*Wo), 16 % (Ho*Wo)).
template <typename T>
__global__ void __launch_bounds__(conv_tc::kThreads, conv_tc::MinBlocks<T>::value)
conv2d_tc_backward_weight(
    const T* __restrict__ x, const T* __restrict__ gy, float* __restrict__ partial,
    const int4* __restrict__ row_table, const int2* __restrict__ plane_table, long long chunk,
    int step_n, int step_p, int n, int c, int h, int w, int f, int ho, int wo, int kh, int kw,
    int sh, int sw, int ph, int pw, int dh, int dw, int groups) {
  if constexpr (conv_tc::Supported<T>::value) {
    const conv_tc::Geometry geo = {n, c, h, w, f, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw, groups};
    conv_tc::run_backward_weight(x, gy, partial, row_table, plane_table, chunk, step_n, step_p,
                                 geo);
  } else {
    CONV_TC_TRAP();
  }
}

// gw[i] = T(sum over s of partial[s * numel + i]), s in order: deterministic. 1-D grid-stride.
template <typename T>
__global__ void conv2d_tc_backward_weight_reduce(const float* __restrict__ partial,
                                                 T* __restrict__ gw, long long numel, int splits) {
  DL_GRID_STRIDE_LOOP(i, numel) {
    float sum = 0.0f;
    for (int s = 0; s < splits; ++s) sum += partial[(dl::index_t)s * numel + i];
    gw[i] = conv_tc::to_output(sum, gw);
  }
}

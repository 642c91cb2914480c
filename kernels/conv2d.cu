// conv2d.cu -- 2-D convolution as table-driven implicit GEMM: forward, backward-data (split by
// stride phase) and backward-weight, SIMT (FFMA/DFMA; the tensor-core kernels are elsewhere).
//
// Shape letters: N batch, C input channels, H x W input plane, F output channels, Ho x Wo
// output plane, KH x KW kernel taps, T = KH*KW, G groups, Cg = C / G, Fg = F / G. x is
// (N, C, H, W), w is (F, Cg, KH, KW), y is (N, F, Ho, Wo); all C-contiguous. Stride (SH, SW),
// padding (PH, PW), dilation (DH, DW).
//
// Algorithm. Each direction is one GEMM per group, D[M x Nc] = sum_k A[M x K] * B[K x Nc], whose
// operands are gathered from the tensors on the fly (no im2col buffer in global memory). A block
// computes a BM x BM tile of D (BM = 128: 8 x 8 outputs per thread, K step BK = 16; BM = 64:
// 4 x 4, BK = 8) with 256 threads as 16 x 16; thread (tx, ty) owns rows {64 q + 4 tx + e} and
// columns {64 q + 4 ty + e}, so each k reads its operands from shared memory as 4-wide vectors
// (LDS.128 for float): BM/32 vector loads for (BM/16)^2 FMAs. The K loop is double
// buffered: the next step's gathers are issued into registers before this step's multiply, and
// stored into the other shared-memory buffer after it, one barrier per step.
//
// No integer division in the K loop: the host precomputes, once per layer shape, a table with
// one int4 per k, {a offset, du, dv, b offset}; a gather of A at row (u0, v0) is valid when
// u0 + du and v0 + dv lie inside A's plane, and reads A[row base + a offset]; B is read at
// column base + b offset. Rows decode (n, u, v) once, in the prologue. Table entries past the
// end of K hold du = dv = kFar and b offset -1, so every tail gather is zero.
//
//   direction        A    rows (n, u, v)       table k                          B
//   forward          x    (n, oh, ow)          (c, r, s): c*H*W + r*DH*W + s*DW  w[f, k]
//   backward-data    gy   (n, i', j') phase    (f, r, s) of taps that land       w[f, c, r, s]
//
// Backward-data is split by stride phase (ph_h, ph_w) in [0, SH) x [0, SW): the gx rows
// ih = ph_h + SH*i' receive only the taps r with (ph_h + PH - r*DH) % SH == 0, and from gy row
// oh = i' + (ph_h + PH - r*DH) / SH, so each phase is a dense GEMM over its own K (no
// multiply-add lands on a zero tap; at stride 2, 75% did before). A phase record
// {table offset, K, Mu, Mv, out u0, out v0, out u step, out v step} per phase; grid.z runs over
// groups x phases. Forward is the one-phase case. A phase with no tap writes zeros.
//
// Backward-weight computes gw transposed, D[(c, r, s)][f], K = (n, oh, ow): thread rows are
// fixed, so their (c, r, s) decode is hoisted out of the loop, and the per-position table
// {oh*SH - PH, ow*SW - PW, (oh*SH - PH)*W + ow*SW - PW, p} covers one output plane padded to
// Ppad (a multiple of BK): a K step never straddles two images, and the image advances with one
// comparison per step. Its long K splits over blocks; split s writes partial gw into
// partial[s * F*Cg*KH*KW ...] and conv2d_backward_weight_reduce sums the splits in a fixed
// order (deterministic, no atomics). With one split, partial is gw itself.
//
// Launch shape (256 threads, 1-D blocks; static shared memory 2 * 2 * BK * (BM + 4) * sizeof(T):
// 33.8 KB at BM = 128 float, 8.7 KB at BM = 64 float, 17.4 KB at BM = 64 double):
//   conv2d_gemm    grid (ceil(max over phases of N*Mu*Mv / BM), ceil(Nc / BM), G * phases)
//   conv2d_wgrad   grid (ceil(Cg*T / BM) * splits, ceil(Fg / BM), G); chunk = K per split, a
//                  multiple of BK; K = N * Ppad
//   reduce         1-D grid-stride over F*Cg*KH*KW
// __launch_bounds__(256, 1) at BM = 128 (about 160 registers, no spills; capped at 128 for two
// blocks per SM, ptxas spilled), (256, 2) at BM = 64.
//
// Static report (sm_90, `python -m dlcore.kernels.resources --sass`), hot-loop math share:
// BM = 128 float 82% forward/backward-data (conv2d_gemm), 81% backward-weight; BM = 64: 55-60%
// (a 4 x 4 tile issues 2 vector loads per 16 FMAs and gathers half as much per FMA). Before
// the tables (64 x 64 tiles, scalar shared loads, im2col decode per element): 34% / 24% / 41%.
//
// Memory traffic. Each block reads its A rows once per column tile and B once per row tile:
// A is read ceil(Nc / BM) times, B ceil(M / BM) times, D written once. Gathers of A along rows
// are coalesced when consecutive rows are consecutive ow (forward at stride 1) or j' (backward
// data); B reads are 8 consecutive k per column (32 B segments). The tables are a few KB, read
// through L1 as warp-uniform loads.
//
// Limits. Element offsets of tensor bases are 64-bit; inside one (image, group) slice of A,
// offsets are int32 (the Python side checks Cg*H*W, Fg*Ho*Wo, Fg*Cg*T < 2^31), and so are
// per-group GEMM sizes except M and backward-weight's K, which are 64-bit. G * phases <= 65535,
// ceil(Nc / BM) <= 65535 (grid y/z). Depthwise convolutions have a kernel of their own.
#include "common.cuh"

// dlcore: instantiate conv2d_gemm<float, 128, 128>
// dlcore: instantiate conv2d_gemm<float, 128, 64>
// dlcore: instantiate conv2d_gemm<float, 64, 64>
// dlcore: instantiate conv2d_gemm<double, 64, 64>
// dlcore: instantiate conv2d_wgrad<float, 128, 128>
// dlcore: instantiate conv2d_wgrad<float, 128, 64>
// dlcore: instantiate conv2d_wgrad<float, 64, 64>
// dlcore: instantiate conv2d_wgrad<double, 64, 64>
// dlcore: instantiate conv2d_backward_weight_reduce<float>
// dlcore: instantiate conv2d_backward_weight_reduce<double>

namespace conv {

using dl::index_t;

constexpr int kThreads = 256;       // 16 x 16
constexpr int kFar = -(1 << 29);    // a coordinate offset that fails every bounds test

// Four consecutive elements, loaded from shared memory as one vector (16 B for float).
template <typename T>
struct alignas(4 * sizeof(T)) Quad {
  T v[4];
};

// A BM x BN block tile: 16 x 16 threads, each owning TM x TN = BM/16 x BN/16 outputs.
template <typename T, int BM, int BN>
struct Config {
  static constexpr int kTM = BM / 16, kTN = BN / 16;
  // K step: 16 at BM = 128 halves the per-step barrier and loop overhead against the FMAs
  static constexpr int kBK = BM == 128 ? 16 : 8;
  static constexpr int kLdA = BM + 4, kLdB = BN + 4;  // shared rows: +4 keeps them 16-B
  // aligned and, for the K-fast stores below (k = t % BK), puts k's rows 4 banks apart
  static constexpr int kALoads = kBK * BM / kThreads;  // A elements per thread per step
  static constexpr int kBLoads = kBK * BN / kThreads;  // B elements per thread per step
  static constexpr int kRowStride = kThreads / BM;     // M-fast: k stride between A loads
  static constexpr int kColStride = kThreads / kBK;    // K-fast: row/column stride
  // Blocks per SM the register budget must allow: 128 x 128's 64 accumulators, operand
  // fragments and gather state need ~160 registers, so one block (ptxas spilled at the cap
  // of 128 that two would impose); the smaller tiles fit two.
  static constexpr int kMinBlocks = BM == 128 && BN == 128 ? 1 : 2;
};

template <typename T, int BM, int BN>
using TileA = T[Config<T, BM, BN>::kBK][Config<T, BM, BN>::kLdA];
template <typename T, int BM, int BN>
using TileB = T[Config<T, BM, BN>::kBK][Config<T, BM, BN>::kLdB];

// Row (or column) `i` of the thread's micro-tile inside a block tile of edge `edge`: groups of
// four consecutive ones (one vector load), the second group half a tile further.
__device__ __forceinline__ int micro_index(int i, int lane16, int edge) {
  return (edge / 2) * (i / 4) + 4 * lane16 + i % 4;
}

// acc[i][j] += sum over the step's k of A[k][row_i] * B[k][col_j]: the hot loop's math.
template <typename T, int BM, int BN>
__device__ __forceinline__ void multiply(const TileA<T, BM, BN>& as, const TileB<T, BM, BN>& bs,
                                         T (&acc)[BM / 16][BN / 16]) {
  using Cfg = Config<T, BM, BN>;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
  for (int kk = 0; kk < Cfg::kBK; ++kk) {
    T a[Cfg::kTM], b[Cfg::kTN];
#pragma unroll
    for (int q = 0; q < Cfg::kTM / 4; ++q) {
      const Quad<T> qa = *reinterpret_cast<const Quad<T>*>(&as[kk][micro_index(4 * q, tx, BM)]);
#pragma unroll
      for (int e = 0; e < 4; ++e) a[4 * q + e] = qa.v[e];
    }
#pragma unroll
    for (int q = 0; q < Cfg::kTN / 4; ++q) {
      const Quad<T> qb = *reinterpret_cast<const Quad<T>*>(&bs[kk][micro_index(4 * q, ty, BN)]);
#pragma unroll
      for (int e = 0; e < 4; ++e) b[4 * q + e] = qb.v[e];
    }
#pragma unroll
    for (int i = 0; i < Cfg::kTM; ++i)
#pragma unroll
      for (int j = 0; j < Cfg::kTN; ++j) acc[i][j] += a[i] * b[j];
  }
}

// The double-buffered K loop over `steps` steps of kBK. `Gather` provides load(ra, rb) (this
// step's elements into registers), store(as, bs, ra, rb) and advance() (to the next step).
template <typename T, int BM, int BN, class Gather>
__device__ __forceinline__ void k_loop(Gather& g, int steps, T (&acc)[BM / 16][BN / 16]) {
  using Cfg = Config<T, BM, BN>;
  __shared__ __align__(32) T a_tiles[2][Cfg::kBK][Cfg::kLdA];
  __shared__ __align__(32) T b_tiles[2][Cfg::kBK][Cfg::kLdB];
  if (steps <= 0) return;  // uniform across the block
  T ra[Cfg::kALoads], rb[Cfg::kBLoads];
  g.load(ra, rb);
  g.store(a_tiles[0], b_tiles[0], ra, rb);
  __syncthreads();
  for (int s = 0; s < steps; ++s) {
    const int cur = s & 1;
    const bool more = s + 1 < steps;
    if (more) {  // issue the next step's global loads before this step's math
      g.advance();
      g.load(ra, rb);
    }
    multiply<T, BM, BN>(a_tiles[cur], b_tiles[cur], acc);
    // NOTE: the other buffer was last read in the previous step, before the barrier below it
    if (more) g.store(a_tiles[cur ^ 1], b_tiles[cur ^ 1], ra, rb);
    __syncthreads();
  }
}

// Forward and backward-data: A gathered M-fast (a thread's row is fixed; its elements are
// k = t / BM + kRowStride * i), B K-fast (k = t % BK, columns t / BK + kColStride * j).
template <typename T, int BM, int BN>
struct TableGather {
  using Cfg = Config<T, BM, BN>;
  const T* a;        // the row's (image, group) plane of A
  const T* b;        // B
  const int4* tab;   // this step's table entries
  int a_row, u0, v0, a_h, a_w;
  int b_col[Cfg::kBLoads];  // group and column offset into B, or -1 past the columns

  __device__ void load(T (&ra)[Cfg::kALoads], T (&rb)[Cfg::kBLoads]) const {
    const int t = threadIdx.x;
#pragma unroll
    for (int i = 0; i < Cfg::kALoads; ++i) {
      const int4 e = tab[t / BM + Cfg::kRowStride * i];
      const bool inside = (unsigned)(u0 + e.y) < (unsigned)a_h && (unsigned)(v0 + e.z) < (unsigned)a_w;
      ra[i] = inside ? a[(unsigned)(a_row + e.x)] : T(0);  // >= 0 when inside: 32-bit index math
    }
    const int b_off = tab[t % Cfg::kBK].w;
#pragma unroll
    for (int j = 0; j < Cfg::kBLoads; ++j)
      rb[j] = (b_off >= 0 && b_col[j] >= 0) ? b[(unsigned)(b_col[j] + b_off)] : T(0);
  }

  __device__ void store(TileA<T, BM, BN>& as, TileB<T, BM, BN>& bs,
                        const T (&ra)[Cfg::kALoads], const T (&rb)[Cfg::kBLoads]) const {
    const int t = threadIdx.x;
#pragma unroll
    for (int i = 0; i < Cfg::kALoads; ++i) as[t / BM + Cfg::kRowStride * i][t % BM] = ra[i];
#pragma unroll
    for (int j = 0; j < Cfg::kBLoads; ++j)
      bs[t % Cfg::kBK][t / Cfg::kBK + Cfg::kColStride * j] = rb[j];
  }

  __device__ void advance() { tab += Cfg::kBK; }
};

// Backward-weight: both operands K-fast (k = t % BK; rows / columns t / BK + kColStride * i),
// so a warp's gathers run along consecutive output positions.
template <typename T, int BM, int BN>
struct WeightGather {
  using Cfg = Config<T, BM, BN>;
  const T* x_img;     // x[n, g*Cg]
  const T* gy_img;    // gy[n, g*Fg]
  const int4* ptab;   // per-position table, Ppad entries
  index_t x_step, gy_step;  // C*H*W and F*Ho*Wo: one image
  int p0, p_pad, h, w;
  int row_off[Cfg::kALoads], row_dh[Cfg::kALoads], row_dw[Cfg::kALoads];  // per A row (c, r, s)
  int col_off[Cfg::kBLoads];  // f * Ho*Wo per B column, or -1 past the columns

  __device__ void load(T (&ra)[Cfg::kALoads], T (&rb)[Cfg::kBLoads]) const {
    const int4 e = ptab[p0 + threadIdx.x % Cfg::kBK];
#pragma unroll
    for (int i = 0; i < Cfg::kALoads; ++i) {
      const bool inside = (unsigned)(e.x + row_dh[i]) < (unsigned)h &&
                          (unsigned)(e.y + row_dw[i]) < (unsigned)w;
      ra[i] = inside ? x_img[(unsigned)(e.z + row_off[i])] : T(0);
    }
#pragma unroll
    for (int j = 0; j < Cfg::kBLoads; ++j)
      rb[j] = (e.w >= 0 && col_off[j] >= 0) ? gy_img[(unsigned)(col_off[j] + e.w)] : T(0);
  }

  __device__ void store(TileA<T, BM, BN>& as, TileB<T, BM, BN>& bs,
                        const T (&ra)[Cfg::kALoads], const T (&rb)[Cfg::kBLoads]) const {
    const int t = threadIdx.x;
#pragma unroll
    for (int i = 0; i < Cfg::kALoads; ++i)
      as[t % Cfg::kBK][t / Cfg::kBK + Cfg::kColStride * i] = ra[i];
#pragma unroll
    for (int j = 0; j < Cfg::kBLoads; ++j)
      bs[t % Cfg::kBK][t / Cfg::kBK + Cfg::kColStride * j] = rb[j];
  }

  __device__ void advance() {
    p0 += Cfg::kBK;
    if (p0 == p_pad) {  // the next image
      p0 = 0;
      x_img += x_step;
      gy_img += gy_step;
    }
  }
};

}  // namespace conv

// D = A * B for forward (A = x, B = w) and backward-data (A = gy, B = w), see the header.
// phases: 8 ints per phase {table offset, K, Mu, Mv, out u0, out v0, out u step, out v step}.
// A's geometry: a_channels per image, a_h x a_w plane, row (u, v) -> (u*a_su - a_pu,
// v*a_sv - a_pv); out: out_channels per image, out_h x out_w plane. bias (length G*cols) is added
// when has_bias != 0.
template <typename T, int BM, int BN>
__global__ void __launch_bounds__(conv::kThreads, (conv::Config<T, BM, BN>::kMinBlocks))
conv2d_gemm(const T* __restrict__ a, const T* __restrict__ b, const T* __restrict__ bias,
            T* __restrict__ out, const int* __restrict__ table, const int* __restrict__ phases,
            int n, int a_channels, int a_group_channels, int a_h, int a_w, int a_su, int a_sv,
            int a_pu, int a_pv, int b_col_stride, int b_group_stride, int cols,
            int out_channels, int out_h, int out_w, int num_phases, int has_bias) {
  using Cfg = conv::Config<T, BM, BN>;
  const int group = blockIdx.z / num_phases, phase = blockIdx.z - group * num_phases;
  const int* rec = phases + 8 * phase;
  const int tab_off = rec[0], k_total = rec[1], mu = rec[2], mv = rec[3];
  const dl::index_t plane_m = (dl::index_t)mu * mv, m_total = n * plane_m;
  const dl::index_t row0 = (dl::index_t)blockIdx.x * BM;
  if (row0 >= m_total) return;  // this phase has fewer rows than the largest one
  const int col0 = blockIdx.y * BN, t = threadIdx.x;

  conv::TableGather<T, BM, BN> g;
  g.tab = reinterpret_cast<const int4*>(table) + tab_off;
  g.a_h = a_h;
  g.a_w = a_w;
  // NOTE: the group's offset goes into the 32-bit column offsets, not into g.b: with a 64-bit
  // group base, ptxas recomputed the base's multiply for every B element of the hot loop.
  g.b = b;
  const dl::index_t a_plane = (dl::index_t)a_h * a_w;
  const dl::index_t m = row0 + t % BM;
  if (m < m_total) {
    const dl::index_t nn = m / plane_m;
    const int p = (int)(m - nn * plane_m), u = p / mv, v = p - u * mv;
    g.u0 = u * a_su - a_pu;
    g.v0 = v * a_sv - a_pv;
    g.a_row = g.u0 * a_w + g.v0;
    g.a = a + (nn * a_channels + (dl::index_t)group * a_group_channels) * a_plane;
  } else {
    g.u0 = g.v0 = conv::kFar;
    g.a_row = 0;
    g.a = a;
  }
#pragma unroll
  for (int j = 0; j < Cfg::kBLoads; ++j) {
    const int col = col0 + t / Cfg::kBK + Cfg::kColStride * j;
    g.b_col[j] = col < cols ? group * b_group_stride + col * b_col_stride : -1;
  }

  T acc[Cfg::kTM][Cfg::kTN] = {};
  conv::k_loop<T, BM, BN>(g, (k_total + Cfg::kBK - 1) / Cfg::kBK, acc);

  const int ou0 = rec[4], ov0 = rec[5], osu = rec[6], osv = rec[7];
  const dl::index_t out_plane = (dl::index_t)out_h * out_w;
  const int tx = t % 16, ty = t / 16;
#pragma unroll
  for (int i = 0; i < Cfg::kTM; ++i) {
    const dl::index_t row = row0 + conv::micro_index(i, tx, BM);
    if (row >= m_total) continue;
    const dl::index_t nn = row / plane_m;
    const int p = (int)(row - nn * plane_m), u = p / mv, v = p - u * mv;
    T* o = out + (nn * out_channels + (dl::index_t)group * cols) * out_plane +
           (dl::index_t)(ou0 + osu * u) * out_w + (ov0 + osv * v);
#pragma unroll
    for (int j = 0; j < Cfg::kTN; ++j) {
      const int col = col0 + conv::micro_index(j, ty, BN);
      if (col < cols) {
        const T add = has_bias ? bias[group * cols + col] : T(0);
        o[(dl::index_t)col * out_plane] = acc[i][j] + add;
      }
    }
  }
}

// Partial gw over K range [split * chunk, (split + 1) * chunk) of K = N * p_pad into
// partial[split * F*Cg*KH*KW ...]. ptable: 4 ints per padded output position (see the header).
template <typename T, int BM, int BN>
__global__ void __launch_bounds__(conv::kThreads, (conv::Config<T, BM, BN>::kMinBlocks))
conv2d_wgrad(const T* __restrict__ x, const T* __restrict__ gy, T* __restrict__ partial,
             const int* __restrict__ ptable, long long chunk, int n, int c, int h, int w, int f,
             int ho, int wo, int kh, int kw, int dh, int dw, int groups, int p_pad) {
  using Cfg = conv::Config<T, BM, BN>;
  const int cg = c / groups, fg = f / groups, taps = kh * kw, rows = cg * taps;
  const int row_tiles = (rows + BM - 1) / BM;
  const int row0 = (blockIdx.x % row_tiles) * BM, split = blockIdx.x / row_tiles;
  const int col0 = blockIdx.y * BN, group = blockIdx.z, t = threadIdx.x;
  const dl::index_t k_total = (dl::index_t)n * p_pad, k_begin = split * chunk;
  const dl::index_t k_end = k_begin + chunk < k_total ? k_begin + chunk : k_total;
  const int plane = ho * wo;

  conv::WeightGather<T, BM, BN> g;
  g.ptab = reinterpret_cast<const int4*>(ptable);
  g.p_pad = p_pad;
  g.h = h;
  g.w = w;
  g.x_step = (dl::index_t)c * h * w;
  g.gy_step = (dl::index_t)f * plane;
  const dl::index_t image = k_begin / p_pad;
  g.p0 = (int)(k_begin - image * p_pad);
  g.x_img = x + image * g.x_step + (dl::index_t)group * cg * h * w;
  g.gy_img = gy + image * g.gy_step + (dl::index_t)group * fg * plane;
#pragma unroll
  for (int i = 0; i < Cfg::kALoads; ++i) {
    const int row = row0 + t / Cfg::kBK + Cfg::kColStride * i;
    const int ci = row / taps, tap = row - ci * taps, r = tap / kw, s = tap - r * kw;
    const bool valid = row < rows;
    g.row_off[i] = valid ? (ci * h + r * dh) * w + s * dw : 0;
    g.row_dh[i] = valid ? r * dh : conv::kFar;
    g.row_dw[i] = valid ? s * dw : conv::kFar;
  }
#pragma unroll
  for (int j = 0; j < Cfg::kBLoads; ++j) {
    const int col = col0 + t / Cfg::kBK + Cfg::kColStride * j;
    g.col_off[j] = col < fg ? col * plane : -1;
  }

  T acc[Cfg::kTM][Cfg::kTN] = {};
  conv::k_loop<T, BM, BN>(g, (int)((k_end - k_begin) / Cfg::kBK), acc);

  const int tx = t % 16, ty = t / 16;
  T* o = partial + (dl::index_t)split * f * rows + (dl::index_t)group * fg * rows;
#pragma unroll
  for (int j = 0; j < Cfg::kTN; ++j) {
    const int col = col0 + conv::micro_index(j, ty, BN);
    if (col >= fg) continue;
#pragma unroll
    for (int i = 0; i < Cfg::kTM; ++i) {
      const int row = row0 + conv::micro_index(i, tx, BM);
      if (row < rows) o[(dl::index_t)col * rows + row] = acc[i][j];
    }
  }
}

// gw[i] = sum over s of partial[s * numel + i], s in order: deterministic. 1-D grid-stride.
template <typename T>
__global__ void conv2d_backward_weight_reduce(const T* __restrict__ partial, T* __restrict__ gw,
                                              long long numel, int splits) {
  DL_GRID_STRIDE_LOOP(i, numel) {
    T sum = T(0);
    for (int s = 0; s < splits; ++s) sum += partial[(dl::index_t)s * numel + i];
    gw[i] = sum;
  }
}

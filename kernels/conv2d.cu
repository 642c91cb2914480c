// conv2d.cu -- 2-D convolution as implicit GEMM: forward, backward-data, backward-weight.
//
// Shape letters: N batch, C input channels, H x W input plane, F output channels, Ho x Wo
// output plane, KH x KW kernel taps, G groups, Cg = C / G, Fg = F / G. x is (N, C, H, W), w is
// (F, Cg, KH, KW), y is (N, F, Ho, Wo); all C-contiguous. Stride (SH, SW), padding (PH, PW),
// dilation (DH, DW).
//
// Algorithm. Each direction is one GEMM per group, D[M x Nc] = sum_k A[M x K] * B[K x Nc], whose
// operands are gathered from the tensors on the fly: no im2col buffer ever exists in global
// memory. A block computes a BM x BN = 64 x 64 tile of D with 256 threads, each owning a 4 x 4
// register micro-tile (rows tx + 16 i, columns ty + 16 j, tx = t % 16, ty = t / 16, so a warp's
// stores run along the tile's rows). The K loop moves in BK = 16 steps: the gathered A and B
// slices are staged in shared memory (one slot of padding per row against bank conflicts),
// and the next slice is fetched into registers while the current one is multiplied, so global
// latency overlaps the FMAs. Accumulation is in T (float for float inputs).
//
//   forward         D = y        rows (n, oh, ow)   cols f       K = (c, kh, kw), Cg*KH*KW
//   backward-data   D = gx       rows (n, ih, iw)   cols c       K = (f, kh, kw), Fg*KH*KW
//   backward-weight D = gw^T     rows (c, kh, kw)   cols f       K = (n, oh, ow), N*Ho*Wo
//
// Backward-data gathers gy at oh = (ih + PH - kh*DH) / SH only where that division is exact and
// in range (the transposed convolution); taps that fail the test contribute zero. Backward-weight
// computes gw transposed (rows = Cg*KH*KW, contiguous in gw) so its stores coalesce, and splits
// its long K = N*Ho*Wo into `splits` ranges: split s writes its partial gw into
// partial[s * F*Cg*KH*KW ...], and conv2d_backward_weight_reduce sums the splits in a fixed
// order (deterministic, no atomics). With splits == 1, partial is gw itself.
//
// Launch shape (256 threads, 1-D blocks; no dynamic shared memory):
//   forward          grid (ceil(N*Ho*Wo / 64), ceil(Fg / 64), G)
//   backward-data    grid (ceil(N*H*W / 64), ceil(Cg / 64), G)
//   backward-weight  grid (ceil(Cg*KH*KW / 64) * splits, ceil(Fg / 64), G); chunk = K per split,
//                    a multiple of 16
//   reduce           1-D grid-stride over F*Cg*KH*KW
// Static shared memory: 2 * 16 * 65 * sizeof(T) (8.3 KB float, 16.6 KB double).
// __launch_bounds__(256, 2) caps registers at 128 so two blocks fit per SM; without the hint
// ptxas chose a 64-register budget and the float backward-weight spilled. Registers (sm_90):
// about 80-96 float, 118-126 double, no spills.
//
// Memory traffic. Each block reads its A rows once per column tile and its B columns once per
// row tile: x (or gy) is read ceil(Nc / 64) times and w once per 64-row tile of M, the output
// written once. Gathers along a row of A are coalesced when consecutive rows are consecutive
// ow (forward, stride 1) or iw (backward-data); weight reads are k-contiguous.
//
// Limits. Element offsets are 64-bit (tensors may exceed 2^31 elements); per-group GEMM sizes M,
// K and Nc, and each dimension, must fit in int32 except the M of forward/backward-data and
// backward-weight's K, which are 64-bit. G <= 65535 and ceil(Fg / 64) <= 65535 (grid y/z).
// Depthwise convolution (Fg = Cg = 1) runs at 1/64 of the tile's width: correct, not fast.
#include "common.cuh"

// dlcore: instantiate conv2d_forward<float>
// dlcore: instantiate conv2d_forward<double>
// dlcore: instantiate conv2d_backward_data<float>
// dlcore: instantiate conv2d_backward_data<double>
// dlcore: instantiate conv2d_backward_weight<float>
// dlcore: instantiate conv2d_backward_weight<double>
// dlcore: instantiate conv2d_backward_weight_reduce<float>
// dlcore: instantiate conv2d_backward_weight_reduce<double>

namespace conv {

using dl::index_t;

constexpr int kBM = 64;        // tile rows (M)
constexpr int kBN = 64;        // tile columns (Nc)
constexpr int kBK = 16;        // K step
constexpr int kThreads = 256;  // 16 x 16 threads, 4 x 4 outputs each
constexpr int kMicro = 4;      // micro-tile edge; kBM == 16 * kMicro
constexpr int kLoads = 4;      // elements of A (and of B) each thread gathers per K step

// Geometry shared by all three directions (plain ints: every dimension fits in int32).
struct Geometry {
  int n, c, h, w, f, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw, groups;
  __device__ int cg() const { return c / groups; }
  __device__ int fg() const { return f / groups; }
  __device__ int taps() const { return kh * kw; }
};

// The shared K loop. `Tile` gathers operand slices into registers:
//   load_a(k0, regs) / load_b(k0, regs): the thread's kLoads elements of the K step at k0, zero
//   outside the problem; Tile::kAKFast / kBKFast give the thread -> element layout:
//   K-fast: k = k0 + t % 16, row/col = t / 16 + 16 i (coalesced when K is the contiguous axis);
//   M-fast: k = k0 + t / 64 + 4 i, row/col = t % 64 (coalesced when rows are contiguous).
// `acc[i][j]` accumulates D[row0 + tx + 16 i][col0 + ty + 16 j].
template <typename T, class Tile>
__device__ __forceinline__ void gemm_k_loop(Tile& tile, index_t k_begin, index_t k_end,
                                            T (&acc)[kMicro][kMicro]) {
  __shared__ T a_tile[kBK][kBM + 1];
  __shared__ T b_tile[kBK][kBN + 1];
  const int t = threadIdx.x, tx = t % 16, ty = t / 16;
  T a_regs[kLoads], b_regs[kLoads];
  tile.load_a(k_begin, a_regs);
  tile.load_b(k_begin, b_regs);
  for (index_t k0 = k_begin; k0 < k_end; k0 += kBK) {
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      if constexpr (Tile::kAKFast) a_tile[t % 16][t / 16 + 16 * i] = a_regs[i];
      else a_tile[t / 64 + 4 * i][t % 64] = a_regs[i];
      if constexpr (Tile::kBKFast) b_tile[t % 16][t / 16 + 16 * i] = b_regs[i];
      else b_tile[t / 64 + 4 * i][t % 64] = b_regs[i];
    }
    __syncthreads();
    if (k0 + kBK < k_end) {  // prefetch the next slice while this one is multiplied
      tile.load_a(k0 + kBK, a_regs);
      tile.load_b(k0 + kBK, b_regs);
    }
#pragma unroll
    for (int kk = 0; kk < kBK; ++kk) {
      T a[kMicro], b[kMicro];
#pragma unroll
      for (int i = 0; i < kMicro; ++i) a[i] = a_tile[kk][tx + 16 * i];
#pragma unroll
      for (int j = 0; j < kMicro; ++j) b[j] = b_tile[kk][ty + 16 * j];
#pragma unroll
      for (int i = 0; i < kMicro; ++i)
#pragma unroll
        for (int j = 0; j < kMicro; ++j) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();  // the next iteration overwrites the tiles
  }
}

// Forward. A = x gathered as im2col rows (M-fast: the thread's row is fixed, so its (n, oh, ow)
// decode happens once); B = w rows, K-contiguous (K-fast).
template <typename T>
struct ForwardTile {
  static constexpr bool kAKFast = false, kBKFast = true;
  const T* x_plane;  // x[n, g*Cg] for this thread's row, or null past M
  const T* w_group;  // w[g*Fg]
  int ih0, iw0, k_total, col0;
  Geometry geo;

  __device__ ForwardTile(const T* x, const T* w, const Geometry& g, index_t row, int col0_,
                         int group)
      : geo(g) {
    const index_t m_total = (index_t)g.n * g.ho * g.wo;
    const int ow = (int)(row % g.wo), oh = (int)((row / g.wo) % g.ho);
    const index_t n = row / ((index_t)g.ho * g.wo);
    x_plane = row < m_total ? x + (n * g.c + (index_t)group * g.cg()) * g.h * g.w : nullptr;
    ih0 = oh * g.sh - g.ph;
    iw0 = ow * g.sw - g.pw;
    k_total = g.cg() * g.taps();
    w_group = w + (index_t)group * g.fg() * k_total;
    col0 = col0_;
  }

  __device__ void load_a(index_t k0, T (&regs)[kLoads]) const {
    const int taps = geo.taps();
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      const int k = (int)k0 + threadIdx.x / 64 + 4 * i;
      T v = T(0);
      if (x_plane != nullptr && k < k_total) {
        const int ci = k / taps, tap = k - ci * taps, r = tap / geo.kw, s = tap - r * geo.kw;
        const int ih = ih0 + r * geo.dh, iw = iw0 + s * geo.dw;
        if (ih >= 0 && ih < geo.h && iw >= 0 && iw < geo.w)
          v = x_plane[((index_t)ci * geo.h + ih) * geo.w + iw];
      }
      regs[i] = v;
    }
  }

  __device__ void load_b(index_t k0, T (&regs)[kLoads]) const {
    const int k = (int)k0 + threadIdx.x % 16;
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      const int col = col0 + threadIdx.x / 16 + 16 * i;
      regs[i] = (k < k_total && col < geo.fg()) ? w_group[(index_t)col * k_total + k] : T(0);
    }
  }
};

// Backward-data. A = gy gathered through the transposed taps (M-fast, row decode once);
// B[k = (f, r, s)][c] = w[g*Fg + f, c, r, s] (K-fast: the taps of one filter are contiguous).
template <typename T>
struct BackwardDataTile {
  static constexpr bool kAKFast = false, kBKFast = true;
  const T* gy_plane;  // gy[n, g*Fg] for this thread's row, or null past M
  const T* w_group;   // w[g*Fg]
  int th0, tw0, k_total, col0;
  Geometry geo;

  __device__ BackwardDataTile(const T* gy, const T* w, const Geometry& g, index_t row, int col0_,
                              int group)
      : geo(g) {
    const index_t m_total = (index_t)g.n * g.h * g.w;
    const int iw = (int)(row % g.w), ih = (int)((row / g.w) % g.h);
    const index_t n = row / ((index_t)g.h * g.w);
    gy_plane = row < m_total ? gy + (n * g.f + (index_t)group * g.fg()) * g.ho * g.wo : nullptr;
    th0 = ih + g.ph;
    tw0 = iw + g.pw;
    k_total = g.fg() * g.taps();
    w_group = w + (index_t)group * g.fg() * g.cg() * g.taps();
    col0 = col0_;
  }

  __device__ void load_a(index_t k0, T (&regs)[kLoads]) const {
    const int taps = geo.taps();
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      const int k = (int)k0 + threadIdx.x / 64 + 4 * i;
      T v = T(0);
      if (gy_plane != nullptr && k < k_total) {
        const int fo = k / taps, tap = k - fo * taps, r = tap / geo.kw, s = tap - r * geo.kw;
        const int th = th0 - r * geo.dh, tw = tw0 - s * geo.dw;
        // NOTE: test th >= 0 before %: C++ remainder of a negative number is negative, not 0.
        if (th >= 0 && tw >= 0 && th % geo.sh == 0 && tw % geo.sw == 0) {
          const int oh = th / geo.sh, ow = tw / geo.sw;
          if (oh < geo.ho && ow < geo.wo) v = gy_plane[((index_t)fo * geo.ho + oh) * geo.wo + ow];
        }
      }
      regs[i] = v;
    }
  }

  __device__ void load_b(index_t k0, T (&regs)[kLoads]) const {
    const int taps = geo.taps();
    const int k = (int)k0 + threadIdx.x % 16;
    const int fo = k / taps, tap = k - fo * taps;
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      const int col = col0 + threadIdx.x / 16 + 16 * i;
      regs[i] = (k < k_total && col < geo.cg())
                    ? w_group[((index_t)fo * geo.cg() + col) * taps + tap] : T(0);
    }
  }
};

// Backward-weight (transposed: rows (c, r, s), columns f). Both operands are K-fast, so a warp
// reads consecutive ow of one output row; the thread's rows are fixed, so their (c, r, s)
// decode is hoisted into the constructor.
template <typename T>
struct BackwardWeightTile {
  static constexpr bool kAKFast = true, kBKFast = true;
  const T* x;
  const T* gy;
  index_t k_end;  // end of this split's K range
  // Channel, r*DH and s*DW of the thread's A rows (channel -1 past the row count). Kept as
  // ints, not a 64-bit offset: the double instantiation would otherwise spill.
  int row_channel[kLoads], row_dh[kLoads], row_dw[kLoads], group, col0;
  Geometry geo;

  __device__ BackwardWeightTile(const T* x_, const T* gy_, const Geometry& g, int row0, int col0_,
                                int group_, index_t k_end_)
      : x(x_), gy(gy_), k_end(k_end_), group(group_), col0(col0_), geo(g) {
    const int taps = g.taps(), rows = g.cg() * taps;
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      const int row = row0 + threadIdx.x / 16 + 16 * i;
      const int ci = row / taps, tap = row - ci * taps, r = tap / g.kw, s = tap - r * g.kw;
      row_channel[i] = row < rows ? ci : -1;
      row_dh[i] = r * g.dh;
      row_dw[i] = s * g.dw;
    }
  }

  __device__ void load_a(index_t k0, T (&regs)[kLoads]) const {
    const index_t k = k0 + threadIdx.x % 16;
    const index_t plane = (index_t)geo.ho * geo.wo;
    const index_t n = k / plane;
    const int p = (int)(k - n * plane), oh = p / geo.wo, ow = p - oh * geo.wo;
    const T* x_group = x + (n * geo.c + (index_t)group * geo.cg()) * geo.h * geo.w;
    const int ih0 = oh * geo.sh - geo.ph, iw0 = ow * geo.sw - geo.pw;
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      const int ih = ih0 + row_dh[i], iw = iw0 + row_dw[i];
      const bool inside = k < k_end && row_channel[i] >= 0 && ih >= 0 && ih < geo.h && iw >= 0 &&
                          iw < geo.w;
      regs[i] = inside ? x_group[((index_t)row_channel[i] * geo.h + ih) * geo.w + iw] : T(0);
    }
  }

  __device__ void load_b(index_t k0, T (&regs)[kLoads]) const {
    const index_t k = k0 + threadIdx.x % 16;
    const index_t plane = (index_t)geo.ho * geo.wo;
    const index_t n = k / plane, p = k - n * plane;
    const T* gy_group = gy + (n * geo.f + (index_t)group * geo.fg()) * plane + p;
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      const int col = col0 + threadIdx.x / 16 + 16 * i;
      regs[i] = (k < k_end && col < geo.fg()) ? gy_group[(index_t)col * plane] : T(0);
    }
  }
};

}  // namespace conv

// y = conv2d(x, w). Grid (ceil(N*Ho*Wo / 64), ceil(Fg / 64), G), 256 threads.
template <typename T>
__global__ void __launch_bounds__(conv::kThreads, 2) conv2d_forward(
    const T* __restrict__ x, const T* __restrict__ weight, T* __restrict__ y,
    int n, int c, int h, int w, int f, int ho, int wo, int kh, int kw, int sh, int sw, int ph,
    int pw, int dh, int dw, int groups) {
  const conv::Geometry geo = {n, c, h, w, f, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw, groups};
  const dl::index_t row0 = (dl::index_t)blockIdx.x * conv::kBM;
  const int col0 = blockIdx.y * conv::kBN, group = blockIdx.z;
  conv::ForwardTile<T> tile(x, weight, geo, row0 + threadIdx.x % 64, col0, group);
  T acc[conv::kMicro][conv::kMicro] = {};
  conv::gemm_k_loop(tile, 0, tile.k_total, acc);

  const dl::index_t m_total = (dl::index_t)n * ho * wo, plane = (dl::index_t)ho * wo;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16, fg = geo.fg();
#pragma unroll
  for (int i = 0; i < conv::kMicro; ++i) {
    const dl::index_t row = row0 + tx + 16 * i;
    if (row >= m_total) continue;
    const dl::index_t nn = row / plane, p = row - nn * plane;
    T* y_row = y + (nn * f + (dl::index_t)group * fg) * plane + p;
#pragma unroll
    for (int j = 0; j < conv::kMicro; ++j) {
      const int col = col0 + ty + 16 * j;
      if (col < fg) y_row[(dl::index_t)col * plane] = acc[i][j];
    }
  }
}

// gx = d(loss)/dx from gy. Grid (ceil(N*H*W / 64), ceil(Cg / 64), G), 256 threads.
template <typename T>
__global__ void __launch_bounds__(conv::kThreads, 2) conv2d_backward_data(
    const T* __restrict__ gy, const T* __restrict__ weight, T* __restrict__ gx,
    int n, int c, int h, int w, int f, int ho, int wo, int kh, int kw, int sh, int sw, int ph,
    int pw, int dh, int dw, int groups) {
  const conv::Geometry geo = {n, c, h, w, f, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw, groups};
  const dl::index_t row0 = (dl::index_t)blockIdx.x * conv::kBM;
  const int col0 = blockIdx.y * conv::kBN, group = blockIdx.z;
  conv::BackwardDataTile<T> tile(gy, weight, geo, row0 + threadIdx.x % 64, col0, group);
  T acc[conv::kMicro][conv::kMicro] = {};
  conv::gemm_k_loop(tile, 0, tile.k_total, acc);

  const dl::index_t m_total = (dl::index_t)n * h * w, plane = (dl::index_t)h * w;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16, cg = geo.cg();
#pragma unroll
  for (int i = 0; i < conv::kMicro; ++i) {
    const dl::index_t row = row0 + tx + 16 * i;
    if (row >= m_total) continue;
    const dl::index_t nn = row / plane, p = row - nn * plane;
    T* gx_row = gx + (nn * c + (dl::index_t)group * cg) * plane + p;
#pragma unroll
    for (int j = 0; j < conv::kMicro; ++j) {
      const int col = col0 + ty + 16 * j;
      if (col < cg) gx_row[(dl::index_t)col * plane] = acc[i][j];
    }
  }
}

// Partial gw over K range [split * chunk, (split + 1) * chunk) into
// partial[split * F*Cg*KH*KW ...]. Grid (ceil(Cg*KH*KW / 64) * splits, ceil(Fg / 64), G).
template <typename T>
__global__ void __launch_bounds__(conv::kThreads, 2) conv2d_backward_weight(
    const T* __restrict__ x, const T* __restrict__ gy, T* __restrict__ partial, long long chunk,
    int n, int c, int h, int w, int f, int ho, int wo, int kh, int kw, int sh, int sw, int ph,
    int pw, int dh, int dw, int groups) {
  const conv::Geometry geo = {n, c, h, w, f, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw, groups};
  const int rows = geo.cg() * geo.taps(), row_tiles = (rows + conv::kBM - 1) / conv::kBM;
  const int row0 = (blockIdx.x % row_tiles) * conv::kBM, split = blockIdx.x / row_tiles;
  const int col0 = blockIdx.y * conv::kBN, group = blockIdx.z;
  const dl::index_t k_total = (dl::index_t)n * ho * wo;
  const dl::index_t k_begin = split * chunk;
  const dl::index_t k_end = k_begin + chunk < k_total ? k_begin + chunk : k_total;
  conv::BackwardWeightTile<T> tile(x, gy, geo, row0, col0, group, k_end);
  T acc[conv::kMicro][conv::kMicro] = {};
  conv::gemm_k_loop(tile, k_begin, k_end, acc);

  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16, fg = geo.fg();
  T* out = partial + (dl::index_t)split * f * rows + (dl::index_t)group * fg * rows;
#pragma unroll
  for (int j = 0; j < conv::kMicro; ++j) {
    const int col = col0 + ty + 16 * j;
    if (col >= fg) continue;
#pragma unroll
    for (int i = 0; i < conv::kMicro; ++i) {
      const int row = row0 + tx + 16 * i;
      if (row < rows) out[(dl::index_t)col * rows + row] = acc[i][j];
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

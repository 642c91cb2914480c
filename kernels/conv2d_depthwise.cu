// conv2d_depthwise.cu -- depthwise 2-D convolution (groups == C): forward, backward-data and
// backward-weight, with tiles of their own rather than conv2d.cu's implicit GEMM (whose 64-wide
// tiles use one column of 64 when a group has one channel).
//
// Shape letters: N batch, C channels, H x W input plane, M channel multiplier, F = C * M output
// channels (filter f reads channel c = f / M), Ho x Wo output plane, KH x KW taps, stride
// (SH, SW), padding (PH, PW), dilation (DH, DW). x (N, C, H, W), w (F, 1, KH, KW), y (N, F, Ho,
// Wo); all C-contiguous. V = kRows = 4.
//
// Algorithm. A block computes a tile of one or more output planes ("sub-planes": small planes
// are packed several to a block so that a 7x7 plane does not leave most threads idle). It first
// stages the input rows and columns the tile reads, halo included, in dynamic shared memory,
// zeros outside the image (padding costs no test in the tap loop): each thread keeps one column
// (a warp's loads are consecutive in global memory) and walks down the rows, four loads in
// flight. Thread (tx, ty) of a sub-plane then owns output column tx and a strip of V
// consecutive rows per step; `steps` strips go down the tile. A strip reads a window of
// (V-1)*SH + (KH-1)*DH + 1 staged rows at KW columns each: with the sizes fixed at compile time
// (<T, KH, KW, S>: 3x3 and 5x5, stride S both ways, dilation 1) every tap is an unrolled FMA
// whose shared-memory address is a register plus an immediate, the taps sit in registers, and
// a staged value that two of the strip's outputs use is loaded once (3x3, stride 1: 18 loads
// for 36 FMAs). The runtime-size instantiation (<T, 0, 0, 0>) takes any size, stride and
// dilation with tap loops, its taps in shared memory. No integer division runs in a tap loop or
// in the staging loop.
//
//   forward          out (n, f) from in x(n, f / M), taps w[f], plus bias[f] when given
//   backward-data    stride 1: gx(n, c) = sum over m < M of the correlation of gy(n, c*M + m)
//                    with its taps reversed, padding (K-1)*D - P (possibly negative): the same
//                    tiles over gx, one staging pass per m (m > 0 adds to what m - 1 wrote)
//   backward-data    stride > 1 (_strided): a gather per gx element, no shared memory: the taps
//                    that land on ih, r = r0, r0 + SH/g, ... with g = gcd(SH, DH), are solved
//                    once per element (r*DH = ih + PH mod SH, with the inverse of DH/g mod SH/g
//                    from the host), then the loop walks r up and oh down without a division
//   backward-weight  gw[f, r, s] = sum over (n, oh, ow) of gy * x: a block per (f, split[, tap
//                    group]) walks its share of the (batch group, tile row, tile column) items
//                    of gy with the same staging of x (sub-planes are images), each thread
//                    accumulating every tap (KH*KW registers; the runtime-size path 8 taps per
//                    block, grid z over the groups), then one block reduction per tap
//                    (dl::block_reduce_sum: a fixed tree). With splits > 1, split s writes
//                    partial[s, f, tap] and _reduce adds the splits in order.
// Every result is deterministic: fixed summation orders, no atomics.
//
// Launch shape: 256 threads, 1-D. Tile parameters (tile_w, tile_h, planes, steps, row_stride)
// come from the host (dlcore/ops/conv_depthwise_cuda.py): tile_w * tile_h * planes <= 256,
// planes <= 32; threads past them only stage. Big planes get 32 x 64 output tiles (tile_w 32,
// tile_h 8, steps 2), a 7x7 plane 8 x 8 tiles, 16 to a block.
//   forward / backward-data  grid (ceil(N*F / planes), ceil(Ho / (tile_h*V*steps)),
//                            ceil(Wo / tile_w)); for backward-data N*C planes of H x W
//   backward-data _strided   grid (ceil(N*C / planes_per_block), ceil(H / tile_h),
//                            ceil(W / tile_w)), a thread per gx element of sub planes at a time
//   backward-weight          grid (F, splits, ceil(KH*KW / 8) runtime sizes, else 1)
//   reduce                   1-D grid-stride over F*KH*KW
// Dynamic shared memory: planes * rows_in * row_stride elements, rows_in = (tile_h*V*steps - 1)
// * SH + (KH-1)*DH + 1, row_stride >= cols_in = (tile_w - 1)*SW + (KW-1)*DW + 1, padded so that
// the strips of one warp's thread rows start tile_w banks apart (conflict-free at stride 1;
// stride 2 reads every other element: two-way); runtime-size forward and backward-data add
// planes * KH*KW taps. The host keeps it within 40 KB (48 KB is CUDA's limit without an opt-in)
// and cols_in within 256 (a thread per staged column), shrinking the tile.
//
// Memory traffic. Each input element is read from global memory once per tile that covers it:
// 1 + halo/tile times (3x3 on a 32 x 64 tile: 34*66 / (32*64) = 1.10), once more per extra
// filter when M > 1 (forward stages per output plane); each output is written once
// (backward-data with M > 1: read and written M times). Backward-weight reads x and gy once
// per tap group. Taps are read through L1 (every thread of a sub-plane reads the same).
//
// Limits. Plane offsets are 64-bit, offsets within a plane 32-bit: H*W and Ho*Wo below 2^31,
// N*F and N*C too; grid y and z (tiles down and across a plane, splits, tap groups) at most
// 65535. A window too large for 40 KB even with a one-thread tile (a dilated extent of about
// 70 x 70 in double) is left to conv2d.cu by the host.
#include "common.cuh"

// dlcore: instantiate conv2d_depthwise_forward<float, 3, 3, 1>
// dlcore: instantiate conv2d_depthwise_forward<float, 3, 3, 2>
// dlcore: instantiate conv2d_depthwise_forward<float, 5, 5, 1>
// dlcore: instantiate conv2d_depthwise_forward<float, 5, 5, 2>
// dlcore: instantiate conv2d_depthwise_forward<float, 0, 0, 0>
// dlcore: instantiate conv2d_depthwise_forward<double, 3, 3, 1>
// dlcore: instantiate conv2d_depthwise_forward<double, 3, 3, 2>
// dlcore: instantiate conv2d_depthwise_forward<double, 5, 5, 1>
// dlcore: instantiate conv2d_depthwise_forward<double, 5, 5, 2>
// dlcore: instantiate conv2d_depthwise_forward<double, 0, 0, 0>
// dlcore: instantiate conv2d_depthwise_backward_data<float, 3, 3>
// dlcore: instantiate conv2d_depthwise_backward_data<float, 5, 5>
// dlcore: instantiate conv2d_depthwise_backward_data<float, 0, 0>
// dlcore: instantiate conv2d_depthwise_backward_data<double, 3, 3>
// dlcore: instantiate conv2d_depthwise_backward_data<double, 5, 5>
// dlcore: instantiate conv2d_depthwise_backward_data<double, 0, 0>
// dlcore: instantiate conv2d_depthwise_backward_data_strided<float>
// dlcore: instantiate conv2d_depthwise_backward_data_strided<double>
// dlcore: instantiate conv2d_depthwise_backward_weight<float, 3, 3, 1>
// dlcore: instantiate conv2d_depthwise_backward_weight<float, 3, 3, 2>
// dlcore: instantiate conv2d_depthwise_backward_weight<float, 5, 5, 1>
// dlcore: instantiate conv2d_depthwise_backward_weight<float, 5, 5, 2>
// dlcore: instantiate conv2d_depthwise_backward_weight<float, 0, 0, 0>
// dlcore: instantiate conv2d_depthwise_backward_weight<double, 3, 3, 1>
// dlcore: instantiate conv2d_depthwise_backward_weight<double, 3, 3, 2>
// dlcore: instantiate conv2d_depthwise_backward_weight<double, 5, 5, 1>
// dlcore: instantiate conv2d_depthwise_backward_weight<double, 5, 5, 2>
// dlcore: instantiate conv2d_depthwise_backward_weight<double, 0, 0, 0>
// dlcore: instantiate conv2d_depthwise_backward_weight_reduce<float>
// dlcore: instantiate conv2d_depthwise_backward_weight_reduce<double>

namespace dwconv {

using dl::index_t;

constexpr int kThreads = 256;
constexpr int kRows = 4;        // V: output rows of one thread's strip
constexpr int kMaxPlanes = 32;  // sub-planes per block (the size of the plane tables)
constexpr int kTapGroup = 8;    // generic backward-weight: taps accumulated per block
// Forward's and backward-data's minimum blocks per SM (__launch_bounds__): 0 leaves the
// register budget to ptxas, whose choice spills nothing for the fixed sizes; for the runtime
// sizes in double it chose 40-48 registers and spilled (4 to 24 bytes), so they ask for 4
// blocks: 64 registers.
template <int KH>
constexpr int kMinBlocks = KH > 0 ? 0 : 4;

// Runtime sizes. "in" is the plane a block stages (x; gy for backward-data), "out" the plane
// whose positions its threads own (y, gx; gy for backward-weight).
struct Geometry {
  int in_h, in_w, out_h, out_w, kh, kw, sh, sw, ph, pw, dh, dw;
};

// The host's tile: tile_w x tile_h threads per sub-plane, `planes` sub-planes, `steps` strips
// of kRows rows per thread, `row_stride` elements per staged row.
struct TileShape {
  int tile_w, tile_h, planes, steps, row_stride;
  __device__ int out_rows() const { return tile_h * kRows * steps; }
};

// Where a thread sits in the block tile (one division each, once per thread).
struct ThreadPos {
  int tx, ty, tp;  // output column, strip row, sub-plane
};

__device__ __forceinline__ ThreadPos thread_pos(int tile_w, int tile_h) {
  const int per_plane = tile_w * tile_h, t = threadIdx.x;
  return {t % tile_w, (t % per_plane) / tile_w, t / per_plane};
}

// The staged region of a tile: rows x cols input elements per sub-plane.
struct Staged {
  int rows, cols, plane_stride;
  __device__ Staged(const Geometry& g, const TileShape& t)
      : rows((t.out_rows() - 1) * g.sh + (g.kh - 1) * g.dh + 1),
        cols((t.tile_w - 1) * g.sw + (g.kw - 1) * g.dw + 1),
        plane_stride(rows * t.row_stride) {}
};

// tile[p][row][col] = in_plane[p][(y0 + row) * W + x0 + col], zero outside the image.
// in_plane[p] must point at a plane for every p < planes (a sub-plane past the tensor's end
// gets any plane: its outputs are never stored). Each thread keeps one column (consecutive
// threads, consecutive columns: coalesced) and walks down the staged rows of all sub-planes,
// `passes` rows at a time: the column test and the shared address are set up once and no
// division runs in the loop. kStageBatch loads are issued before their stores, so that each
// thread keeps several in flight. Needs cols <= 256; threads past passes * cols only wait.
constexpr int kStageBatch = 4;

template <typename T>
__device__ void stage_planes(T* tile, const T* const* in_plane, int planes, const Staged& st,
                             int row_stride, int y0, int x0, int h, int w) {
  const int passes = kThreads / st.cols, col = threadIdx.x % st.cols;
  int line = threadIdx.x / st.cols;  // staged row counted across sub-planes: p * rows + row
  int p = line / st.rows, row = line - p * st.rows;
  const int step_planes = passes / st.rows, step_row = passes - step_planes * st.rows;
  const int ix = x0 + col, lines = line < passes ? planes * st.rows : 0;
  const bool col_inside = (unsigned)ix < (unsigned)w;
  const int dst_step = passes * row_stride;
  T* dst = tile + line * row_stride + col;
  for (; line < lines; line += kStageBatch * passes, dst += kStageBatch * dst_step) {
    T v[kStageBatch];
#pragma unroll
    for (int b = 0; b < kStageBatch; ++b) {
      const int iy = y0 + row;
      const T* src = in_plane[p < planes ? p : 0];
      v[b] = col_inside && p < planes && (unsigned)iy < (unsigned)h ? __ldg(src + (iy * w + ix))
                                                                     : T(0);
      row += step_row;
      p += step_planes;
      if (row >= st.rows) {
        row -= st.rows;
        ++p;
      }
    }
#pragma unroll
    for (int b = 0; b < kStageBatch; ++b)
      if (line + b * passes < lines) dst[b * dst_step] = v[b];
  }
}

// Generic path: dst[p][k] = the taps of sub-plane p's filter (filter_of[p] + m), reversed for
// backward-data; zeros for a sub-plane without a plane.
template <typename T, bool kReverse>
__device__ void stage_taps(T* dst, const T* __restrict__ weight, const int* filter_of, int m,
                           int planes, int taps) {
  for (int i = threadIdx.x; i < planes * taps; i += kThreads) {
    const int p = i / taps, k = i - p * taps;
    const int f = filter_of[p];
    dst[i] = f >= 0 ? weight[(index_t)(f + m) * taps + (kReverse ? taps - 1 - k : k)] : T(0);
  }
}

// acc[v] += sum over (r, s) of win[(v*S + r) * row_stride + s] * w[r*KW + s]: the strip's
// window row by row, each staged value loaded once however many outputs use it.
template <typename T, int KH, int KW, int S>
__device__ __forceinline__ void strip_fixed(const T* win, int row_stride, const T (&w)[KH * KW],
                                            T (&acc)[kRows]) {
#pragma unroll
  for (int j = 0; j < (kRows - 1) * S + KH; ++j) {
    T in[KW];
#pragma unroll
    for (int s = 0; s < KW; ++s) in[s] = win[j * row_stride + s];
#pragma unroll
    for (int v = 0; v < kRows; ++v) {
      const int r = j - v * S;
      if (r >= 0 && r < KH) {
#pragma unroll
        for (int s = 0; s < KW; ++s) acc[v] += in[s] * w[r * KW + s];
      }
    }
  }
}

// The same for runtime sizes: w is the sub-plane's KH*KW taps in shared memory.
template <typename T>
__device__ __forceinline__ void strip_generic(const T* win, int row_stride, const T* w,
                                              const Geometry& g, T (&acc)[kRows]) {
  const int out_step = g.sh * row_stride, tap_row = g.dh * row_stride;
  const T* row = win;
  for (int r = 0; r < g.kh; ++r, row += tap_row) {
    const T* p = row;
    for (int s = 0; s < g.kw; ++s, p += g.dw) {
      const T wv = w[r * g.kw + s];
#pragma unroll
      for (int v = 0; v < kRows; ++v) acc[v] += p[v * out_step] * wv;
    }
  }
}

// Write acc[v] + bias to the strip's outputs above out_h (`dst` is its first), or
// (kAccumulate) add acc[v] to them.
template <typename T, bool kAccumulate>
__device__ __forceinline__ void store_strip(T* dst, int out_w, int rows_left,
                                            const T (&acc)[kRows], T bias) {
#pragma unroll
  for (int v = 0; v < kRows; ++v, dst += out_w) {
    if (v < rows_left) {
      if constexpr (kAccumulate) *dst += acc[v];
      else *dst = acc[v] + bias;
    }
  }
}

// Forward (kBackward false) and stride-1 backward-data (true). Output plane q = n *
// out_channels + o reads input channel o / mult (forward) or o * mult + m for m < mult
// (backward-data, whose filters are those channels, reversed). `bias` (forward only, else
// null) is added to each output of filter o.
template <typename T, int KH, int KW, int S, bool kBackward>
__device__ void depthwise_tiled(const T* __restrict__ in, const T* __restrict__ weight,
                                const T* __restrict__ bias, T* __restrict__ out, int planes_total,
                                int out_channels, int mult, const Geometry& g,
                                const TileShape& t) {
  extern __shared__ __align__(16) unsigned char dw_tile_bytes[];
  __shared__ const T* in_plane[kMaxPlanes];
  __shared__ int filter_of[kMaxPlanes];
  const ThreadPos me = thread_pos(t.tile_w, t.tile_h);
  const Staged st(g, t);
  T* tile = reinterpret_cast<T*>(dw_tile_bytes);
  T* taps_smem = tile + t.planes * st.plane_stride;  // generic path only
  const int taps = g.kh * g.kw, plane0 = blockIdx.x * t.planes;
  const int oy0 = blockIdx.y * t.out_rows(), ox0 = blockIdx.z * t.tile_w;
  const index_t in_size = (index_t)g.in_h * g.in_w;
  if (threadIdx.x < t.planes) {
    const int q = plane0 + threadIdx.x;
    const int n = q / out_channels, o = q - n * out_channels;
    const int in_channels = kBackward ? out_channels * mult : out_channels / mult;
    const int first = kBackward ? o * mult : o / mult;  // input channel of m = 0
    const bool valid = q < planes_total;
    // a sub-plane past the end stages plane 0: its outputs are never stored
    in_plane[threadIdx.x] = valid ? in + ((index_t)n * in_channels + first) * in_size : in;
    filter_of[threadIdx.x] = valid ? (kBackward ? o * mult : o) : -1;
  }
  __syncthreads();
  const int q = plane0 + me.tp;
  const bool has_plane = me.tp < t.planes && q < planes_total;
  const T* win0 = tile + me.tp * st.plane_stride + me.ty * kRows * g.sh * t.row_stride +
                  me.tx * g.sw;
  const int step_offset = t.tile_h * kRows * g.sh * t.row_stride;
  const int ox = ox0 + me.tx;
  T* out_col = out + (index_t)q * g.out_h * g.out_w + ox;
  const int loops = kBackward ? mult : 1;
  for (int m = 0; m < loops; ++m) {
    if (m > 0) {  // the next input channel of each sub-plane (backward-data, mult > 1)
      // only staging reads the table, so it can change while others still compute
      if (threadIdx.x < t.planes && plane0 + (int)threadIdx.x < planes_total)
        in_plane[threadIdx.x] += in_size;
      __syncthreads();  // everyone is done with the tile, and the table is ready
    }
    stage_planes(tile, in_plane, t.planes, st, t.row_stride, oy0 * g.sh - g.ph, ox0 * g.sw - g.pw,
                 g.in_h, g.in_w);
    if constexpr (KH == 0)
      stage_taps<T, kBackward>(taps_smem, weight, filter_of, m, t.planes, taps);
    __syncthreads();
    if (has_plane) {
      const T* w_mine = taps_smem + me.tp * taps;
      const T b_mine = bias != nullptr ? bias[filter_of[me.tp]] : T(0);
      T w_reg[KH > 0 ? KH * KW : 1];
      if constexpr (KH > 0) {
        const T* wf = weight + (index_t)(filter_of[me.tp] + m) * (KH * KW);
#pragma unroll
        for (int k = 0; k < KH * KW; ++k) w_reg[k] = wf[kBackward ? KH * KW - 1 - k : k];
      }
      for (int step = 0; step < t.steps; ++step) {
        T acc[kRows] = {};
        const T* win = win0 + step * step_offset;
        if constexpr (KH > 0) strip_fixed<T, KH, KW, S>(win, t.row_stride, w_reg, acc);
        else strip_generic(win, t.row_stride, w_mine, g, acc);
        const int oy = oy0 + (step * t.tile_h + me.ty) * kRows;
        if (ox < g.out_w && oy < g.out_h) {
          T* dst = out_col + oy * g.out_w;  // plane offsets fit in int
          if (kBackward && m > 0) store_strip<T, true>(dst, g.out_w, g.out_h - oy, acc, T(0));
          else store_strip<T, false>(dst, g.out_w, g.out_h - oy, acc, b_mine);
        }
      }
    }
  }
}

// Backward-weight, fixed sizes: acc[r*KW + s] += sum over v of gv[v] * win[(v*S + r) *
// row_stride + s].
template <typename T, int KH, int KW, int S>
__device__ __forceinline__ void strip_weight_fixed(const T* win, int row_stride,
                                                   const T (&gv)[kRows], T (&acc)[KH * KW]) {
#pragma unroll
  for (int j = 0; j < (kRows - 1) * S + KH; ++j) {
    T in[KW];
#pragma unroll
    for (int s = 0; s < KW; ++s) in[s] = win[j * row_stride + s];
#pragma unroll
    for (int v = 0; v < kRows; ++v) {
      const int r = j - v * S;
      if (r >= 0 && r < KH) {
#pragma unroll
        for (int s = 0; s < KW; ++s) acc[r * KW + s] += gv[v] * in[s];
      }
    }
  }
}

// Backward-weight, runtime sizes: taps [first, first + count) of this block's group, each at
// window offset tap_off[j].
template <typename T>
__device__ __forceinline__ void strip_weight_group(const T* win, int out_step,
                                                   const int (&tap_off)[kTapGroup], int count,
                                                   const T (&gv)[kRows], T (&acc)[kTapGroup]) {
#pragma unroll
  for (int j = 0; j < kTapGroup; ++j) {
    if (j < count) {
#pragma unroll
      for (int v = 0; v < kRows; ++v) acc[j] += gv[v] * win[tap_off[j] + v * out_step];
    }
  }
}

// One landing-tap progression of a gx coordinate i along one dimension (backward-data at
// stride > 1): taps first, first + step, ... (count of them) reach output positions out_first,
// out_first - out_step, ...
struct Landing {
  int first, count, step, out_first, out_step;
};

// Solve tap * dil = i + pad (mod stride) with 0 <= (i + pad - tap*dil) / stride < out_size and
// tap < k. gcd = gcd(stride, dil); inv = (dil / gcd)^-1 mod (stride / gcd) (0 when that is 1).
__device__ __forceinline__ Landing landing_taps(int i, int pad, int stride, int dil, int k,
                                                int out_size, int gcd, int inv) {
  Landing l = {0, 0, stride / gcd, 0, dil / gcd};
  const int t = i + pad;  // >= 0: i >= 0, pad >= 0
  if (t % gcd != 0) return l;
  const int first = (t / gcd) % l.step * inv % l.step;  // < stride^2: no overflow
  if (first >= k || t < first * dil) return l;
  int out = (t - first * dil) / stride;
  // skip the taps whose output row is past the end, then count those before tap k or row -1
  const int skip = out >= out_size ? (out - out_size + l.out_step) / l.out_step : 0;
  const int last_by_tap = (k - 1 - first) / l.step, last_by_out = out / l.out_step;
  const int last = last_by_tap < last_by_out ? last_by_tap : last_by_out;
  l.count = last >= skip ? last - skip + 1 : 0;
  l.first = first + skip * l.step;
  l.out_first = out - skip * l.out_step;
  return l;
}

}  // namespace dwconv

// y = depthwise conv2d(x, w) (+ bias[f] when has_bias; else bias is a dummy). See the header for
// the grid; dynamic shared memory from the host.
template <typename T, int KH, int KW, int S>
__global__ void __launch_bounds__(dwconv::kThreads, dwconv::kMinBlocks<KH>)
    conv2d_depthwise_forward(const T* __restrict__ x, const T* __restrict__ weight,
                             const T* __restrict__ bias, T* __restrict__ y, int n, int c, int f,
                             int h, int w, int ho, int wo, int kh, int kw, int sh, int sw, int ph,
                             int pw, int dh, int dw, int tile_w, int tile_h, int planes, int steps,
                             int row_stride, int has_bias) {
  const dwconv::Geometry g = {h, w, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw};
  const dwconv::TileShape t = {tile_w, tile_h, planes, steps, row_stride};
  dwconv::depthwise_tiled<T, KH, KW, S, false>(x, weight, has_bias ? bias : nullptr, y, n * f, f,
                                               f / c, g, t);
}

// gx from gy at stride 1 (sh, sw are 1): the forward tile over gx with reversed taps.
template <typename T, int KH, int KW>
__global__ void __launch_bounds__(dwconv::kThreads, dwconv::kMinBlocks<KH>)
    conv2d_depthwise_backward_data(const T* __restrict__ gy, const T* __restrict__ weight,
                                   T* __restrict__ gx, int n, int c, int f, int h, int w, int ho,
                                   int wo, int kh, int kw, int sh, int sw, int ph, int pw, int dh,
                                   int dw, int tile_w, int tile_h, int planes, int steps,
                                   int row_stride) {
  const dwconv::Geometry g = {ho, wo, h, w, kh, kw, sh, sw, (kh - 1) * dh - ph,
                              (kw - 1) * dw - pw, dh, dw};
  const dwconv::TileShape t = {tile_w, tile_h, planes, steps, row_stride};
  dwconv::depthwise_tiled<T, KH, KW, 1, true>(gy, weight, nullptr, gx, n * c, c, f / c, g, t);
}

// gx from gy at any stride: one element per thread and plane, tile_w x tile_h positions per
// block, planes_per_block planes (tile_w * tile_h * sub = 256 threads take sub planes at a time).
template <typename T>
__global__ void __launch_bounds__(dwconv::kThreads) conv2d_depthwise_backward_data_strided(
    const T* __restrict__ gy, const T* __restrict__ weight, T* __restrict__ gx, int n, int c,
    int f, int h, int w, int ho, int wo, int kh, int kw, int sh, int sw, int ph, int pw, int dh,
    int dw, int tile_w, int tile_h, int planes_per_block, int gcd_h, int inv_h, int gcd_w,
    int inv_w) {
  const dwconv::ThreadPos me = dwconv::thread_pos(tile_w, tile_h);
  const int sub = dwconv::kThreads / (tile_w * tile_h);
  const int iy = blockIdx.y * tile_h + me.ty, ix = blockIdx.z * tile_w + me.tx;
  if (me.tp >= sub || iy >= h || ix >= w) return;  // no barriers below
  const dwconv::Landing lr = dwconv::landing_taps(iy, ph, sh, dh, kh, ho, gcd_h, inv_h);
  const dwconv::Landing ls = dwconv::landing_taps(ix, pw, sw, dw, kw, wo, gcd_w, inv_w);
  const int mult = f / c, taps = kh * kw;
  const dl::index_t out_size = (dl::index_t)ho * wo;
  const int q_end = min(n * c, (blockIdx.x + 1) * planes_per_block);
  for (int q = blockIdx.x * planes_per_block + me.tp; q < q_end; q += sub) {
    const int nn = q / c, ch = q - nn * c;
    T acc = T(0);
    for (int m = 0; m < mult; ++m) {
      const int filt = ch * mult + m;
      const T* gy_plane = gy + ((dl::index_t)nn * f + filt) * out_size + ls.out_first;
      const T* w_taps = weight + (dl::index_t)filt * taps + ls.first;
      const T* gy_row = gy_plane + (dl::index_t)lr.out_first * wo;
      const T* w_row = w_taps + lr.first * kw;
      for (int a = 0; a < lr.count; ++a, gy_row -= lr.out_step * wo, w_row += lr.step * kw) {
        const T* gp = gy_row;
        const T* wp = w_row;
        for (int b = 0; b < ls.count; ++b, gp -= ls.out_step, wp += ls.step) acc += *gp * *wp;
      }
    }
    gx[(dl::index_t)q * h * w + (dl::index_t)iy * w + ix] = acc;
  }
}

// Partial gw of filter blockIdx.x over items [blockIdx.y * items_per_split, ...) of the
// (batch group, tile row, tile column) list, taps of group blockIdx.z (generic) or all.
template <typename T, int KH, int KW, int S>
__global__ void __launch_bounds__(dwconv::kThreads, 2) conv2d_depthwise_backward_weight(
    const T* __restrict__ x, const T* __restrict__ gy, T* __restrict__ partial, int n, int c,
    int f, int h, int w, int ho, int wo, int kh, int kw, int sh, int sw, int ph, int pw, int dh,
    int dw, int tile_w, int tile_h, int planes, int steps, int row_stride, int items_per_split) {
  using dwconv::kRows;
  extern __shared__ __align__(16) unsigned char dw_weight_bytes[];
  __shared__ const T* in_plane[dwconv::kMaxPlanes];
  const dwconv::Geometry g = {h, w, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw};
  const dwconv::TileShape t = {tile_w, tile_h, planes, steps, row_stride};
  const dwconv::ThreadPos me = dwconv::thread_pos(tile_w, tile_h);
  const dwconv::Staged st(g, t);
  T* tile = reinterpret_cast<T*>(dw_weight_bytes);
  const int filt = blockIdx.x, ch = filt / (f / c), taps = kh * kw;
  const int tiles_w = (wo + tile_w - 1) / tile_w, tiles_h = (ho + t.out_rows() - 1) / t.out_rows();
  const int items = (n + planes - 1) / planes * tiles_h * tiles_w;
  const int item0 = blockIdx.y * items_per_split;
  const int item1 = min(items, item0 + items_per_split);
  const T* win0 = tile + me.tp * st.plane_stride + me.ty * kRows * sh * row_stride + me.tx * sw;
  const int out_step = sh * row_stride, step_offset = tile_h * kRows * out_step;
  constexpr int kAcc = KH > 0 ? KH * KW : dwconv::kTapGroup;
  const int tap0 = KH > 0 ? 0 : blockIdx.z * dwconv::kTapGroup;
  const int count = KH > 0 ? kAcc : min(dwconv::kTapGroup, taps - tap0);
  int tap_off[dwconv::kTapGroup];  // generic: window offset of each tap of the group
#pragma unroll
  for (int j = 0; j < dwconv::kTapGroup; ++j) {
    const int tap = min(tap0 + j, taps - 1), r = tap / kw;
    tap_off[j] = r * dh * row_stride + (tap - r * kw) * dw;
  }
  T acc[kAcc] = {};
  for (int item = item0; item < item1; ++item) {
    const int col_tile = item % tiles_w, rest = item / tiles_w;
    const int row_tile = rest % tiles_h, sample0 = rest / tiles_h * planes;
    if (threadIdx.x < planes) {  // only staging reads it: others may still be computing
      const int nn = sample0 + threadIdx.x;  // past the batch: stage image 0, unused
      in_plane[threadIdx.x] = x + ((dl::index_t)(nn < n ? nn : 0) * c + ch) * h * w;
    }
    __syncthreads();  // the table is ready and everyone is done with the previous tile
    const int oy0 = row_tile * t.out_rows(), ox0 = col_tile * tile_w;
    dwconv::stage_planes(tile, in_plane, planes, st, row_stride, oy0 * sh - ph, ox0 * sw - pw, h,
                         w);
    __syncthreads();
    const int nn = sample0 + me.tp, ox = ox0 + me.tx;
    if (me.tp < planes && nn < n && ox < wo) {
      const T* gy_col = gy + ((dl::index_t)nn * f + filt) * ho * wo + ox;
      for (int step = 0; step < steps; ++step) {
        const int oy = oy0 + (step * tile_h + me.ty) * kRows;
        T gv[kRows];
#pragma unroll
        for (int v = 0; v < kRows; ++v) gv[v] = oy + v < ho ? gy_col[(oy + v) * wo] : T(0);
        const T* win = win0 + step * step_offset;
        if constexpr (KH > 0) dwconv::strip_weight_fixed<T, KH, KW, S>(win, row_stride, gv, acc);
        else dwconv::strip_weight_group(win, out_step, tap_off, count, gv, acc);
      }
    }
  }
  T* out = partial + ((dl::index_t)blockIdx.y * f + filt) * taps + tap0;
#pragma unroll
  for (int j = 0; j < kAcc; ++j) {
    if (j < count) {  // uniform across the block: every thread reaches the same reductions
      const T total = dl::block_reduce_sum(acc[j]);
      if (threadIdx.x == 0) out[j] = total;
    }
  }
}

// gw[i] = sum over s of partial[s * numel + i], s in order: deterministic. 1-D grid-stride.
template <typename T>
__global__ void conv2d_depthwise_backward_weight_reduce(const T* __restrict__ partial,
                                                        T* __restrict__ gw, long long numel,
                                                        int splits) {
  DL_GRID_STRIDE_LOOP(i, numel) {
    T sum = T(0);
    for (int s = 0; s < splits; ++s) sum += partial[(dl::index_t)s * numel + i];
    gw[i] = sum;
  }
}

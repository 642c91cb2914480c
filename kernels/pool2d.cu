// pool2d.cu -- 2-D max and average pooling, forward and backward.
//
// Shape letters: N batch, C channels, H x W input plane, Ho x Wo output plane, KH x KW window,
// stride (SH, SW), padding (PH, PW), dilation (DH, DW; max pooling only). x and gx are
// (N, C, H, W), y, gy and indices are (N, C, Ho, Wo); all C-contiguous. The N*C planes are
// independent and share one window geometry, so every kernel sees NC = N*C planes.
//
// Algorithm. Forward: one thread per output position (oh, ow) of a plane. It finds its window's
// taps inside the input once -- the first row and column and how many of each, clamped to the
// input, so the tap loops have no bounds test (a dilated window needs one division per
// dimension for that, outside the loops) -- and then runs those loops for every plane it
// serves. Max pooling keeps the first maximum in scan order (row-major over the window; a later
// equal value never replaces it, a NaN always does, so the last NaN wins, as in PyTorch) and
// saves its flat index ih * W + iw in the input plane as int32; padding taps are never visited,
// so padding never wins. A window with no tap inside the input (possible only with dilation)
// yields -inf and index -1. Average pooling sums the window's taps inside the input and
// multiplies by scale[oh, ow] = 1 / divisor, a (Ho, Wo) table the host computes with PyTorch's
// rules (count_include_pad, divisor_override; dlcore.ops.pool_cpu.avg_scale), shared by every
// plane and by the NumPy twin, so no kernel divides per tap.
//
// Backward is a gather: one thread per input position (ih, iw) sums, for each plane it serves,
// the windows covering it, in a fixed order (oh, then ow, ascending): no atomics, the same bits
// on every run. The outputs whose window spans cover (ih, iw) form a rectangle
// [oh0, oh1) x [ow0, ow1), found once per thread (integer divisions there, none in the loops).
// Max adds gy[oh, ow] where indices[oh, ow] names this input (a dilated window whose taps step
// over the input cannot name it, so the rectangle needs no tap test); average adds
// scale[oh, ow] * gy[oh, ow]. Each pass takes two planes, so a thread has twice the loads in
// flight (an input covered by one window has only gy and indices to wait for).
//
// Element types: float, double, __half and __nv_bfloat16 (storage only: loads widen to float,
// comparisons and sums run in float, each result is rounded to the 16-bit type once when
// stored; bfloat16 arrays are ml_dtypes' on emu and uint16 words on cuda).
//
// Launch shape: 2-D blocks (bx, by) of at most 256 threads, bx threads over the positions of a
// plane, by planes side by side (a small plane shares its block: 1x1 planes fill 256 threads);
// grid x = ceil(positions / bx) tiles of a plane, grid y any size (the plane loop strides by
// gridDim.y * by). Positions are the outputs (forward) or the inputs (backward) of a plane. The
// host caps the grid at about 2^20 threads, so on large tensors each thread serves several
// planes and pays its setup (a division for (oh, ow), the window bounds) once for all of them.
//
// Memory traffic, the floor each kernel is written to reach (every array once): max forward
// reads x, writes y and indices (4 bytes each); max backward reads gy and indices, writes gx;
// average forward reads x, writes y; average backward reads gy, writes gx (the scale table,
// Ho*Wo entries for all planes, stays in cache). Overlapping windows re-read x, gy and indices
// about KH*KW / (SH*SW) times, from cache. Outputs are written once, with no fill beforehand.
// A warp's loads and stores are contiguous in output (forward) or input (backward) order.
//
// Limits. Element counts and plane offsets are 64-bit; positions inside a plane are int32, so
// H*W and Ho*Wo must be below 2^31 (dlcore.ops.pool checks; the saved indices are int32 for
// the same reason). Blocks of more than 256 threads are refused (__launch_bounds__).

#include "common.cuh"
#include "half.cuh"

// dlcore: instantiate maxpool2d_forward<float>
// dlcore: instantiate maxpool2d_forward<double>
// dlcore: instantiate maxpool2d_forward<__half>
// dlcore: instantiate maxpool2d_forward<__nv_bfloat16>
// dlcore: instantiate maxpool2d_backward<float>
// dlcore: instantiate maxpool2d_backward<double>
// dlcore: instantiate maxpool2d_backward<__half>
// dlcore: instantiate maxpool2d_backward<__nv_bfloat16>
// dlcore: instantiate avgpool2d_forward<float>
// dlcore: instantiate avgpool2d_forward<double>
// dlcore: instantiate avgpool2d_forward<__half>
// dlcore: instantiate avgpool2d_forward<__nv_bfloat16>
// dlcore: instantiate avgpool2d_backward<float>
// dlcore: instantiate avgpool2d_backward<double>
// dlcore: instantiate avgpool2d_backward<__half>
// dlcore: instantiate avgpool2d_backward<__nv_bfloat16>

namespace pool {

// Loads widen to Acc<T> (float for __half and __nv_bfloat16), results round once to T:
// half.cuh.
using dl::Acc;
using dl::narrow;
using dl::widen;

// -inf: NVRTC has no INFINITY macro (no <math.h>); the float bit pattern widens exactly.
__device__ __forceinline__ float negative_infinity() { return __int_as_float((int)0xff800000u); }

// The taps of one window dimension that land in the input [0, size): the first one's
// coordinate and how many there are (<= 0: none). The window starts at `start` (>= -P, and
// < size, as pool2d_out_size guarantees) and has `k` taps `d` apart.
struct Taps {
  int first, count;
};

__device__ __forceinline__ Taps taps_inside(int start, int k, int d, int size) {
  if (d == 1) {
    const int skip = max(-start, 0);
    return {start + skip, min(k, size - start) - skip};
  }
  const int skip = start < 0 ? (d - 1 - start) / d : 0;  // ceil(-start / d)
  return {start + skip * d, min(k, (size - start + d - 1) / d) - skip};
}

// The outputs [first, end) along one dimension whose window span [o*S - P, o*S - P + span]
// covers input coordinate `i` (span = (K - 1) * D), clipped to [0, out).
struct Range {
  int first, end;
};

__device__ __forceinline__ Range covering(int i, int span, int s, int p, int out) {
  const int t = i + p;
  return {t <= span ? 0 : (t - span + s - 1) / s, min(t / s + 1, out)};
}

// This thread's position in its plane. Unsigned: positions < 2^31 and grid x * block x < 2^32,
// so it cannot wrap before the bounds test.
__device__ __forceinline__ unsigned position() { return blockIdx.x * blockDim.x + threadIdx.x; }

__device__ __forceinline__ bool outside(int positions) {
  return position() >= (unsigned)positions;
}

__device__ __forceinline__ long long first_plane() {
  return (long long)blockIdx.y * blockDim.y + threadIdx.y;
}

__device__ __forceinline__ long long plane_stride() {
  return (long long)gridDim.y * blockDim.y;
}

}  // namespace pool

// y[nc, oh, ow] = max over the window; indices[nc, oh, ow] = ih * W + iw of the first maximum.
template <typename T>
__global__ void __launch_bounds__(256)
    maxpool2d_forward(const T* __restrict__ x, T* __restrict__ y, int* __restrict__ indices,
                      long long planes, int h, int w, int ho, int wo, int kh, int kw, int sh,
                      int sw, int ph, int pw, int dh, int dw) {
  typedef typename pool::Acc<T>::type A;
  if (pool::outside(ho * wo)) return;
  const int o = (int)pool::position(), oh = o / wo, ow = o - oh * wo;
  const pool::Taps rows = pool::taps_inside(oh * sh - ph, kh, dh, h);
  const pool::Taps cols = pool::taps_inside(ow * sw - pw, kw, dw, w);
  const int first = rows.first * w + cols.first, row_step = dh * w;
  const long long in_plane = (long long)h * w, out_plane = (long long)ho * wo;
  for (long long p = pool::first_plane(); p < planes; p += pool::plane_stride()) {
    const long long out = p * out_plane + o;
    if (rows.count <= 0 || cols.count <= 0) {  // a dilated window entirely in padding
      y[out] = pool::narrow<T>(pool::negative_infinity());
      indices[out] = -1;
      continue;
    }
    const T* plane = x + p * in_plane;
    A best = pool::widen(plane[first]);
    int best_at = first;
    for (int r = 0, row = first; r < rows.count; ++r, row += row_step) {
      for (int s = 0, at = row; s < cols.count; ++s, at += dw) {
        const A v = pool::widen(plane[at]);
        if (v > best || v != v) {
          best = v;
          best_at = at;
        }
      }
    }
    y[out] = pool::narrow<T>(best);
    indices[out] = best_at;
  }
}

// gx[nc, ih, iw] = sum of gy[nc, oh, ow] over the windows whose saved index is this input.
template <typename T>
__global__ void __launch_bounds__(256)
    maxpool2d_backward(const T* __restrict__ gy, const int* __restrict__ indices,
                       T* __restrict__ gx, long long planes, int h, int w, int ho, int wo,
                       int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw) {
  typedef typename pool::Acc<T>::type A;
  if (pool::outside(h * w)) return;
  const int self = (int)pool::position(), ih = self / w, iw = self - ih * w;
  const pool::Range rows = pool::covering(ih, (kh - 1) * dh, sh, ph, ho);
  const pool::Range cols = pool::covering(iw, (kw - 1) * dw, sw, pw, wo);
  const long long in_plane = (long long)h * w, out_plane = (long long)ho * wo;
  const long long step = pool::plane_stride();
  // Two planes per pass (the second a repeat of the first past the end, loaded but not
  // stored): their loads are independent, twice the memory requests in flight per thread.
  for (long long p = pool::first_plane(); p < planes; p += 2 * step) {
    const bool pair = p + step < planes;
    const long long second = pair ? step * out_plane : 0;
    const T *g0 = gy + p * out_plane, *g1 = g0 + second;
    const int *at0 = indices + p * out_plane, *at1 = at0 + second;
    A sum0 = A(0), sum1 = A(0);
    for (int oh = rows.first; oh < rows.end; ++oh) {
#pragma unroll 4
      for (int o = oh * wo + cols.first, end = oh * wo + cols.end; o < end; ++o) {
        // all four loads issued at once: a load of g behind its index test would wait
        const A v0 = pool::widen(g0[o]), v1 = pool::widen(g1[o]);
        sum0 += at0[o] == self ? v0 : A(0);
        sum1 += at1[o] == self ? v1 : A(0);
      }
    }
    T* out = gx + p * in_plane + self;
    out[0] = pool::narrow<T>(sum0);
    if (pair) out[step * in_plane] = pool::narrow<T>(sum1);
  }
}

// y[nc, oh, ow] = scale[oh, ow] * (sum over the window); scale holds 1 / PyTorch's divisor.
template <typename T>
__global__ void __launch_bounds__(256)
    avgpool2d_forward(const T* __restrict__ x,
                      const typename pool::Acc<T>::type* __restrict__ scale, T* __restrict__ y,
                      long long planes, int h, int w, int ho, int wo, int kh, int kw, int sh,
                      int sw, int ph, int pw) {
  typedef typename pool::Acc<T>::type A;
  if (pool::outside(ho * wo)) return;
  const int o = (int)pool::position(), oh = o / wo, ow = o - oh * wo;
  const pool::Taps rows = pool::taps_inside(oh * sh - ph, kh, 1, h);
  const pool::Taps cols = pool::taps_inside(ow * sw - pw, kw, 1, w);
  const int first = rows.first * w + cols.first;
  const A factor = scale[o];
  const long long in_plane = (long long)h * w, out_plane = (long long)ho * wo;
  for (long long p = pool::first_plane(); p < planes; p += pool::plane_stride()) {
    const T* plane = x + p * in_plane;
    A sum = A(0);
    for (int r = 0, row = first; r < rows.count; ++r, row += w) {
      for (int s = 0; s < cols.count; ++s) sum += pool::widen(plane[row + s]);
    }
    y[p * out_plane + o] = pool::narrow<T>(sum * factor);
  }
}

// gx[nc, ih, iw] = sum of scale[oh, ow] * gy[nc, oh, ow] over the windows covering the input.
template <typename T>
__global__ void __launch_bounds__(256)
    avgpool2d_backward(const T* __restrict__ gy,
                       const typename pool::Acc<T>::type* __restrict__ scale,
                       T* __restrict__ gx, long long planes, int h, int w, int ho, int wo,
                       int kh, int kw, int sh, int sw, int ph, int pw) {
  typedef typename pool::Acc<T>::type A;
  if (pool::outside(h * w)) return;
  const int self = (int)pool::position(), ih = self / w, iw = self - ih * w;
  const pool::Range rows = pool::covering(ih, kh - 1, sh, ph, ho);
  const pool::Range cols = pool::covering(iw, kw - 1, sw, pw, wo);
  const long long in_plane = (long long)h * w, out_plane = (long long)ho * wo;
  const long long step = pool::plane_stride();
  // Two planes per pass, as in maxpool2d_backward.
  for (long long p = pool::first_plane(); p < planes; p += 2 * step) {
    const bool pair = p + step < planes;
    const long long q = pair ? p + step : p;
    const T *g0 = gy + p * out_plane, *g1 = gy + q * out_plane;
    A sum0 = A(0), sum1 = A(0);
    for (int oh = rows.first; oh < rows.end; ++oh) {
#pragma unroll 4
      for (int o = oh * wo + cols.first, end = oh * wo + cols.end; o < end; ++o) {
        const A factor = scale[o];
        sum0 += pool::widen(g0[o]) * factor;
        sum1 += pool::widen(g1[o]) * factor;
      }
    }
    gx[p * in_plane + self] = pool::narrow<T>(sum0);
    if (pair) gx[q * in_plane + self] = pool::narrow<T>(sum1);
  }
}

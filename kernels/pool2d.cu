// pool2d.cu -- 2-D max and average pooling, forward and backward.
//
// Shape letters: N batch, C channels, H x W input plane, Ho x Wo output plane, KH x KW window,
// stride (SH, SW), padding (PH, PW), dilation (DH, DW; max pooling only). x and gx are
// (N, C, H, W), y, gy and indices are (N, C, Ho, Wo); all C-contiguous. The N*C planes are
// independent, so every kernel treats the batch as NC = N*C planes.
//
// Algorithm. Forward: one thread per output element (grid-stride over NC*Ho*Wo), scanning its
// window. Max pooling keeps the first maximum in scan order (row-major over the window; a later
// equal value never replaces it, a NaN always does, as PyTorch) and saves its flat index
// ih * W + iw into the input plane as int64; padding taps are skipped, so padding never wins.
// A window with no tap inside the input (possible only with dilation) yields -inf and index -1.
// Average pooling follows PyTorch: the window is clipped to the padded input [-P, L + P), its
// size there is the divisor with count_include_pad, the size clipped to the input without;
// divisor_override (> 0) replaces both; a window entirely in padding yields 0.
//
// Backward is a gather: one thread per input element (grid-stride over NC*H*W, W fastest, so
// reads of gy rows and writes of gx coalesce) sums the windows covering it, in a fixed order.
// No atomics; the result is deterministic. Max: for each window tap (r, s) that could place this
// input in window (oh, ow) = ((ih + PH - r*DH) / SH, (iw + PW - s*DW) / SW), exact and in
// range, add gy[oh, ow] if indices[oh, ow] names this input. Average: add gy[oh, ow] / divisor
// over the output rows and columns whose windows cover it.
//
// Launch shape: 1-D blocks of any size (256 suggested), 1-D grid of any size (grid-stride loops).
//
// Memory traffic. Forward reads each input KH*KW / (SH*SW) times (through cache), writes y
// (and indices) once. Backward writes gx once and reads gy (and indices) about
// KH*KW / (SH*SW) times per input element.
//
// Limits. Element counts and offsets are 64-bit; plane sizes H*W and Ho*Wo fit in int32 (the
// saved indices are flat plane indices).
#include "common.cuh"

// dlcore: instantiate maxpool2d_forward<float>
// dlcore: instantiate maxpool2d_forward<double>
// dlcore: instantiate maxpool2d_backward<float>
// dlcore: instantiate maxpool2d_backward<double>
// dlcore: instantiate avgpool2d_forward<float>
// dlcore: instantiate avgpool2d_forward<double>
// dlcore: instantiate avgpool2d_backward<float>
// dlcore: instantiate avgpool2d_backward<double>

namespace pool {

// -inf for T: NVRTC has no INFINITY macro (no <math.h>); the float bit pattern widens exactly.
template <typename T>
__device__ __forceinline__ T negative_infinity() {
  return T(__int_as_float((int)0xff800000u));
}

// The divisor of average-pooling window (oh, ow), as PyTorch defines it.
__device__ __forceinline__ int avg_divisor(int oh, int ow, int h, int w, int kh, int kw, int sh,
                                           int sw, int ph, int pw, int count_include_pad,
                                           int divisor_override) {
  if (divisor_override > 0) return divisor_override;
  int h0 = oh * sh - ph, w0 = ow * sw - pw;
  int h1 = min(h0 + kh, h + ph), w1 = min(w0 + kw, w + pw);
  if (count_include_pad) return (h1 - h0) * (w1 - w0);
  h0 = max(h0, 0);
  w0 = max(w0, 0);
  h1 = min(h1, h);
  w1 = min(w1, w);
  return (h1 - h0) * (w1 - w0);
}

}  // namespace pool

// y[nc, oh, ow] = max over the window; indices[nc, oh, ow] = ih * W + iw of the first maximum.
template <typename T>
__global__ void maxpool2d_forward(const T* __restrict__ x, T* __restrict__ y,
                                  long long* __restrict__ indices, long long total, int h, int w,
                                  int ho, int wo, int kh, int kw, int sh, int sw, int ph, int pw,
                                  int dh, int dw) {
  DL_GRID_STRIDE_LOOP(i, total) {
    const int ow = (int)(i % wo), oh = (int)((i / wo) % ho);
    const T* plane = x + (i / ((dl::index_t)ho * wo)) * h * w;
    const int h0 = oh * sh - ph, w0 = ow * sw - pw;
    T best = T(0);
    long long best_at = -1;
    for (int r = 0; r < kh; ++r) {
      const int ih = h0 + r * dh;
      if (ih < 0 || ih >= h) continue;
      for (int s = 0; s < kw; ++s) {
        const int iw = w0 + s * dw;
        if (iw < 0 || iw >= w) continue;
        const T v = plane[ih * w + iw];
        if (best_at < 0 || v > best || v != v) {
          best = v;
          best_at = ih * w + iw;
        }
      }
    }
    y[i] = best_at < 0 ? pool::negative_infinity<T>() : best;
    indices[i] = best_at;
  }
}

// gx[nc, ih, iw] = sum of gy[nc, oh, ow] over the windows whose saved index is this input.
template <typename T>
__global__ void maxpool2d_backward(const T* __restrict__ gy, const long long* __restrict__ indices,
                                   T* __restrict__ gx, long long total, int h, int w, int ho,
                                   int wo, int kh, int kw, int sh, int sw, int ph, int pw, int dh,
                                   int dw) {
  DL_GRID_STRIDE_LOOP(i, total) {
    const int iw = (int)(i % w), ih = (int)((i / w) % h);
    const dl::index_t out_plane = (i / ((dl::index_t)h * w)) * ho * wo;
    const long long self = ih * w + iw;
    T sum = T(0);
    for (int r = 0; r < kh; ++r) {
      const int th = ih + ph - r * dh;
      if (th < 0) break;  // th only decreases with r
      if (th % sh != 0 || th / sh >= ho) continue;
      const int oh = th / sh;
      for (int s = 0; s < kw; ++s) {
        const int tw = iw + pw - s * dw;
        if (tw < 0) break;
        if (tw % sw != 0 || tw / sw >= wo) continue;
        const dl::index_t o = out_plane + oh * wo + tw / sw;
        if (indices[o] == self) sum += gy[o];
      }
    }
    gx[i] = sum;
  }
}

// y[nc, oh, ow] = mean over the window (PyTorch's divisor rules, see the file header).
template <typename T>
__global__ void avgpool2d_forward(const T* __restrict__ x, T* __restrict__ y, long long total,
                                  int h, int w, int ho, int wo, int kh, int kw, int sh, int sw,
                                  int ph, int pw, int count_include_pad, int divisor_override) {
  DL_GRID_STRIDE_LOOP(i, total) {
    const int ow = (int)(i % wo), oh = (int)((i / wo) % ho);
    const T* plane = x + (i / ((dl::index_t)ho * wo)) * h * w;
    const int h0 = max(oh * sh - ph, 0), w0 = max(ow * sw - pw, 0);
    const int h1 = min(oh * sh - ph + kh, h), w1 = min(ow * sw - pw + kw, w);
    if (h0 >= h1 || w0 >= w1) {
      y[i] = T(0);
      continue;
    }
    T sum = T(0);
    for (int ih = h0; ih < h1; ++ih)
      for (int iw = w0; iw < w1; ++iw) sum += plane[ih * w + iw];
    y[i] = sum / T(pool::avg_divisor(oh, ow, h, w, kh, kw, sh, sw, ph, pw, count_include_pad,
                                     divisor_override));
  }
}

// gx[nc, ih, iw] = sum of gy[nc, oh, ow] / divisor(oh, ow) over the windows covering the input.
template <typename T>
__global__ void avgpool2d_backward(const T* __restrict__ gy, T* __restrict__ gx, long long total,
                                   int h, int w, int ho, int wo, int kh, int kw, int sh, int sw,
                                   int ph, int pw, int count_include_pad, int divisor_override) {
  DL_GRID_STRIDE_LOOP(i, total) {
    const int iw = (int)(i % w), ih = (int)((i / w) % h);
    const T* gy_plane = gy + (i / ((dl::index_t)h * w)) * ho * wo;
    // Windows oh with oh*SH - PH <= ih < oh*SH - PH + KH.
    const int oh0 = ih + ph < kh ? 0 : (ih + ph - kh) / sh + 1, oh1 = min((ih + ph) / sh + 1, ho);
    const int ow0 = iw + pw < kw ? 0 : (iw + pw - kw) / sw + 1, ow1 = min((iw + pw) / sw + 1, wo);
    T sum = T(0);
    for (int oh = oh0; oh < oh1; ++oh)
      for (int ow = ow0; ow < ow1; ++ow)
        sum += gy_plane[oh * wo + ow] / T(pool::avg_divisor(oh, ow, h, w, kh, kw, sh, sw, ph, pw,
                                                            count_include_pad, divisor_override));
    gx[i] = sum;
  }
}

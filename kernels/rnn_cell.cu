// rnn_cell.cu -- fused per-time-step cell kernels for RNN (tanh/relu), LSTM and GRU layers.
//
// Algorithm: dlcore.ops.rnn runs a layer as one GEMM for the input projection of all steps,
// then per step one GEMM for the hidden projection (cuBLAS through CuPy) and ONE of these
// kernels for the gate nonlinearities, the state update and the masking of padded steps.
// Backward through time mirrors it: per step one backward kernel (gate gradients, the direct
// part of the state gradients), then one GEMM for the recurrent part. The NumPy twin of every
// kernel is dlcore/ops/rnn_cpu.py (Cells, the same per-step interface); tests compare the two
// on the emulator.
//
// Shape letters: N batch, H hidden size, G gates (RNN 1, LSTM 4, GRU 3); all arrays are
// C-contiguous rows of one time step. Gate order is PyTorch's: LSTM (i, f, g, o), GRU (r, z, n).
//   xg (N, G*H)   input projection of this step, biases folded in (GRU: b_hn excluded)
//   hg (N, G*H)   hidden projection h_prev @ W_hh^T (no bias)
//   lengths (N)   valid length of each sequence: step t updates sequence n only if t < lengths[n];
//                 a padded step keeps the state, writes 0 to the output and passes gradient
//                 straight through to the previous state.
// Launch shape: 1-D grid-stride over N*H elements, one thread per (n, j); any grid works.
// Memory traffic per step: forward reads (2G + 2) N*H values and writes (G + 3) N*H;
// backward about the same. Every element is independent: no shared memory, no barriers.
// Element types: float, double, __half and __nv_bfloat16 (storage only: each load widens to
// float, the cell math runs in float with tanhf, and every stored value is rounded to the
// 16-bit type once; a state a padded step keeps is copied bit for bit). The NumPy twin does the
// same for float16 and bfloat16.
// Limits: N*H < 2^63; t, N, H fit in int.

#include "common.cuh"
#include "half.cuh"

// dlcore: instantiate rnn_cell_forward<float>
// dlcore: instantiate rnn_cell_forward<double>
// dlcore: instantiate rnn_cell_forward<__half>
// dlcore: instantiate rnn_cell_forward<__nv_bfloat16>
// dlcore: instantiate rnn_cell_backward<float>
// dlcore: instantiate rnn_cell_backward<double>
// dlcore: instantiate rnn_cell_backward<__half>
// dlcore: instantiate rnn_cell_backward<__nv_bfloat16>
// dlcore: instantiate lstm_cell_forward<float>
// dlcore: instantiate lstm_cell_forward<double>
// dlcore: instantiate lstm_cell_forward<__half>
// dlcore: instantiate lstm_cell_forward<__nv_bfloat16>
// dlcore: instantiate lstm_cell_backward<float>
// dlcore: instantiate lstm_cell_backward<double>
// dlcore: instantiate lstm_cell_backward<__half>
// dlcore: instantiate lstm_cell_backward<__nv_bfloat16>
// dlcore: instantiate gru_cell_forward<float>
// dlcore: instantiate gru_cell_forward<double>
// dlcore: instantiate gru_cell_forward<__half>
// dlcore: instantiate gru_cell_forward<__nv_bfloat16>
// dlcore: instantiate gru_cell_backward<float>
// dlcore: instantiate gru_cell_backward<double>
// dlcore: instantiate gru_cell_backward<__half>
// dlcore: instantiate gru_cell_backward<__nv_bfloat16>

// ---- preamble shared by forward and backward ----------------------------------------------
namespace rnn {

// Loads widen to Acc<T> (float for __half and __nv_bfloat16), results round once to T:
// half.cuh.
using dl::Acc;
using dl::narrow;
using dl::widen;

__device__ __forceinline__ float tanh_(float x) { return tanhf(x); }
__device__ __forceinline__ double tanh_(double x) { return tanh(x); }

// 0.5 * (1 + tanh(x / 2)): exact sigmoid that never overflows, the same formula as NumPy's path.
template <typename T>
__device__ __forceinline__ T sigmoid(T x) {
  return T(0.5) * (tanh_(T(0.5) * x) + T(1));
}

// Derivatives written in terms of the activation's output y, which is what forward saves.
template <typename T>
__device__ __forceinline__ T sigmoid_grad(T y) {
  return y * (T(1) - y);
}

template <typename T>
__device__ __forceinline__ T tanh_grad(T y) {
  return T(1) - y * y;
}

// The (n, j) element of a (N, H) array; `gate` selects a block of a (N, G*H) array.
__device__ __forceinline__ dl::index_t at(dl::index_t n, int j, int H, int G, int gate) {
  return n * (dl::index_t)G * H + (dl::index_t)gate * H + j;
}

}  // namespace rnn

// ---- Elman RNN: h' = act(xg + hg), act = tanh or relu -------------------------------------
// Saves nothing beyond the output y: act'(.) is computed from y at valid steps.
template <typename T>
__global__ void rnn_cell_forward(const T* __restrict__ xg, const T* __restrict__ hg,
                                 const T* __restrict__ h_prev, const int* __restrict__ lengths,
                                 int t, int use_relu, T* __restrict__ h_out, T* __restrict__ y,
                                 int N, int H) {
  typedef typename rnn::Acc<T>::type A;
  DL_GRID_STRIDE_LOOP(i, (dl::index_t)N * H) {
    const dl::index_t n = i / H;
    const A a = rnn::widen(xg[i]) + rnn::widen(hg[i]);
    const A h = use_relu ? (a > A(0) ? a : A(0)) : rnn::tanh_(a);
    const bool valid = t < lengths[n];
    h_out[i] = valid ? rnn::narrow<T>(h) : h_prev[i];
    y[i] = rnn::narrow<T>(valid ? h : A(0));
  }
}

// dh_state: gradient reaching this step's output state; gy: gradient of y at this step.
// Writes dxg (gradient of the pre-activation, also the hidden-projection gradient) and
// dh_direct (the part of d h_prev not flowing through W_hh: the pass-through of padded steps).
template <typename T>
__global__ void rnn_cell_backward(const T* __restrict__ gy, const T* __restrict__ dh_state,
                                  const T* __restrict__ y, const int* __restrict__ lengths, int t,
                                  int use_relu, T* __restrict__ dxg, T* __restrict__ dh_direct,
                                  int N, int H) {
  typedef typename rnn::Acc<T>::type A;
  DL_GRID_STRIDE_LOOP(i, (dl::index_t)N * H) {
    const dl::index_t n = i / H;
    const bool valid = t < lengths[n];
    const A dh = valid ? rnn::widen(dh_state[i]) + rnn::widen(gy[i]) : A(0);
    const A h = rnn::widen(y[i]);
    dxg[i] = rnn::narrow<T>(dh * (use_relu ? (h > A(0) ? A(1) : A(0)) : rnn::tanh_grad(h)));
    dh_direct[i] = valid ? rnn::narrow<T>(A(0)) : dh_state[i];
  }
}

// ---- LSTM: i, f, o = sigmoid; g = tanh; c' = f c + i g; h' = o tanh(c') --------------------
// Saves the activated gates (N, 4H) and tanh(c') (N, H); the caller keeps c_prev. For __half,
// c' and h' are computed from the unrounded gates and tanh(c'); only the stores round.
template <typename T>
__global__ void lstm_cell_forward(const T* __restrict__ xg, const T* __restrict__ hg,
                                  const T* __restrict__ h_prev, const T* __restrict__ c_prev,
                                  const int* __restrict__ lengths, int t, T* __restrict__ h_out,
                                  T* __restrict__ c_out, T* __restrict__ y, T* __restrict__ gates,
                                  T* __restrict__ tanh_c, int N, int H) {
  typedef typename rnn::Acc<T>::type A;
  DL_GRID_STRIDE_LOOP(i, (dl::index_t)N * H) {
    const dl::index_t n = i / H;
    const int j = (int)(i - n * H);
    const dl::index_t ai = rnn::at(n, j, H, 4, 0), af = rnn::at(n, j, H, 4, 1);
    const dl::index_t ag = rnn::at(n, j, H, 4, 2), ao = rnn::at(n, j, H, 4, 3);
    const A ig = rnn::sigmoid(rnn::widen(xg[ai]) + rnn::widen(hg[ai]));
    const A fg = rnn::sigmoid(rnn::widen(xg[af]) + rnn::widen(hg[af]));
    const A gg = rnn::tanh_(rnn::widen(xg[ag]) + rnn::widen(hg[ag]));
    const A og = rnn::sigmoid(rnn::widen(xg[ao]) + rnn::widen(hg[ao]));
    const A c = fg * rnn::widen(c_prev[i]) + ig * gg;
    const A tc = rnn::tanh_(c);
    const A h = og * tc;
    gates[ai] = rnn::narrow<T>(ig);
    gates[af] = rnn::narrow<T>(fg);
    gates[ag] = rnn::narrow<T>(gg);
    gates[ao] = rnn::narrow<T>(og);
    tanh_c[i] = rnn::narrow<T>(tc);
    const bool valid = t < lengths[n];
    h_out[i] = valid ? rnn::narrow<T>(h) : h_prev[i];
    c_out[i] = valid ? rnn::narrow<T>(c) : c_prev[i];
    y[i] = rnn::narrow<T>(valid ? h : A(0));
  }
}

// dh_state, dc_state: gradients reaching this step's output states. Writes dxg (N, 4H), the
// gradient of the gate pre-activations, dh_direct (padded pass-through) and dc_prev.
template <typename T>
__global__ void lstm_cell_backward(const T* __restrict__ gy, const T* __restrict__ dh_state,
                                   const T* __restrict__ dc_state, const T* __restrict__ gates,
                                   const T* __restrict__ c_prev, const T* __restrict__ tanh_c,
                                   const int* __restrict__ lengths, int t, T* __restrict__ dxg,
                                   T* __restrict__ dh_direct, T* __restrict__ dc_prev, int N,
                                   int H) {
  typedef typename rnn::Acc<T>::type A;
  DL_GRID_STRIDE_LOOP(i, (dl::index_t)N * H) {
    const dl::index_t n = i / H;
    const int j = (int)(i - n * H);
    const dl::index_t ai = rnn::at(n, j, H, 4, 0), af = rnn::at(n, j, H, 4, 1);
    const dl::index_t ag = rnn::at(n, j, H, 4, 2), ao = rnn::at(n, j, H, 4, 3);
    const bool valid = t < lengths[n];
    const A ig = rnn::widen(gates[ai]), fg = rnn::widen(gates[af]), gg = rnn::widen(gates[ag]);
    const A og = rnn::widen(gates[ao]), tc = rnn::widen(tanh_c[i]);
    const A dh = valid ? rnn::widen(dh_state[i]) + rnn::widen(gy[i]) : A(0);
    const A dc = valid ? rnn::widen(dc_state[i]) + dh * og * rnn::tanh_grad(tc) : A(0);
    dxg[ai] = rnn::narrow<T>(dc * gg * rnn::sigmoid_grad(ig));
    dxg[af] = rnn::narrow<T>(dc * rnn::widen(c_prev[i]) * rnn::sigmoid_grad(fg));
    dxg[ag] = rnn::narrow<T>(dc * ig * rnn::tanh_grad(gg));
    dxg[ao] = rnn::narrow<T>(dh * tc * rnn::sigmoid_grad(og));
    dh_direct[i] = valid ? rnn::narrow<T>(A(0)) : dh_state[i];
    dc_prev[i] = valid ? rnn::narrow<T>(dc * fg) : dc_state[i];
  }
}

// ---- GRU: r, z = sigmoid; n = tanh(xn + r (W_hn h + b_hn)); h' = (1 - z) n + z h -----------
// Saves the activated gates (N, 3H) and hn = W_hn h + b_hn (N, H), which dr needs.
template <typename T>
__global__ void gru_cell_forward(const T* __restrict__ xg, const T* __restrict__ hg,
                                 const T* __restrict__ b_hn, const T* __restrict__ h_prev,
                                 const int* __restrict__ lengths, int t, T* __restrict__ h_out,
                                 T* __restrict__ y, T* __restrict__ gates, T* __restrict__ hn_out,
                                 int N, int H) {
  typedef typename rnn::Acc<T>::type A;
  DL_GRID_STRIDE_LOOP(i, (dl::index_t)N * H) {
    const dl::index_t n = i / H;
    const int j = (int)(i - n * H);
    const dl::index_t ar = rnn::at(n, j, H, 3, 0), az = rnn::at(n, j, H, 3, 1);
    const dl::index_t an = rnn::at(n, j, H, 3, 2);
    const A rg = rnn::sigmoid(rnn::widen(xg[ar]) + rnn::widen(hg[ar]));
    const A zg = rnn::sigmoid(rnn::widen(xg[az]) + rnn::widen(hg[az]));
    const A hn = rnn::widen(hg[an]) + rnn::widen(b_hn[j]);
    const A ng = rnn::tanh_(rnn::widen(xg[an]) + rg * hn);
    const A hp = rnn::widen(h_prev[i]);
    const A h = (A(1) - zg) * ng + zg * hp;
    gates[ar] = rnn::narrow<T>(rg);
    gates[az] = rnn::narrow<T>(zg);
    gates[an] = rnn::narrow<T>(ng);
    hn_out[i] = rnn::narrow<T>(hn);
    const bool valid = t < lengths[n];
    h_out[i] = valid ? rnn::narrow<T>(h) : h_prev[i];
    y[i] = rnn::narrow<T>(valid ? h : A(0));
  }
}

// Writes dxg (N, 3H) for the input projection, dhg (N, 3H) for the hidden projection (they
// differ in the n block: dhg_n = dxg_n * r) and dh_direct = dh' z (+ padded pass-through).
template <typename T>
__global__ void gru_cell_backward(const T* __restrict__ gy, const T* __restrict__ dh_state,
                                  const T* __restrict__ gates, const T* __restrict__ hn,
                                  const T* __restrict__ h_prev, const int* __restrict__ lengths,
                                  int t, T* __restrict__ dxg, T* __restrict__ dhg,
                                  T* __restrict__ dh_direct, int N, int H) {
  typedef typename rnn::Acc<T>::type A;
  DL_GRID_STRIDE_LOOP(i, (dl::index_t)N * H) {
    const dl::index_t n = i / H;
    const int j = (int)(i - n * H);
    const dl::index_t ar = rnn::at(n, j, H, 3, 0), az = rnn::at(n, j, H, 3, 1);
    const dl::index_t an = rnn::at(n, j, H, 3, 2);
    const bool valid = t < lengths[n];
    const A rg = rnn::widen(gates[ar]), zg = rnn::widen(gates[az]), ng = rnn::widen(gates[an]);
    const A dh = valid ? rnn::widen(dh_state[i]) + rnn::widen(gy[i]) : A(0);
    const A dan = dh * (A(1) - zg) * rnn::tanh_grad(ng);
    const A dar = dan * rnn::widen(hn[i]) * rnn::sigmoid_grad(rg);
    const A daz = dh * (rnn::widen(h_prev[i]) - ng) * rnn::sigmoid_grad(zg);
    const T dr = rnn::narrow<T>(dar), dz = rnn::narrow<T>(daz);  // the same in dxg and dhg
    dxg[ar] = dr;
    dxg[az] = dz;
    dxg[an] = rnn::narrow<T>(dan);
    dhg[ar] = dr;
    dhg[az] = dz;
    dhg[an] = rnn::narrow<T>(dan * rg);
    dh_direct[i] = valid ? rnn::narrow<T>(dh * zg) : dh_state[i];
  }
}

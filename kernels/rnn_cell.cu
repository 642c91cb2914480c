// rnn_cell.cu -- fused per-time-step cell kernels for RNN (tanh/relu), LSTM and GRU layers.
//
// Algorithm: dlcore.ops.rnn runs a layer as one GEMM for the input projection of all steps,
// then per step one GEMM for the hidden projection (cuBLAS through CuPy) and ONE of these
// kernels for the gate nonlinearities, the state update and the masking of padded steps.
// Backward through time mirrors it: per step one backward kernel (gate gradients, the direct
// part of the state gradients), then one GEMM for the recurrent part. The NumPy twin of every
// kernel is dlcore/ops/rnn.py (_numpy_* functions); tests compare the two on the emulator.
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
// Limits: N*H < 2^63; t, N, H fit in int.
#include "common.cuh"

// dlcore: instantiate rnn_cell_forward<float>
// dlcore: instantiate rnn_cell_forward<double>
// dlcore: instantiate rnn_cell_backward<float>
// dlcore: instantiate rnn_cell_backward<double>
// dlcore: instantiate lstm_cell_forward<float>
// dlcore: instantiate lstm_cell_forward<double>
// dlcore: instantiate lstm_cell_backward<float>
// dlcore: instantiate lstm_cell_backward<double>
// dlcore: instantiate gru_cell_forward<float>
// dlcore: instantiate gru_cell_forward<double>
// dlcore: instantiate gru_cell_backward<float>
// dlcore: instantiate gru_cell_backward<double>

// ---- preamble shared by forward and backward ----------------------------------------------
namespace rnn {

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
  DL_GRID_STRIDE_LOOP(i, (dl::index_t)N * H) {
    const dl::index_t n = i / H;
    const T a = xg[i] + hg[i];
    const T h = use_relu ? (a > T(0) ? a : T(0)) : rnn::tanh_(a);
    const bool valid = t < lengths[n];
    h_out[i] = valid ? h : h_prev[i];
    y[i] = valid ? h : T(0);
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
  DL_GRID_STRIDE_LOOP(i, (dl::index_t)N * H) {
    const dl::index_t n = i / H;
    const bool valid = t < lengths[n];
    const T dh = valid ? dh_state[i] + gy[i] : T(0);
    const T h = y[i];
    dxg[i] = dh * (use_relu ? (h > T(0) ? T(1) : T(0)) : rnn::tanh_grad(h));
    dh_direct[i] = valid ? T(0) : dh_state[i];
  }
}

// ---- LSTM: i, f, o = sigmoid; g = tanh; c' = f c + i g; h' = o tanh(c') --------------------
// Saves the activated gates (N, 4H) and tanh(c') (N, H); the caller keeps c_prev.
template <typename T>
__global__ void lstm_cell_forward(const T* __restrict__ xg, const T* __restrict__ hg,
                                  const T* __restrict__ h_prev, const T* __restrict__ c_prev,
                                  const int* __restrict__ lengths, int t, T* __restrict__ h_out,
                                  T* __restrict__ c_out, T* __restrict__ y, T* __restrict__ gates,
                                  T* __restrict__ tanh_c, int N, int H) {
  DL_GRID_STRIDE_LOOP(i, (dl::index_t)N * H) {
    const dl::index_t n = i / H;
    const int j = (int)(i - n * H);
    const dl::index_t ai = rnn::at(n, j, H, 4, 0), af = rnn::at(n, j, H, 4, 1);
    const dl::index_t ag = rnn::at(n, j, H, 4, 2), ao = rnn::at(n, j, H, 4, 3);
    const T ig = rnn::sigmoid(xg[ai] + hg[ai]);
    const T fg = rnn::sigmoid(xg[af] + hg[af]);
    const T gg = rnn::tanh_(xg[ag] + hg[ag]);
    const T og = rnn::sigmoid(xg[ao] + hg[ao]);
    const T c = fg * c_prev[i] + ig * gg;
    const T tc = rnn::tanh_(c);
    const T h = og * tc;
    gates[ai] = ig;
    gates[af] = fg;
    gates[ag] = gg;
    gates[ao] = og;
    tanh_c[i] = tc;
    const bool valid = t < lengths[n];
    h_out[i] = valid ? h : h_prev[i];
    c_out[i] = valid ? c : c_prev[i];
    y[i] = valid ? h : T(0);
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
  DL_GRID_STRIDE_LOOP(i, (dl::index_t)N * H) {
    const dl::index_t n = i / H;
    const int j = (int)(i - n * H);
    const dl::index_t ai = rnn::at(n, j, H, 4, 0), af = rnn::at(n, j, H, 4, 1);
    const dl::index_t ag = rnn::at(n, j, H, 4, 2), ao = rnn::at(n, j, H, 4, 3);
    const bool valid = t < lengths[n];
    const T ig = gates[ai], fg = gates[af], gg = gates[ag], og = gates[ao], tc = tanh_c[i];
    const T dh = valid ? dh_state[i] + gy[i] : T(0);
    const T dc = valid ? dc_state[i] + dh * og * rnn::tanh_grad(tc) : T(0);
    dxg[ai] = dc * gg * rnn::sigmoid_grad(ig);
    dxg[af] = dc * c_prev[i] * rnn::sigmoid_grad(fg);
    dxg[ag] = dc * ig * rnn::tanh_grad(gg);
    dxg[ao] = dh * tc * rnn::sigmoid_grad(og);
    dh_direct[i] = valid ? T(0) : dh_state[i];
    dc_prev[i] = valid ? dc * fg : dc_state[i];
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
  DL_GRID_STRIDE_LOOP(i, (dl::index_t)N * H) {
    const dl::index_t n = i / H;
    const int j = (int)(i - n * H);
    const dl::index_t ar = rnn::at(n, j, H, 3, 0), az = rnn::at(n, j, H, 3, 1);
    const dl::index_t an = rnn::at(n, j, H, 3, 2);
    const T rg = rnn::sigmoid(xg[ar] + hg[ar]);
    const T zg = rnn::sigmoid(xg[az] + hg[az]);
    const T hn = hg[an] + b_hn[j];
    const T ng = rnn::tanh_(xg[an] + rg * hn);
    const T hp = h_prev[i];
    const T h = (T(1) - zg) * ng + zg * hp;
    gates[ar] = rg;
    gates[az] = zg;
    gates[an] = ng;
    hn_out[i] = hn;
    const bool valid = t < lengths[n];
    h_out[i] = valid ? h : hp;
    y[i] = valid ? h : T(0);
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
  DL_GRID_STRIDE_LOOP(i, (dl::index_t)N * H) {
    const dl::index_t n = i / H;
    const int j = (int)(i - n * H);
    const dl::index_t ar = rnn::at(n, j, H, 3, 0), az = rnn::at(n, j, H, 3, 1);
    const dl::index_t an = rnn::at(n, j, H, 3, 2);
    const bool valid = t < lengths[n];
    const T rg = gates[ar], zg = gates[az], ng = gates[an];
    const T dh = valid ? dh_state[i] + gy[i] : T(0);
    const T dan = dh * (T(1) - zg) * rnn::tanh_grad(ng);
    const T dar = dan * hn[i] * rnn::sigmoid_grad(rg);
    const T daz = dh * (h_prev[i] - ng) * rnn::sigmoid_grad(zg);
    dxg[ar] = dar;
    dxg[az] = daz;
    dxg[an] = dan;
    dhg[ar] = dar;
    dhg[az] = daz;
    dhg[an] = dan * rg;
    dh_direct[i] = valid ? dh * zg : dh_state[i];
  }
}

// optim.cu -- fused optimizer updates: one launch updates every parameter of a bucket.
//
// Algorithm: dlcore.optim flattens each parameter group (per device and dtype) into one
// contiguous buffer, and keeps the gradients (each parameter's .grad is a view of the flat
// gradient buffer) and each state (momentum, exp_avg, ...) in buffers of the same layout, so
// an update is elementwise over n elements: every thread applies the whole formula of
// PyTorch's single-tensor implementation to its elements, in the same operation order as the
// NumPy twins (dlcore/ops/optim_cpu.py), which are the test oracle. Per-step scalars (bias
// corrections, step sizes, 1 - beta) are computed once on the host in double and passed in T,
// exactly as the NumPy path rounds them. Each rule's formula is written once, as a functor on
// registers, and applied to every lane of a vector and to every element of the scalar tail, so
// the vector and scalar paths give the same bits. unscale_grads is GradScaler's pass: it flags
// an inf/NaN and multiplies by 1/scale in the same read of the gradients.
//
// Launch shape: 1-D grid-stride loop, 256 threads per block, grid capped (optim_cuda.py).
// With OPT_ALIGNED16 in flags (the host's promise that every array starts on a 16-byte
// boundary; dlcore's optimizer gives it for its own buffers) each thread moves 16 bytes per
// array access, float4 or double2, over the first n - n % W elements (W = 4 floats or 2
// doubles), then the last n % W elements one at a time; without it, all n one at a time.
//
// Memory traffic per element: Adam reads param, grad, exp_avg, exp_avg_sq and writes param,
// exp_avg, exp_avg_sq (7 words; 9 with amsgrad); SGD with momentum 5 (3 without: no buffer,
// and the first step does not read it), RMSprop 5-9, Adagrad 5; unscale_grads 2. Purely
// bandwidth bound; no shared memory, no barriers.
//
// Limits: T is float or double; arrays are contiguous, the same length n, and never alias
// (__restrict__; an unused state argument gets a 1-element dummy, never read). Flags are the
// bit sets defined next to each optimizer in Python (MAXIMIZE is always bit 0, ALIGNED16 bit 3).
#include "common.cuh"

#define OPT_MAXIMIZE 1
#define OPT_ALIGNED16 8

namespace optim {

using dl::index_t;

// 16-byte vector access: load/store W consecutive elements of p starting at W * k.
template <typename T>
struct Vec16;

template <>
struct Vec16<float> {
  static constexpr int W = 4;
  __device__ __forceinline__ static void load(const float* __restrict__ p, index_t k,
                                              float* v) {
    const float4 q = reinterpret_cast<const float4*>(p)[k];
    v[0] = q.x;
    v[1] = q.y;
    v[2] = q.z;
    v[3] = q.w;
  }
  __device__ __forceinline__ static void store(float* __restrict__ p, index_t k,
                                               const float* v) {
    reinterpret_cast<float4*>(p)[k] = make_float4(v[0], v[1], v[2], v[3]);
  }
};

template <>
struct Vec16<double> {
  static constexpr int W = 2;
  __device__ __forceinline__ static void load(const double* __restrict__ p, index_t k,
                                              double* v) {
    const double2 q = reinterpret_cast<const double2*>(p)[k];
    v[0] = q.x;
    v[1] = q.y;
  }
  __device__ __forceinline__ static void store(double* __restrict__ p, index_t k,
                                               const double* v) {
    reinterpret_cast<double2*>(p)[k] = make_double2(v[0], v[1]);
  }
};

// Elements [0, vectors * W) go in vectors, the rest one by one (all of them when unaligned).
template <typename T>
__device__ __forceinline__ index_t vector_count(index_t n, int flags) {
  return (flags & OPT_ALIGNED16) ? n / Vec16<T>::W : 0;
}

}  // namespace optim

// SGD: g = grad (+ wd * p); b = momentum * b + (1 - dampening) * g, or b = g on the first
// step; g = g + momentum * b (Nesterov) or b; p -= lr * g.
#define SGD_NESTEROV 2
#define SGD_FIRST_STEP 4

namespace optim {
template <typename T>
struct SgdRule {
  T lr, momentum, one_minus_dampening, weight_decay;
  int flags;
  __device__ __forceinline__ void operator()(T& p, T grad, T& b) const {
    T g = (flags & OPT_MAXIMIZE) ? -grad : grad;
    if (weight_decay != T(0)) g = g + p * weight_decay;
    if (momentum != T(0)) {
      b = (flags & SGD_FIRST_STEP) ? g : b * momentum + g * one_minus_dampening;
      g = (flags & SGD_NESTEROV) ? g + b * momentum : b;
    }
    p = p - g * lr;
  }
};
}  // namespace optim

// dlcore: instantiate sgd_step<float>
// dlcore: instantiate sgd_step<double>
template <typename T>
__global__ void sgd_step(T* __restrict__ param, const T* __restrict__ grad,
                         T* __restrict__ momentum_buffer, long long n, T lr, T momentum,
                         T one_minus_dampening, T weight_decay, int flags) {
  typedef optim::Vec16<T> V;
  const optim::SgdRule<T> rule{lr, momentum, one_minus_dampening, weight_decay, flags};
  const bool keeps = momentum != T(0), reads = keeps && !(flags & SGD_FIRST_STEP);
  const optim::index_t vectors = optim::vector_count<T>(n, flags), done = vectors * V::W;
  DL_GRID_STRIDE_LOOP(k, vectors) {
    T p[V::W], g[V::W], b[V::W] = {};
    V::load(param, k, p);
    V::load(grad, k, g);
    if (reads) V::load(momentum_buffer, k, b);
#pragma unroll
    for (int j = 0; j < V::W; ++j) rule(p[j], g[j], b[j]);
    V::store(param, k, p);
    if (keeps) V::store(momentum_buffer, k, b);
  }
  DL_GRID_STRIDE_LOOP(t, n - done) {
    const optim::index_t i = done + t;
    T p = param[i], b = reads ? momentum_buffer[i] : T(0);
    rule(p, grad[i], b);
    param[i] = p;
    if (keeps) momentum_buffer[i] = b;
  }
}

// Adam / AdamW: g = grad (+ wd * p unless decoupled, where p *= 1 - lr * wd first);
// m += (g - m) * (1 - beta1); v = v * beta2 + (g * (1 - beta2)) * g; amsgrad: vmax = max(vmax, v);
// p -= step_size * m / (sqrt(v or vmax) / sqrt(1 - beta2^t) + eps).
#define ADAM_AMSGRAD 2
#define ADAM_DECOUPLED 4

namespace optim {
template <typename T>
struct AdamRule {
  T decay, weight_decay, one_minus_beta1, beta2, one_minus_beta2, step_size,
      bias_correction2_sqrt, eps;
  int flags;
  __device__ __forceinline__ void operator()(T& p, T grad, T& m, T& v, T& vmax) const {
    T g = (flags & OPT_MAXIMIZE) ? -grad : grad;
    if (weight_decay != T(0)) {
      if (flags & ADAM_DECOUPLED) p = p * decay;
      else g = g + p * weight_decay;
    }
    m = m + (g - m) * one_minus_beta1;
    v = v * beta2 + g * one_minus_beta2 * g;
    T second = v;
    if (flags & ADAM_AMSGRAD) {
      vmax = vmax > v ? vmax : v;
      second = vmax;
    }
    const T denom = sqrt(second) / bias_correction2_sqrt + eps;
    p = p - (m / denom) * step_size;
  }
};
}  // namespace optim

// dlcore: instantiate adam_step<float>
// dlcore: instantiate adam_step<double>
template <typename T>
__global__ void adam_step(T* __restrict__ param, const T* __restrict__ grad,
                          T* __restrict__ exp_avg, T* __restrict__ exp_avg_sq,
                          T* __restrict__ max_exp_avg_sq, long long n, T decay, T weight_decay,
                          T one_minus_beta1, T beta2, T one_minus_beta2, T step_size,
                          T bias_correction2_sqrt, T eps, int flags) {
  typedef optim::Vec16<T> V;
  const optim::AdamRule<T> rule{decay,     weight_decay,          one_minus_beta1, beta2,
                                one_minus_beta2, step_size, bias_correction2_sqrt, eps,
                                flags};
  const bool amsgrad = flags & ADAM_AMSGRAD;
  const optim::index_t vectors = optim::vector_count<T>(n, flags), done = vectors * V::W;
  DL_GRID_STRIDE_LOOP(k, vectors) {
    T p[V::W], g[V::W], m[V::W], v[V::W], vmax[V::W] = {};
    V::load(param, k, p);
    V::load(grad, k, g);
    V::load(exp_avg, k, m);
    V::load(exp_avg_sq, k, v);
    if (amsgrad) V::load(max_exp_avg_sq, k, vmax);
#pragma unroll
    for (int j = 0; j < V::W; ++j) rule(p[j], g[j], m[j], v[j], vmax[j]);
    V::store(param, k, p);
    V::store(exp_avg, k, m);
    V::store(exp_avg_sq, k, v);
    if (amsgrad) V::store(max_exp_avg_sq, k, vmax);
  }
  DL_GRID_STRIDE_LOOP(t, n - done) {
    const optim::index_t i = done + t;
    T p = param[i], m = exp_avg[i], v = exp_avg_sq[i];
    T vmax = amsgrad ? max_exp_avg_sq[i] : T(0);
    rule(p, grad[i], m, v, vmax);
    param[i] = p;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    if (amsgrad) max_exp_avg_sq[i] = vmax;
  }
}

// RMSprop: g = grad (+ wd * p); v = v * alpha + (g * (1 - alpha)) * g; centered:
// ga += (g - ga) * (1 - alpha), avg = sqrt(v - ga * ga) + eps, else avg = sqrt(v) + eps;
// momentum: b = b * momentum + g / avg, p -= b * lr; else p -= (g / avg) * lr.
#define RMSPROP_CENTERED 2
#define RMSPROP_MOMENTUM 4

namespace optim {
template <typename T>
struct RmspropRule {
  T lr, alpha, one_minus_alpha, eps, weight_decay, momentum;
  int flags;
  __device__ __forceinline__ void operator()(T& p, T grad, T& v, T& ga, T& b) const {
    T g = (flags & OPT_MAXIMIZE) ? -grad : grad;
    if (weight_decay != T(0)) g = g + p * weight_decay;
    v = v * alpha + g * one_minus_alpha * g;
    T avg;
    if (flags & RMSPROP_CENTERED) {
      ga = ga + (g - ga) * one_minus_alpha;
      avg = sqrt(v - ga * ga) + eps;
    } else {
      avg = sqrt(v) + eps;
    }
    if (flags & RMSPROP_MOMENTUM) {
      b = b * momentum + g / avg;
      p = p - b * lr;
    } else {
      p = p - (g / avg) * lr;
    }
  }
};
}  // namespace optim

// dlcore: instantiate rmsprop_step<float>
// dlcore: instantiate rmsprop_step<double>
template <typename T>
__global__ void rmsprop_step(T* __restrict__ param, const T* __restrict__ grad,
                             T* __restrict__ square_avg, T* __restrict__ grad_avg,
                             T* __restrict__ momentum_buffer, long long n, T lr, T alpha,
                             T one_minus_alpha, T eps, T weight_decay, T momentum, int flags) {
  typedef optim::Vec16<T> V;
  const optim::RmspropRule<T> rule{lr, alpha, one_minus_alpha, eps, weight_decay, momentum,
                                   flags};
  const bool centered = flags & RMSPROP_CENTERED, with_momentum = flags & RMSPROP_MOMENTUM;
  const optim::index_t vectors = optim::vector_count<T>(n, flags), done = vectors * V::W;
  DL_GRID_STRIDE_LOOP(k, vectors) {
    T p[V::W], g[V::W], v[V::W], ga[V::W] = {}, b[V::W] = {};
    V::load(param, k, p);
    V::load(grad, k, g);
    V::load(square_avg, k, v);
    if (centered) V::load(grad_avg, k, ga);
    if (with_momentum) V::load(momentum_buffer, k, b);
#pragma unroll
    for (int j = 0; j < V::W; ++j) rule(p[j], g[j], v[j], ga[j], b[j]);
    V::store(param, k, p);
    V::store(square_avg, k, v);
    if (centered) V::store(grad_avg, k, ga);
    if (with_momentum) V::store(momentum_buffer, k, b);
  }
  DL_GRID_STRIDE_LOOP(t, n - done) {
    const optim::index_t i = done + t;
    T p = param[i], v = square_avg[i];
    T ga = centered ? grad_avg[i] : T(0), b = with_momentum ? momentum_buffer[i] : T(0);
    rule(p, grad[i], v, ga, b);
    param[i] = p;
    square_avg[i] = v;
    if (centered) grad_avg[i] = ga;
    if (with_momentum) momentum_buffer[i] = b;
  }
}

// Adagrad: g = grad (+ wd * p); s += g * g; p -= (g / (sqrt(s) + eps)) * clr, where
// clr = lr / (1 + (t - 1) * lr_decay) comes from the host.
namespace optim {
template <typename T>
struct AdagradRule {
  T clr, weight_decay, eps;
  int flags;
  __device__ __forceinline__ void operator()(T& p, T grad, T& s) const {
    T g = (flags & OPT_MAXIMIZE) ? -grad : grad;
    if (weight_decay != T(0)) g = g + p * weight_decay;
    s = s + g * g;
    p = p - (g / (sqrt(s) + eps)) * clr;
  }
};
}  // namespace optim

// dlcore: instantiate adagrad_step<float>
// dlcore: instantiate adagrad_step<double>
template <typename T>
__global__ void adagrad_step(T* __restrict__ param, const T* __restrict__ grad,
                             T* __restrict__ sum, long long n, T clr, T weight_decay, T eps,
                             int flags) {
  typedef optim::Vec16<T> V;
  const optim::AdagradRule<T> rule{clr, weight_decay, eps, flags};
  const optim::index_t vectors = optim::vector_count<T>(n, flags), done = vectors * V::W;
  DL_GRID_STRIDE_LOOP(k, vectors) {
    T p[V::W], g[V::W], s[V::W];
    V::load(param, k, p);
    V::load(grad, k, g);
    V::load(sum, k, s);
#pragma unroll
    for (int j = 0; j < V::W; ++j) rule(p[j], g[j], s[j]);
    V::store(param, k, p);
    V::store(sum, k, s);
  }
  DL_GRID_STRIDE_LOOP(t, n - done) {
    const optim::index_t i = done + t;
    T p = param[i], s = sum[i];
    rule(p, grad[i], s);
    param[i] = p;
    sum[i] = s;
  }
}

// GradScaler's unscale: found_inf[0] = 1 if any grad is inf or NaN (tested before scaling, as
// PyTorch does), then grad *= inv_scale. Every thread that saw one stores the same 1, so the
// result does not depend on the order; found_inf is never cleared here (the host zeroes it
// once for all of an optimizer's buckets).
// dlcore: instantiate unscale_grads<float>
// dlcore: instantiate unscale_grads<double>
template <typename T>
__global__ void unscale_grads(T* __restrict__ grad, long long n, T inv_scale,
                              int* __restrict__ found_inf, int flags) {
  typedef optim::Vec16<T> V;
  bool bad = false;
  const optim::index_t vectors = optim::vector_count<T>(n, flags), done = vectors * V::W;
  DL_GRID_STRIDE_LOOP(k, vectors) {
    T g[V::W];
    V::load(grad, k, g);
#pragma unroll
    for (int j = 0; j < V::W; ++j) {
      bad |= !isfinite(g[j]);
      g[j] = g[j] * inv_scale;
    }
    V::store(grad, k, g);
  }
  DL_GRID_STRIDE_LOOP(t, n - done) {
    const optim::index_t i = done + t;
    bad |= !isfinite(grad[i]);
    grad[i] = grad[i] * inv_scale;
  }
  if (bad) *found_inf = 1;
}

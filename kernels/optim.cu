// optim.cu -- fused optimizer updates: one launch updates every parameter of a bucket.
//
// Algorithm: dlcore.optim flattens each parameter group (per device and dtype) into one
// contiguous buffer, and keeps the gradients (each parameter's .grad is a view of the flat
// gradient buffer) and each state (momentum, exp_avg, ...) in buffers of the same layout, so
// an update is elementwise over n elements: every thread applies the whole formula of
// PyTorch's single-tensor implementation to its elements, in the same operation order as the
// NumPy twins (dlcore/ops/optim_cpu.py), which are the test oracle. Per-step scalars (bias
// corrections, step sizes, 1 - beta) are computed once on the host in double and passed in A,
// the arithmetic type, exactly as the NumPy path rounds them. Each rule's formula is written
// once, as a functor on registers of type A, and applied to every lane of a vector and to every
// element of the scalar tail, so the vector and scalar paths give the same bits.
// unscale_grads is GradScaler's pass: it flags an inf/NaN and multiplies by 1/scale in the same
// read of the gradients.
//
// Nothing the host decides per step (CUDA graphs freeze every argument): with OPT_FOUND_INF in
// flags a rule reads GradScaler's found_inf flag (device int32) and the whole launch does nothing
// when it is set, so skipping a step needs no host read; without it found_inf is a 1-element
// stand-in, never read. Capturable optimizers keep their step counts on the device: count_steps
// (one thread) adds 1 to them unless found_inf is set and computes the step's scalars in double
// with the host's formulas into a 2-element device array, which adam_step / adagrad_step then read
// (ADAM_DEVICE_STEP, ADAGRAD_DEVICE_STEP) instead of their host scalars. unscale_grads reads the
// scale from device memory (UNSCALE_DEVICE_SCALE) and amp_update_scale is GradScaler.update (one
// thread), both on GradScaler's device state.
//
// Element types T: float and double (A = T), and __half (A = float): parameters, gradients and
// every state array stay __half in memory (the parameter's dtype, as PyTorch keeps them), each
// load widens to float, the whole rule runs in float and each stored value is rounded to half
// once, so a __half kernel's results are its float kernel's on the same (widened) values,
// rounded once. Entry points, for every rule and unscale_grads: adam_step<float>,
// adam_step<double> and the extern "C" adam_step_half, whose scalars are float (eps = 1e-8 and
// loss scales below 2^-24 are not halves). NOTE: the __half kernels are not adam_step<__half>
// instantiations because the host checks a launch's arguments against the declared parameter
// types with the template's own arguments substituted (dlcore/kernels/sources.py): a
// <__half> instantiation of a template whose scalars are T would take __half scalars, and
// scalars declared as Acc<T>::type would go unchecked for every instantiation.
//
// Launch shape: 1-D grid-stride loop, 256 threads per block, grid capped (optim_cuda.py).
// With OPT_ALIGNED16 in flags (the host's promise that every array starts on a 16-byte
// boundary; dlcore's optimizer gives it for its own buffers) each thread moves 16 bytes per
// array access, float4, double2 or uint4 (8 halves), over the first n - n % W elements (W = 4
// floats, 2 doubles or 8 halves), then the last n % W elements one at a time; without it, all
// n one at a time.
//
// Memory traffic per element (plus, per thread, a read of found_inf with OPT_FOUND_INF and of the
// two device step scalars with *_DEVICE_STEP, both broadcast from cache): Adam reads param, grad, exp_avg, exp_avg_sq and writes param,
// exp_avg, exp_avg_sq (7 words; 9 with amsgrad); SGD with momentum 5 (3 without: no buffer,
// and the first step does not read it), RMSprop 5-9, Adagrad 5; unscale_grads 2; a word is
// the element's size (2 bytes for __half). Purely bandwidth bound; no shared memory, no
// barriers.
//
// Limits: T is float, double or __half; arrays are contiguous, the same length n, and never alias
// (__restrict__; an unused state argument gets a 1-element dummy, never read). Flags are the
// bit sets defined next to each optimizer in Python (MAXIMIZE is always bit 0, ALIGNED16 bit 3).

#include "common.cuh"
#include "half.cuh"

#define OPT_MAXIMIZE 1
#define OPT_ALIGNED16 8
#define OPT_FOUND_INF 16

namespace optim {

using dl::index_t;

// Loads widen to Acc<T> (float for __half), results round once to T: half.cuh.
using dl::Acc;
using dl::narrow;
using dl::widen;

// 16-byte vector access: load/store W consecutive elements of p starting at W * k, widened to
// (narrowed from) the arithmetic type.
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

// Eight halves as one uint4: element 2w is the low 16 bits of word w (little-endian, as the
// halves lie in memory).
template <>
struct Vec16<__half> {
  static constexpr int W = 8;
  __device__ __forceinline__ static float low(unsigned word) {
    return __half2float(__ushort_as_half((unsigned short)(word & 0xffffu)));
  }
  __device__ __forceinline__ static float high(unsigned word) {
    return __half2float(__ushort_as_half((unsigned short)(word >> 16)));
  }
  __device__ __forceinline__ static unsigned pack(float lo, float hi) {
    return (unsigned)__half_as_ushort(__float2half(lo)) |
           ((unsigned)__half_as_ushort(__float2half(hi)) << 16);
  }
  __device__ __forceinline__ static void load(const __half* __restrict__ p, index_t k,
                                              float* v) {
    const uint4 q = reinterpret_cast<const uint4*>(p)[k];
    v[0] = low(q.x);
    v[1] = high(q.x);
    v[2] = low(q.y);
    v[3] = high(q.y);
    v[4] = low(q.z);
    v[5] = high(q.z);
    v[6] = low(q.w);
    v[7] = high(q.w);
  }
  __device__ __forceinline__ static void store(__half* __restrict__ p, index_t k,
                                               const float* v) {
    reinterpret_cast<uint4*>(p)[k] =
        make_uint4(pack(v[0], v[1]), pack(v[2], v[3]), pack(v[4], v[5]), pack(v[6], v[7]));
  }
};

// Whether GradScaler found an inf/NaN this step (OPT_FOUND_INF): then the launch does nothing. The
// same for every thread, so the early return is uniform (and these kernels have no barriers).
__device__ __forceinline__ bool skipped(const int* __restrict__ found_inf, int flags) {
  return (flags & OPT_FOUND_INF) && *found_inf != 0;
}

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
template <typename A>
struct SgdRule {
  A lr, momentum, one_minus_dampening, weight_decay;
  int flags;
  __device__ __forceinline__ void operator()(A& p, A grad, A& b) const {
    A g = (flags & OPT_MAXIMIZE) ? -grad : grad;
    if (weight_decay != A(0)) g = g + p * weight_decay;
    if (momentum != A(0)) {
      b = (flags & SGD_FIRST_STEP) ? g : b * momentum + g * one_minus_dampening;
      g = (flags & SGD_NESTEROV) ? g + b * momentum : b;
    }
    p = p - g * lr;
  }
};

// The body of each rule's kernels, for element type T and arithmetic type A (T, or float for
// __half; deduced from the kernel's scalars).
template <typename T, typename A>
__device__ __forceinline__ void sgd(T* __restrict__ param, const T* __restrict__ grad,
                                    T* __restrict__ momentum_buffer, long long n, A lr,
                                    A momentum, A one_minus_dampening, A weight_decay,
                                    int flags, const int* __restrict__ found_inf) {
  if (skipped(found_inf, flags)) return;
  typedef Vec16<T> V;
  const SgdRule<A> rule{lr, momentum, one_minus_dampening, weight_decay, flags};
  const bool keeps = momentum != A(0), reads = keeps && !(flags & SGD_FIRST_STEP);
  const index_t vectors = vector_count<T>(n, flags), done = vectors * V::W;
  DL_GRID_STRIDE_LOOP(k, vectors) {
    A p[V::W], g[V::W], b[V::W] = {};
    V::load(param, k, p);
    V::load(grad, k, g);
    if (reads) V::load(momentum_buffer, k, b);
#pragma unroll
    for (int j = 0; j < V::W; ++j) rule(p[j], g[j], b[j]);
    V::store(param, k, p);
    if (keeps) V::store(momentum_buffer, k, b);
  }
  DL_GRID_STRIDE_LOOP(t, n - done) {
    const index_t i = done + t;
    A p = widen(param[i]), b = reads ? widen(momentum_buffer[i]) : A(0);
    rule(p, widen(grad[i]), b);
    param[i] = narrow<T>(p);
    if (keeps) momentum_buffer[i] = narrow<T>(b);
  }
}
}  // namespace optim

// dlcore: instantiate sgd_step<float>
// dlcore: instantiate sgd_step<double>
template <typename T>
__global__ void sgd_step(T* __restrict__ param, const T* __restrict__ grad,
                         T* __restrict__ momentum_buffer, long long n, T lr, T momentum,
                         T one_minus_dampening, T weight_decay, int flags,
                         const int* __restrict__ found_inf) {
  optim::sgd(param, grad, momentum_buffer, n, lr, momentum, one_minus_dampening, weight_decay,
             flags, found_inf);
}

extern "C" __global__ void sgd_step_half(__half* __restrict__ param,
                                         const __half* __restrict__ grad,
                                         __half* __restrict__ momentum_buffer, long long n,
                                         float lr, float momentum, float one_minus_dampening,
                                         float weight_decay, int flags,
                                         const int* __restrict__ found_inf) {
  optim::sgd(param, grad, momentum_buffer, n, lr, momentum, one_minus_dampening, weight_decay,
             flags, found_inf);
}

// Adam / AdamW: g = grad (+ wd * p unless decoupled, where p *= 1 - lr * wd first);
// m += (g - m) * (1 - beta1); v = v * beta2 + (g * (1 - beta2)) * g; amsgrad: vmax = max(vmax, v);
// p -= step_size * m / (sqrt(v or vmax) / sqrt(1 - beta2^t) + eps). ADAM_DEVICE_STEP: step_size
// and sqrt(1 - beta2^t) are step_scalars[0] and [1] (count_steps's), rounded to A as the host's are.
#define ADAM_AMSGRAD 2
#define ADAM_DECOUPLED 4
#define ADAM_DEVICE_STEP 32

namespace optim {
template <typename A>
struct AdamRule {
  A decay, weight_decay, one_minus_beta1, beta2, one_minus_beta2, step_size,
      bias_correction2_sqrt, eps;
  int flags;
  __device__ __forceinline__ void operator()(A& p, A grad, A& m, A& v, A& vmax) const {
    A g = (flags & OPT_MAXIMIZE) ? -grad : grad;
    if (weight_decay != A(0)) {
      if (flags & ADAM_DECOUPLED) p = p * decay;
      else g = g + p * weight_decay;
    }
    m = m + (g - m) * one_minus_beta1;
    v = v * beta2 + g * one_minus_beta2 * g;
    A second = v;
    if (flags & ADAM_AMSGRAD) {
      vmax = vmax > v ? vmax : v;
      second = vmax;
    }
    const A denom = sqrt(second) / bias_correction2_sqrt + eps;
    p = p - (m / denom) * step_size;
  }
};

template <typename T, typename A>
__device__ __forceinline__ void adam(T* __restrict__ param, const T* __restrict__ grad,
                                     T* __restrict__ exp_avg, T* __restrict__ exp_avg_sq,
                                     T* __restrict__ max_exp_avg_sq, long long n, A decay,
                                     A weight_decay, A one_minus_beta1, A beta2,
                                     A one_minus_beta2, A step_size, A bias_correction2_sqrt,
                                     A eps, int flags, const int* __restrict__ found_inf,
                                     const double* __restrict__ step_scalars) {
  if (skipped(found_inf, flags)) return;
  if (flags & ADAM_DEVICE_STEP) {
    step_size = A(step_scalars[0]);
    bias_correction2_sqrt = A(step_scalars[1]);
  }
  typedef Vec16<T> V;
  const AdamRule<A> rule{decay,     weight_decay,          one_minus_beta1, beta2,
                         one_minus_beta2, step_size, bias_correction2_sqrt, eps,
                         flags};
  const bool amsgrad = flags & ADAM_AMSGRAD;
  const index_t vectors = vector_count<T>(n, flags), done = vectors * V::W;
  DL_GRID_STRIDE_LOOP(k, vectors) {
    A p[V::W], g[V::W], m[V::W], v[V::W], vmax[V::W] = {};
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
    const index_t i = done + t;
    A p = widen(param[i]), m = widen(exp_avg[i]), v = widen(exp_avg_sq[i]);
    A vmax = amsgrad ? widen(max_exp_avg_sq[i]) : A(0);
    rule(p, widen(grad[i]), m, v, vmax);
    param[i] = narrow<T>(p);
    exp_avg[i] = narrow<T>(m);
    exp_avg_sq[i] = narrow<T>(v);
    if (amsgrad) max_exp_avg_sq[i] = narrow<T>(vmax);
  }
}
}  // namespace optim

// dlcore: instantiate adam_step<float>
// dlcore: instantiate adam_step<double>
template <typename T>
__global__ void adam_step(T* __restrict__ param, const T* __restrict__ grad,
                          T* __restrict__ exp_avg, T* __restrict__ exp_avg_sq,
                          T* __restrict__ max_exp_avg_sq, long long n, T decay, T weight_decay,
                          T one_minus_beta1, T beta2, T one_minus_beta2, T step_size,
                          T bias_correction2_sqrt, T eps, int flags,
                          const int* __restrict__ found_inf,
                          const double* __restrict__ step_scalars) {
  optim::adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, n, decay, weight_decay,
              one_minus_beta1, beta2, one_minus_beta2, step_size, bias_correction2_sqrt, eps,
              flags, found_inf, step_scalars);
}

extern "C" __global__ void adam_step_half(__half* __restrict__ param,
                                          const __half* __restrict__ grad,
                                          __half* __restrict__ exp_avg,
                                          __half* __restrict__ exp_avg_sq,
                                          __half* __restrict__ max_exp_avg_sq, long long n,
                                          float decay, float weight_decay,
                                          float one_minus_beta1, float beta2,
                                          float one_minus_beta2, float step_size,
                                          float bias_correction2_sqrt, float eps, int flags,
                                          const int* __restrict__ found_inf,
                                          const double* __restrict__ step_scalars) {
  optim::adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, n, decay, weight_decay,
              one_minus_beta1, beta2, one_minus_beta2, step_size, bias_correction2_sqrt, eps,
              flags, found_inf, step_scalars);
}

// RMSprop: g = grad (+ wd * p); v = v * alpha + (g * (1 - alpha)) * g; centered:
// ga += (g - ga) * (1 - alpha), avg = sqrt(v - ga * ga) + eps, else avg = sqrt(v) + eps;
// momentum: b = b * momentum + g / avg, p -= b * lr; else p -= (g / avg) * lr.
#define RMSPROP_CENTERED 2
#define RMSPROP_MOMENTUM 4

namespace optim {
template <typename A>
struct RmspropRule {
  A lr, alpha, one_minus_alpha, eps, weight_decay, momentum;
  int flags;
  __device__ __forceinline__ void operator()(A& p, A grad, A& v, A& ga, A& b) const {
    A g = (flags & OPT_MAXIMIZE) ? -grad : grad;
    if (weight_decay != A(0)) g = g + p * weight_decay;
    v = v * alpha + g * one_minus_alpha * g;
    A avg;
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

template <typename T, typename A>
__device__ __forceinline__ void rmsprop(T* __restrict__ param, const T* __restrict__ grad,
                                        T* __restrict__ square_avg, T* __restrict__ grad_avg,
                                        T* __restrict__ momentum_buffer, long long n, A lr,
                                        A alpha, A one_minus_alpha, A eps, A weight_decay,
                                        A momentum, int flags,
                                        const int* __restrict__ found_inf) {
  if (skipped(found_inf, flags)) return;
  typedef Vec16<T> V;
  const RmspropRule<A> rule{lr, alpha, one_minus_alpha, eps, weight_decay, momentum, flags};
  const bool centered = flags & RMSPROP_CENTERED, with_momentum = flags & RMSPROP_MOMENTUM;
  const index_t vectors = vector_count<T>(n, flags), done = vectors * V::W;
  DL_GRID_STRIDE_LOOP(k, vectors) {
    A p[V::W], g[V::W], v[V::W], ga[V::W] = {}, b[V::W] = {};
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
    const index_t i = done + t;
    A p = widen(param[i]), v = widen(square_avg[i]);
    A ga = centered ? widen(grad_avg[i]) : A(0);
    A b = with_momentum ? widen(momentum_buffer[i]) : A(0);
    rule(p, widen(grad[i]), v, ga, b);
    param[i] = narrow<T>(p);
    square_avg[i] = narrow<T>(v);
    if (centered) grad_avg[i] = narrow<T>(ga);
    if (with_momentum) momentum_buffer[i] = narrow<T>(b);
  }
}
}  // namespace optim

// dlcore: instantiate rmsprop_step<float>
// dlcore: instantiate rmsprop_step<double>
template <typename T>
__global__ void rmsprop_step(T* __restrict__ param, const T* __restrict__ grad,
                             T* __restrict__ square_avg, T* __restrict__ grad_avg,
                             T* __restrict__ momentum_buffer, long long n, T lr, T alpha,
                             T one_minus_alpha, T eps, T weight_decay, T momentum, int flags,
                             const int* __restrict__ found_inf) {
  optim::rmsprop(param, grad, square_avg, grad_avg, momentum_buffer, n, lr, alpha,
                 one_minus_alpha, eps, weight_decay, momentum, flags, found_inf);
}

extern "C" __global__ void rmsprop_step_half(__half* __restrict__ param,
                                             const __half* __restrict__ grad,
                                             __half* __restrict__ square_avg,
                                             __half* __restrict__ grad_avg,
                                             __half* __restrict__ momentum_buffer, long long n,
                                             float lr, float alpha, float one_minus_alpha,
                                             float eps, float weight_decay, float momentum,
                                             int flags, const int* __restrict__ found_inf) {
  optim::rmsprop(param, grad, square_avg, grad_avg, momentum_buffer, n, lr, alpha,
                 one_minus_alpha, eps, weight_decay, momentum, flags, found_inf);
}

// Adagrad: g = grad (+ wd * p); s += g * g; p -= (g / (sqrt(s) + eps)) * clr, where
// clr = lr / (1 + (t - 1) * lr_decay) comes from the host, or with ADAGRAD_DEVICE_STEP is
// step_scalars[0] (count_steps's), rounded to A as the host's is.
#define ADAGRAD_DEVICE_STEP 2

namespace optim {
template <typename A>
struct AdagradRule {
  A clr, weight_decay, eps;
  int flags;
  __device__ __forceinline__ void operator()(A& p, A grad, A& s) const {
    A g = (flags & OPT_MAXIMIZE) ? -grad : grad;
    if (weight_decay != A(0)) g = g + p * weight_decay;
    s = s + g * g;
    p = p - (g / (sqrt(s) + eps)) * clr;
  }
};

template <typename T, typename A>
__device__ __forceinline__ void adagrad(T* __restrict__ param, const T* __restrict__ grad,
                                        T* __restrict__ sum, long long n, A clr,
                                        A weight_decay, A eps, int flags,
                                        const int* __restrict__ found_inf,
                                        const double* __restrict__ step_scalars) {
  if (skipped(found_inf, flags)) return;
  if (flags & ADAGRAD_DEVICE_STEP) clr = A(step_scalars[0]);
  typedef Vec16<T> V;
  const AdagradRule<A> rule{clr, weight_decay, eps, flags};
  const index_t vectors = vector_count<T>(n, flags), done = vectors * V::W;
  DL_GRID_STRIDE_LOOP(k, vectors) {
    A p[V::W], g[V::W], s[V::W];
    V::load(param, k, p);
    V::load(grad, k, g);
    V::load(sum, k, s);
#pragma unroll
    for (int j = 0; j < V::W; ++j) rule(p[j], g[j], s[j]);
    V::store(param, k, p);
    V::store(sum, k, s);
  }
  DL_GRID_STRIDE_LOOP(t, n - done) {
    const index_t i = done + t;
    A p = widen(param[i]), s = widen(sum[i]);
    rule(p, widen(grad[i]), s);
    param[i] = narrow<T>(p);
    sum[i] = narrow<T>(s);
  }
}
}  // namespace optim

// dlcore: instantiate adagrad_step<float>
// dlcore: instantiate adagrad_step<double>
template <typename T>
__global__ void adagrad_step(T* __restrict__ param, const T* __restrict__ grad,
                             T* __restrict__ sum, long long n, T clr, T weight_decay, T eps,
                             int flags, const int* __restrict__ found_inf,
                             const double* __restrict__ step_scalars) {
  optim::adagrad(param, grad, sum, n, clr, weight_decay, eps, flags, found_inf, step_scalars);
}

extern "C" __global__ void adagrad_step_half(__half* __restrict__ param,
                                             const __half* __restrict__ grad,
                                             __half* __restrict__ sum, long long n, float clr,
                                             float weight_decay, float eps, int flags,
                                             const int* __restrict__ found_inf,
                                             const double* __restrict__ step_scalars) {
  optim::adagrad(param, grad, sum, n, clr, weight_decay, eps, flags, found_inf, step_scalars);
}

// GradScaler's unscale: found_inf[0] = 1 if any grad is inf or NaN (tested before scaling, as
// PyTorch does), then grad *= inv_scale. Every thread that saw one stores the same 1, so the
// result does not depend on the order; found_inf is never cleared here (GradScaler clears it
// once for all of an optimizer's buckets: amp_update_scale). UNSCALE_DEVICE_SCALE: inv_scale is
// 1 / scale[0] in float32, correctly rounded (__frcp_rn: the bits of IEEE 1.0f / scale, and of
// PyTorch's reciprocal through double, since double rounding is exact for a quotient of floats),
// widened to A; else the host's inv_scale. NOTE: the launch bounds cap registers for full
// occupancy where that fits: (256, 8), 32 registers, for float and __half (100% on sm_80/90);
// (256, 6), 40 registers (75%), for double, where CUDA 13's ptxas spilled 8 bytes on sm_80 under
// the 32-register cap (seen on an H200 image; NVRTC 12 fitted it). Without a cap the scale's
// branch costs 2-8 registers more.
#define UNSCALE_DEVICE_SCALE 2

namespace optim {
// blocks of 256 per SM asked of ptxas for unscale_grads<T> (see the NOTE above)
template <typename T>
struct UnscaleBlocks {
  static constexpr int value = 8;
};
template <>
struct UnscaleBlocks<double> {
  static constexpr int value = 6;
};

template <typename T, typename A>
__device__ __forceinline__ void unscale(T* __restrict__ grad, long long n, A inv_scale,
                                        const float* __restrict__ scale,
                                        int* __restrict__ found_inf, int flags) {
  if (flags & UNSCALE_DEVICE_SCALE) inv_scale = A(__frcp_rn(*scale));
  typedef Vec16<T> V;
  bool bad = false;
  const index_t vectors = vector_count<T>(n, flags), done = vectors * V::W;
  DL_GRID_STRIDE_LOOP(k, vectors) {
    A g[V::W];
    V::load(grad, k, g);
#pragma unroll
    for (int j = 0; j < V::W; ++j) {
      bad |= !isfinite(g[j]);
      g[j] = g[j] * inv_scale;
    }
    V::store(grad, k, g);
  }
  DL_GRID_STRIDE_LOOP(t, n - done) {
    const index_t i = done + t;
    const A g = widen(grad[i]);
    bad |= !isfinite(g);
    grad[i] = narrow<T>(g * inv_scale);
  }
  if (bad) *found_inf = 1;
}
}  // namespace optim

// dlcore: instantiate unscale_grads<float>
// dlcore: instantiate unscale_grads<double>
template <typename T>
__global__ void __launch_bounds__(256, optim::UnscaleBlocks<T>::value)
    unscale_grads(T* __restrict__ grad, long long n, T inv_scale,
                              const float* __restrict__ scale, int* __restrict__ found_inf,
                              int flags) {
  optim::unscale(grad, n, inv_scale, scale, found_inf, flags);
}

extern "C" __global__ void __launch_bounds__(256, 8)
    unscale_grads_half(__half* __restrict__ grad, long long n,
                                              float inv_scale, const float* __restrict__ scale,
                                              int* __restrict__ found_inf, int flags) {
  optim::unscale(grad, n, inv_scale, scale, found_inf, flags);
}

// Device step counts (capturable optimizers): unless found_inf is set (OPT_FOUND_INF), add 1 to
// the step counts of the `count` parameters the next update launch covers (they are equal: the
// optimizer groups parameters by their history), then compute that step's scalars in double with
// the host's formulas, t the new count: STEPS_ADAM: step_scalars = {lr / (1 - a^t),
// sqrt(1 - b^t)} (a, b = beta1, beta2); STEPS_ADAGRAD: {lr / (1 + (t - 1) * a)} (a = lr_decay);
// neither: counting only (RMSprop). Thread 0 of one block; float counts are exact to 2^24.
// NOTE: pow is glibc's on the emulator, as the host's (bit-identical scalars); CUDA's double pow
// is within 2 ulp, so a scalar may differ from the host's by 2^-51 relative before its rounding
// to A (float: the same float unless it lies that close to a rounding boundary).
#define STEPS_ADAM 2
#define STEPS_ADAGRAD 4

namespace optim {
// a * b rounded on its own, never contracted into a fused multiply-add with a following add (the
// host rounds it): __dmul_rn on the GPU; the emulator's g++ honours a volatile temporary.
__device__ __forceinline__ double mul_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dmul_rn(a, b);
#else
  volatile double product = a * b;
  return product;
#endif
}
}  // namespace optim

extern "C" __global__ void count_steps(float* __restrict__ steps, int count, double lr, double a,
                                       double b, double* __restrict__ step_scalars, int flags,
                                       const int* __restrict__ found_inf) {
  if (threadIdx.x != 0 || blockIdx.x != 0 || optim::skipped(found_inf, flags)) return;
  for (int i = 0; i < count; ++i) steps[i] += 1.0f;
  const double t = steps[0];
  if (flags & STEPS_ADAM) {
    step_scalars[0] = lr / (1.0 - pow(a, t));
    step_scalars[1] = sqrt(1.0 - pow(b, t));
  } else if (flags & STEPS_ADAGRAD) {
    step_scalars[0] = lr / (1.0 + optim::mul_rn(t - 1.0, a));
  }
}

// GradScaler.update: PyTorch's _amp_update_scale_ (aten/src/ATen/native/cuda/AmpKernels.cu), one
// thread. found: any of found_inf[0, count) set (the flags of the iteration's optimizers). Then
// scale *= backoff_factor, growth_tracker = 0; else growth_tracker + 1, and when that reaches
// growth_interval, scale *= growth_factor only if the product is finite, growth_tracker = 0. The
// factors are double and each product rounds to float once, as there. The flags are cleared for
// the next iteration. Thread 0 of one block.
extern "C" __global__ void amp_update_scale(float* __restrict__ scale,
                                            int* __restrict__ growth_tracker,
                                            int* __restrict__ found_inf, int count,
                                            double growth_factor, double backoff_factor,
                                            int growth_interval) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  bool found = false;
  for (int i = 0; i < count; ++i) {
    found |= found_inf[i] != 0;
    found_inf[i] = 0;
  }
  if (found) {
    *scale = (float)(*scale * backoff_factor);
    *growth_tracker = 0;
    return;
  }
  const int successful = *growth_tracker + 1;
  if (successful == growth_interval) {
    const float grown = (float)(*scale * growth_factor);
    if (isfinite(grown)) *scale = grown;
    *growth_tracker = 0;
  } else {
    *growth_tracker = successful;
  }
}

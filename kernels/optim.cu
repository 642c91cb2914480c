// optim.cu -- fused optimizer updates: one launch updates every parameter of a group.
//
// Algorithm: dlcore.optim flattens each parameter group (per device and dtype) into one
// contiguous buffer, and keeps the gradients and each state (momentum, exp_avg, ...) in
// buffers of the same layout, so an update is elementwise over n elements: every thread
// applies the whole formula of PyTorch's single-tensor implementation to its elements,
// in the same operation order as the NumPy path (dlcore/optim/*.py, apply_single), which is
// the test oracle. Per-step scalars (bias corrections, step sizes, 1 - beta) are computed
// once on the host in double and passed in T, exactly as the NumPy path rounds them.
//
// Launch shape: 1-D grid-stride loop, 256 threads per block, grid capped (see optimizer.py).
// Memory traffic per element: Adam reads param, grad, exp_avg, exp_avg_sq and writes param,
// exp_avg, exp_avg_sq (7 words; 9 with amsgrad); SGD with momentum 5, RMSprop 5-9,
// Adagrad 5. Purely bandwidth bound; no shared memory, no barriers.
//
// Limits: T is float or double; arrays are contiguous, the same length n, and never alias
// (an unused state argument gets a 1-element dummy). Flags are the bit sets defined next to
// each optimizer in Python (MAXIMIZE is always bit 0).
#include "common.cuh"

#define OPT_MAXIMIZE 1

// SGD: g = grad (+ wd * p); b = momentum * b + (1 - dampening) * g, or b = g on the first
// step; g = g + momentum * b (Nesterov) or b; p -= lr * g.
#define SGD_NESTEROV 2
#define SGD_FIRST_STEP 4
// dlcore: instantiate sgd_step<float>
// dlcore: instantiate sgd_step<double>
template <typename T>
__global__ void sgd_step(T* param, const T* grad, T* momentum_buffer, long long n, T lr,
                         T momentum, T one_minus_dampening, T weight_decay, int flags) {
  DL_GRID_STRIDE_LOOP(i, n) {
    T g = (flags & OPT_MAXIMIZE) ? -grad[i] : grad[i];
    if (weight_decay != T(0)) g = g + param[i] * weight_decay;
    if (momentum != T(0)) {
      T b = (flags & SGD_FIRST_STEP) ? g : momentum_buffer[i] * momentum + g * one_minus_dampening;
      momentum_buffer[i] = b;
      g = (flags & SGD_NESTEROV) ? g + b * momentum : b;
    }
    param[i] = param[i] - g * lr;
  }
}

// Adam / AdamW: g = grad (+ wd * p unless decoupled, where p *= 1 - lr * wd first);
// m += (g - m) * (1 - beta1); v = v * beta2 + (g * (1 - beta2)) * g; amsgrad: vmax = max(vmax, v);
// p -= step_size * m / (sqrt(v or vmax) / sqrt(1 - beta2^t) + eps).
#define ADAM_AMSGRAD 2
#define ADAM_DECOUPLED 4
// dlcore: instantiate adam_step<float>
// dlcore: instantiate adam_step<double>
template <typename T>
__global__ void adam_step(T* param, const T* grad, T* exp_avg, T* exp_avg_sq, T* max_exp_avg_sq,
                          long long n, T decay, T weight_decay, T one_minus_beta1, T beta2,
                          T one_minus_beta2, T step_size, T bias_correction2_sqrt, T eps,
                          int flags) {
  DL_GRID_STRIDE_LOOP(i, n) {
    T p = param[i];
    T g = (flags & OPT_MAXIMIZE) ? -grad[i] : grad[i];
    if (weight_decay != T(0)) {
      if (flags & ADAM_DECOUPLED) p = p * decay;
      else g = g + p * weight_decay;
    }
    T m = exp_avg[i];
    m = m + (g - m) * one_minus_beta1;
    exp_avg[i] = m;
    T v = exp_avg_sq[i] * beta2 + g * one_minus_beta2 * g;
    exp_avg_sq[i] = v;
    if (flags & ADAM_AMSGRAD) {
      T vmax = max_exp_avg_sq[i];
      v = vmax > v ? vmax : v;
      max_exp_avg_sq[i] = v;
    }
    T denom = sqrt(v) / bias_correction2_sqrt + eps;
    param[i] = p - (m / denom) * step_size;
  }
}

// RMSprop: g = grad (+ wd * p); v = v * alpha + (g * (1 - alpha)) * g; centered:
// ga += (g - ga) * (1 - alpha), avg = sqrt(v - ga * ga) + eps, else avg = sqrt(v) + eps;
// momentum: b = b * momentum + g / avg, p -= b * lr; else p -= (g / avg) * lr.
#define RMSPROP_CENTERED 2
#define RMSPROP_MOMENTUM 4
// dlcore: instantiate rmsprop_step<float>
// dlcore: instantiate rmsprop_step<double>
template <typename T>
__global__ void rmsprop_step(T* param, const T* grad, T* square_avg, T* grad_avg,
                             T* momentum_buffer, long long n, T lr, T alpha, T one_minus_alpha,
                             T eps, T weight_decay, T momentum, int flags) {
  DL_GRID_STRIDE_LOOP(i, n) {
    T g = (flags & OPT_MAXIMIZE) ? -grad[i] : grad[i];
    if (weight_decay != T(0)) g = g + param[i] * weight_decay;
    T v = square_avg[i] * alpha + g * one_minus_alpha * g;
    square_avg[i] = v;
    T avg;
    if (flags & RMSPROP_CENTERED) {
      T ga = grad_avg[i];
      ga = ga + (g - ga) * one_minus_alpha;
      grad_avg[i] = ga;
      avg = sqrt(v - ga * ga) + eps;
    } else {
      avg = sqrt(v) + eps;
    }
    if (flags & RMSPROP_MOMENTUM) {
      T b = momentum_buffer[i] * momentum + g / avg;
      momentum_buffer[i] = b;
      param[i] = param[i] - b * lr;
    } else {
      param[i] = param[i] - (g / avg) * lr;
    }
  }
}

// Adagrad: g = grad (+ wd * p); s += g * g; p -= (g / (sqrt(s) + eps)) * clr, where
// clr = lr / (1 + (t - 1) * lr_decay) comes from the host.
// dlcore: instantiate adagrad_step<float>
// dlcore: instantiate adagrad_step<double>
template <typename T>
__global__ void adagrad_step(T* param, const T* grad, T* sum, long long n, T clr,
                             T weight_decay, T eps, int flags) {
  DL_GRID_STRIDE_LOOP(i, n) {
    T g = (flags & OPT_MAXIMIZE) ? -grad[i] : grad[i];
    if (weight_decay != T(0)) g = g + param[i] * weight_decay;
    T s = sum[i] + g * g;
    sum[i] = s;
    param[i] = param[i] - (g / (sqrt(s) + eps)) * clr;
  }
}

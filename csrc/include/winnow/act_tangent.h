#pragma once
// act_tangent: an elementwise activation's value and forward tangent in one pass, and the
// backward of both in one pass, for the fast H-theta path (python/winnow/hvp_fast.py):
//   forward:  y = f(z),  dy = f'(z) dz
//   backward: gz = gy f'(z) + gdy f''(z) dz,  gdz = gdy f'(z)
// (gz's second term is the activation's curvature, what double backward would recompute with
// a dozen elementwise ops). Shared by csrc/cpu/act_tangent.cpp and csrc/cuda/act_tangent.cu.
#include "winnow/macros.h"
#include "winnow/numeric.h"

namespace winnow::act {

// The `kind` argument of the ops; python/winnow/ops.py holds the same table.
enum Kind : int { kReLU = 0, kGELU = 1, kSiLU = 2, kTanh = 3, kSigmoid = 4, kNumKinds = 5 };

template <typename T>
struct Derivs {
  T f, d1, d2;  // f(z), f'(z), f''(z)
};

// Written with choose() rather than branches, so that the CPU kernel (csrc/cpu/isa/) runs the
// same code on whole vectors of lanes.
template <int K, typename T>
WINNOW_HD Derivs<T> derivs(T z) {
  const T one(1), zero(0);
  if constexpr (K == kReLU) {
    // written as torch's threshold: NaN passes through, with slope 1 (as autograd has it)
    return {choose(z <= zero, zero, z), choose(z <= zero, zero, one), zero};
  } else if constexpr (K == kGELU) {  // f = z Phi(z), f' = Phi + z phi, f'' = phi (2 - z^2)
    const auto [cdf, pdf] = standard_normal(z);
    const auto flat = pdf == zero;  // |z| huge or inf: z * pdf -> 0, not inf * 0 = NaN
    return {z * cdf, choose(flat, cdf, cdf + z * pdf), choose(flat, zero, pdf * (T(2) - z * z))};
  } else if constexpr (K == kSiLU) {  // f = z s, f' = s + z s', f'' = s' (2 + z (1 - 2s))
    const T s = one / (one + exponential(-z));
    const T ds = s * (one - s);
    return {z * s, s + z * ds, ds * (T(2) + z * (one - T(2) * s))};
  } else if constexpr (K == kTanh) {  // f' = 1 - t^2, f'' = -2 t (1 - t^2)
    const T t = hyperbolic_tangent(z);
    const T d = one - t * t;
    return {t, d, T(-2) * t * d};
  } else {  // sigmoid: f' = s (1 - s), f'' = f' (1 - 2s)
    const T s = one / (one + exponential(-z));
    const T d = s * (one - s);
    return {s, d, d * (one - T(2) * s)};
  }
}

// ReLU's derivative is a switch, not a factor: like torch's threshold_backward it selects the
// incoming value or 0, so a NaN or inf tangent on the off side does not leak through 0 * x.
template <int K, typename T>
WINNOW_HD T times_d1(const Derivs<T>& d, T z, T x) {
  if constexpr (K == kReLU) {
    return choose(z <= T(0), T(0), x);
  } else {
    return d.d1 * x;
  }
}

template <int K, typename T>
WINNOW_HD void forward(T z, T dz, T& y, T& dy) {
  const Derivs<T> d = derivs<K>(z);
  y = d.f;
  dy = times_d1<K>(d, z, dz);
}

template <int K, typename T>
WINNOW_HD void backward(T z, T dz, T gy, T gdy, T& gz, T& gdz) {
  const Derivs<T> d = derivs<K>(z);
  gz = times_d1<K>(d, z, gy);
  if constexpr (K != kReLU) gz = gz + gdy * d.d2 * dz;  // the curvature term (ReLU has none)
  gdz = times_d1<K>(d, z, gdy);
}

// The two ops as per-element functors over N inputs and 2 outputs, so that each backend has
// one launcher for both: Forward reads (z, dz), Backward reads (z, dz, gy, gdy).
template <int K>
struct Forward {
  static constexpr int kInputs = 2;
  template <typename T>
  WINNOW_HD static void apply(const T* in, T* out) { forward<K>(in[0], in[1], out[0], out[1]); }
};

template <int K>
struct Backward {
  static constexpr int kInputs = 4;
  template <typename T>
  WINNOW_HD static void apply(const T* in, T* out) { backward<K>(in[0], in[1], in[2], in[3], out[0], out[1]); }
};

// Raw pointers of one call, passed by value to a kernel.
template <typename scalar_t, int N>
struct Pointers {
  const scalar_t* in[N];
  scalar_t* out[2];
};

// One element: load N inputs in op-math precision, apply Op, store the two outputs.
template <template <int> class Op, int K, typename scalar_t, typename opmath_t, int N>
WINNOW_HD void apply_at(const Pointers<scalar_t, N>& p, int64_t i) {
  opmath_t in[N], out[2];
  for (int j = 0; j < N; ++j) in[j] = static_cast<opmath_t>(p.in[j][i]);
  Op<K>::apply(in, out);
  p.out[0][i] = static_cast<scalar_t>(out[0]);
  p.out[1][i] = static_cast<scalar_t>(out[1]);
}

}  // namespace winnow::act

// ---- host side: validation shared by both backends, and the kind dispatch ----
#include <ATen/core/Tensor.h>

#include "winnow/checks.h"

// Runs __VA_ARGS__ with `constexpr int K` bound to the runtime `kind`.
#define WINNOW_DISPATCH_ACT(kind, ...)                                              \
  [&] {                                                                             \
    switch (kind) {                                                                 \
      case ::winnow::act::kReLU: { constexpr int K = ::winnow::act::kReLU; return __VA_ARGS__(); }       \
      case ::winnow::act::kGELU: { constexpr int K = ::winnow::act::kGELU; return __VA_ARGS__(); }       \
      case ::winnow::act::kSiLU: { constexpr int K = ::winnow::act::kSiLU; return __VA_ARGS__(); }       \
      case ::winnow::act::kTanh: { constexpr int K = ::winnow::act::kTanh; return __VA_ARGS__(); }       \
      default: { constexpr int K = ::winnow::act::kSigmoid; return __VA_ARGS__(); }                      \
    }                                                                               \
  }()

namespace winnow::act {

inline void check(const char* op, int64_t kind, checks::NamedTensors ts) {
  TORCH_CHECK_VALUE(kind >= 0 && kind < kNumKinds, op, ": kind must be in [0, ", int(kNumKinds), "), got ", kind);
  checks::like_first(op, ts);
}

}  // namespace winnow::act

#pragma once
// winnow/numeric.h's helpers for at::vec::Vectorized<T>, so that a kernel's shared math template
// (e.g. winnow/act_tangent.h) runs unchanged on a whole vector of lanes in a csrc/cpu/isa/
// source. Include this before the math header: its templates find these overloads by ordinary
// lookup at their definition (ADL would look in at::vec, not here).
#include <ATen/cpu/vec/vec.h>

#include "winnow/numeric.h"

namespace winnow {

template <typename T>
using Lanes = at::vec::Vectorized<T>;

template <typename T>
inline Lanes<T> exponential(const Lanes<T>& x) { return x.exp(); }

template <typename T>
inline Lanes<T> hyperbolic_tangent(const Lanes<T>& x) { return x.tanh(); }

// Per lane: mask ? a : b (the mask is a comparison's all-ones / all-zeros lanes).
template <typename T>
inline Lanes<T> choose(const Lanes<T>& mask, const Lanes<T>& a, const Lanes<T>& b) {
  return Lanes<T>::blendv(b, a, mask);
}

// Phi(z) and phi(z) on float lanes from one exponential. e = exp(-z^2 / 2) is phi's factor and,
// as exp(-x^2) at x = z / sqrt 2, the one ATen's float erf computes inside (Abramowitz-Stegun
// 7.1.26: erf(|x|) = 1 - t r(t) e with t = 1 / (1 + p |x|), absolute error 1.5e-7, the polynomial
// torch's own GELU runs): computed once, GELU's tangent costs one exp, not two. (SLEEF's 1-ulp
// erf had measured 1.3-1.6x slower for the GELU tangent, below torch's own jvp.) Phi is taken
// as q = t r(t) e / 2 for z < 0 and 1 - q above, without erf's 1 + (q - 1) cancellation.
inline Normal<Lanes<float>> standard_normal(const Lanes<float>& z) {
  using V = Lanes<float>;
  const V one(1.f);
  const V e = (V(-0.5f) * z * z).exp();
  const V t = one / at::vec::fmadd(V(0.3275911f), (z * V(0.70710678118654752f)).abs(), one);
  V r = at::vec::fmadd(V(1.061405429f), t, V(-1.453152027f));
  r = at::vec::fmadd(r, t, V(1.421413741f));
  r = at::vec::fmadd(r, t, V(-0.284496736f));
  r = at::vec::fmadd(r, t, V(0.254829592f));
  const V q = V(0.5f) * r * t * e;
  return {choose(z < V(0.f), q, one - q), e * V(0.39894228040143268f)};
}

// double lanes: ATen's erf (SLEEF's, 1 ulp) and exp, as the scalar form.
template <typename T>
inline Normal<Lanes<T>> standard_normal(const Lanes<T>& z) {
  return {T(0.5) * (T(1) + (z * T(0.70710678118654752)).erf()), (T(-0.5) * z * z).exp() * T(0.39894228040143268)};
}

}  // namespace winnow

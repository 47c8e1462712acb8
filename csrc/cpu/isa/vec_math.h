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

// Vectorized<float>::erf is ATen's own (on AVX2/AVX-512 a 5-term polynomial, absolute error
// ~1e-7, the one torch's GELU runs): SLEEF's 1-ulp erf measured 1.3-1.6x slower for the GELU
// tangent, which put it below torch's own jvp, for no gain against torch's own values.
template <typename T>
inline Lanes<T> error_function(const Lanes<T>& x) { return x.erf(); }

// Per lane: mask ? a : b (the mask is a comparison's all-ones / all-zeros lanes).
template <typename T>
inline Lanes<T> choose(const Lanes<T>& mask, const Lanes<T>& a, const Lanes<T>& b) {
  return Lanes<T>::blendv(b, a, mask);
}

}  // namespace winnow

#pragma once
// Scalar helpers usable on host and device. Written as overloads (not std::) so that nvcc
// device code and GCC's auto-vectoriser both see plain float/double math.
#include <cfloat>
#include <cmath>

#include "winnow/macros.h"

namespace winnow {

WINNOW_HD float abs_value(float x) { return fabsf(x); }
WINNOW_HD double abs_value(double x) { return fabs(x); }

// A comparison instead of std::isfinite: NaN compares false, +-inf exceeds the max.
// It vectorises on the CPU and is one instruction on the GPU.
WINNOW_HD bool is_finite(float x) { return fabsf(x) <= FLT_MAX; }
WINNOW_HD bool is_finite(double x) { return fabs(x) <= DBL_MAX; }

WINNOW_HD float square_root(float x) { return sqrtf(x); }
WINNOW_HD double square_root(double x) { return sqrt(x); }

WINNOW_HD float power(float x, float e) { return powf(x, e); }
WINNOW_HD double power(double x, double e) { return pow(x, e); }

WINNOW_HD float exponential(float x) { return expf(x); }
WINNOW_HD double exponential(double x) { return exp(x); }

// The standard normal distribution at z: its cdf Phi(z) and density phi(z), GELU's two factors.
// (On vectors of lanes, csrc/cpu/isa/vec_math.h computes both from one exponential.)
template <typename T>
struct Normal {
  T cdf, pdf;
};

WINNOW_HD Normal<float> standard_normal(float z) {
  return {0.5f * (1.f + erff(z * 0.70710678118654752f)), expf(-0.5f * z * z) * 0.39894228040143268f};
}
WINNOW_HD Normal<double> standard_normal(double z) {
  return {0.5 * (1. + erf(z * 0.70710678118654752)), exp(-0.5 * z * z) * 0.39894228040143268};
}

WINNOW_HD float hyperbolic_tangent(float x) { return tanhf(x); }
WINNOW_HD double hyperbolic_tangent(double x) { return tanh(x); }

// c ? a : b, written as a call so that the same math runs on vectors of lanes
// (csrc/cpu/isa/vec_math.h overloads it and the functions above for at::vec::Vectorized).
template <typename T>
WINNOW_HD T choose(bool c, T a, T b) { return c ? a : b; }

}  // namespace winnow

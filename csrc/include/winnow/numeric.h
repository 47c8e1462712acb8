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

WINNOW_HD float error_function(float x) { return erff(x); }
WINNOW_HD double error_function(double x) { return erf(x); }

WINNOW_HD float exponential(float x) { return expf(x); }
WINNOW_HD double exponential(double x) { return exp(x); }

WINNOW_HD float hyperbolic_tangent(float x) { return tanhf(x); }
WINNOW_HD double hyperbolic_tangent(double x) { return tanh(x); }

// c ? a : b, written as a call so that the same math runs on vectors of lanes
// (csrc/cpu/isa/vec_math.h overloads it and the functions above for at::vec::Vectorized).
template <typename T>
WINNOW_HD T choose(bool c, T a, T b) { return c ? a : b; }

}  // namespace winnow

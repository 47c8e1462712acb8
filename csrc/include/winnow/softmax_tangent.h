#pragma once
// softmax_tangent: the forward tangent of a softmax along the last dim, from its output p and
// the tangent of its input s', without the n x n Jacobian (for attention in the fast H-theta
// path, python/winnow/hvp_fast.py):
//   forward:  c = <p, s'>,  dp_i = p_i (s'_i - c)
//   backward: given g = dL/d(dp), with c as above and a = <g, p>,
//             gp_i = g_i (s'_i - c) - s'_i a,   gs'_i = p_i (g_i - a)
// Each row needs its dot products first (reduced by the backend), then one elementwise pass
// with the functions below. Shared by csrc/cpu/softmax_tangent.cpp and csrc/cuda/softmax_tangent.cu.
#include "winnow/macros.h"

namespace winnow::softmax {

// The row's dot products are sums of these terms.
template <typename T>
WINNOW_HD T dot_term(T x, T y) { return x * y; }

template <typename T>
WINNOW_HD T forward_at(T p, T ds, T c) { return p * (ds - c); }

template <typename T>
WINNOW_HD void backward_at(T p, T ds, T g, T c, T a, T& gp, T& gds) {
  gp = g * (ds - c) - ds * a;
  gds = p * (g - a);
}

}  // namespace winnow::softmax

// ---- host side: validation shared by both backends ----
#include <ATen/core/Tensor.h>

#include "winnow/checks.h"

namespace winnow::softmax {

inline void check(const char* op, checks::NamedTensors ts) {
  checks::like_first(op, ts);
  TORCH_CHECK_VALUE(ts.begin()->second->dim() >= 1, op,
                    ": p must have at least one dimension (the softmax dim is the last)");
}

}  // namespace winnow::softmax

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

// Every tensor: defined, dense, floating, at least 1-d, the shape, dtype and device of p.
inline void check(const char* op, std::initializer_list<std::pair<const char*, const at::Tensor*>> ts) {
  const at::Tensor& p = *ts.begin()->second;
  for (const auto& [name, t] : ts) {
    TORCH_CHECK_VALUE(t->defined(), op, ": ", name, " is undefined (None)");
    TORCH_CHECK_TYPE(t->layout() == at::kStrided, op, ": ", name, " must be a dense tensor, got layout ",
                     t->layout());
    TORCH_CHECK_TYPE(checks::is_float_dtype(t->scalar_type()), op, ": ", name,
                     " must be float16, bfloat16, float32 or float64, got ", t->scalar_type());
    TORCH_CHECK_TYPE(t->scalar_type() == p.scalar_type(), op, ": ", name, " is ", t->scalar_type(), " but p is ",
                     p.scalar_type());
    TORCH_CHECK_VALUE(t->device() == p.device(), op, ": ", name, " is on ", t->device(), " but p is on ",
                      p.device());
    TORCH_CHECK_VALUE(t->sizes() == p.sizes(), op, ": ", name, " has shape ", t->sizes(), " but p has shape ",
                      p.sizes());
  }
  TORCH_CHECK_VALUE(p.dim() >= 1, op, ": p must have at least one dimension (the softmax dim is the last)");
}

}  // namespace winnow::softmax

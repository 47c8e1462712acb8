// CPU launcher of softmax_tangent / softmax_tangent_backward (math in winnow/softmax_tangent.h):
// rows in parallel; per row, the dot products in op-math precision, then one elementwise pass.
#include "winnow/softmax_tangent.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

namespace winnow::softmax {
namespace {

// Rows of the last dim per parallel task: about 16k elements.
int64_t row_grain(int64_t n) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(n, 1)); }

// sum_i term(i) over a row, in kLanes independent partial sums combined in a fixed order: a
// single running sum is a dependency chain the compiler may not reorder (no -ffast-math), so it
// neither vectorises nor pipelines; kLanes sums do both, and the order stays deterministic.
constexpr int64_t kLanes = 8;

template <typename T, typename Term>
T lane_sum(int64_t n, Term term) {
  T acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) acc[l] += term(i + l);
  for (; i < n; ++i) acc[i % kLanes] += term(i);
  T total = 0;
  for (int64_t l = 0; l < kLanes; ++l) total += acc[l];
  return total;
}

at::Tensor softmax_tangent_cpu(const at::Tensor& p_in, const at::Tensor& ds_in) {
  check("softmax_tangent", {{"p", &p_in}, {"ds", &ds_in}});
  const at::Tensor p = p_in.contiguous(), ds = ds_in.contiguous();
  at::Tensor dp = at::empty_like(p);
  const int64_t n = p.size(-1);
  if (p.numel() == 0) return dp;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "softmax_tangent", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* pp = p.const_data_ptr<scalar_t>();
    const scalar_t* dd = ds.const_data_ptr<scalar_t>();
    scalar_t* out = dp.data_ptr<scalar_t>();
    at::parallel_for(0, p.numel() / n, row_grain(n), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t *pr = pp + r * n, *dr = dd + r * n;
        const opmath_t c = lane_sum<opmath_t>(n, [&](int64_t i) { return dot_term<opmath_t>(pr[i], dr[i]); });
        for (int64_t i = 0; i < n; ++i) out[r * n + i] = static_cast<scalar_t>(forward_at<opmath_t>(pr[i], dr[i], c));
      }
    });
  });
  return dp;
}

std::tuple<at::Tensor, at::Tensor> softmax_tangent_backward_cpu(const at::Tensor& p_in, const at::Tensor& ds_in,
                                                                const at::Tensor& g_in) {
  check("softmax_tangent_backward", {{"p", &p_in}, {"ds", &ds_in}, {"g", &g_in}});
  const at::Tensor p = p_in.contiguous(), ds = ds_in.contiguous(), g = g_in.contiguous();
  at::Tensor gp = at::empty_like(p), gds = at::empty_like(p);
  const int64_t n = p.size(-1);
  if (p.numel() == 0) return {gp, gds};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "softmax_tangent_backward", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* pp = p.const_data_ptr<scalar_t>();
    const scalar_t* dd = ds.const_data_ptr<scalar_t>();
    const scalar_t* gg = g.const_data_ptr<scalar_t>();
    scalar_t* out_p = gp.data_ptr<scalar_t>();
    scalar_t* out_ds = gds.data_ptr<scalar_t>();
    at::parallel_for(0, p.numel() / n, row_grain(n), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t o = r * n;
        // Two passes over the row (it is in cache for the second): one pass with both sums in
        // 2 x kLanes accumulators measured 1.5x slower (0.57 vs 0.38 ms at 1M elements).
        const opmath_t c = lane_sum<opmath_t>(n, [&](int64_t i) { return dot_term<opmath_t>(pp[o + i], dd[o + i]); });
        const opmath_t a = lane_sum<opmath_t>(n, [&](int64_t i) { return dot_term<opmath_t>(gg[o + i], pp[o + i]); });
        for (int64_t i = 0; i < n; ++i) {
          opmath_t x, y;
          backward_at<opmath_t>(pp[o + i], dd[o + i], gg[o + i], c, a, x, y);
          out_p[o + i] = static_cast<scalar_t>(x);
          out_ds[o + i] = static_cast<scalar_t>(y);
        }
      }
    });
  });
  return {gp, gds};
}

}  // namespace

TORCH_LIBRARY_IMPL(winnow, CPU, m) {
  m.impl("softmax_tangent", &softmax_tangent_cpu);
  m.impl("softmax_tangent_backward", &softmax_tangent_backward_cpu);
}

}  // namespace winnow::softmax

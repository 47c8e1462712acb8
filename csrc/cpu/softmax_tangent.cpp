// CPU launcher of softmax_tangent / softmax_tangent_backward (math in winnow/softmax_tangent.h,
// loops in isa/tangent_kernels.cpp): rows in parallel; per row, the dot products in op-math
// precision, then one elementwise pass.
#include "winnow/softmax_tangent.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "isa/tangent_kernels.h"

namespace winnow::cpu {
Stub<void (*)(const SoftmaxRows&)> softmax_tangent_rows;
}  // namespace winnow::cpu

namespace winnow::softmax {
namespace {

// Rows of the last dim per parallel task: about 16k elements.
int64_t row_grain(int64_t n) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(n, 1)); }

void run_rows(const cpu::SoftmaxRows& rows, int64_t num_rows) {
  const auto kernel = cpu::softmax_tangent_rows.get();
  at::parallel_for(0, num_rows, row_grain(rows.n), [&](int64_t begin, int64_t end) {
    cpu::SoftmaxRows mine = rows;
    mine.begin = begin;
    mine.end = end;
    kernel(mine);
  });
}

at::Tensor softmax_tangent_cpu(const at::Tensor& p_in, const at::Tensor& ds_in) {
  check("softmax_tangent", {{"p", &p_in}, {"ds", &ds_in}});
  const at::Tensor p = p_in.contiguous(), ds = ds_in.contiguous();
  at::Tensor dp = at::empty_like(p);
  const int64_t n = p.size(-1);
  if (p.numel() == 0) return dp;
  run_rows({p.scalar_type(), false, p.const_data_ptr(), ds.const_data_ptr(), nullptr, {dp.data_ptr(), nullptr}, n, 0, 0},
           p.numel() / n);
  return dp;
}

std::tuple<at::Tensor, at::Tensor> softmax_tangent_backward_cpu(const at::Tensor& p_in, const at::Tensor& ds_in,
                                                                const at::Tensor& g_in) {
  check("softmax_tangent_backward", {{"p", &p_in}, {"ds", &ds_in}, {"g", &g_in}});
  const at::Tensor p = p_in.contiguous(), ds = ds_in.contiguous(), g = g_in.contiguous();
  at::Tensor gp = at::empty_like(p), gds = at::empty_like(p);
  const int64_t n = p.size(-1);
  if (p.numel() == 0) return {gp, gds};
  run_rows({p.scalar_type(), true, p.const_data_ptr(), ds.const_data_ptr(), g.const_data_ptr(),
            {gp.data_ptr(), gds.data_ptr()}, n, 0, 0},
           p.numel() / n);
  return {gp, gds};
}

}  // namespace

TORCH_LIBRARY_IMPL(winnow, CPU, m) {
  m.impl("softmax_tangent", &softmax_tangent_cpu);
  m.impl("softmax_tangent_backward", &softmax_tangent_backward_cpu);
}

}  // namespace winnow::softmax

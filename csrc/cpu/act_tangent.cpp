// CPU launcher of act_tangent / act_tangent_backward (math in winnow/act_tangent.h, vectorised
// loop in isa/tangent_kernels.cpp): one parallel pass over contiguous copies, in the dtype's
// op-math type (float for half/bfloat16).
#include "winnow/act_tangent.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <array>
#include <tuple>

#include "isa/tangent_kernels.h"

namespace winnow::cpu {
Stub<void (*)(const ActRange&)> act_tangent_range;
}  // namespace winnow::cpu

namespace winnow::act {
namespace {

constexpr int64_t kGrain = 16384;

// Both ops: N same-shaped inputs, two outputs shaped like them.
template <size_t N>
std::tuple<at::Tensor, at::Tensor> run(const std::array<at::Tensor, N>& inputs, int64_t kind) {
  std::array<at::Tensor, N> in;
  for (size_t j = 0; j < N; ++j) in[j] = inputs[j].contiguous();
  at::Tensor out0 = at::empty_like(in[0]), out1 = at::empty_like(in[0]);
  cpu::ActRange range{in[0].scalar_type(), static_cast<int>(kind), N == 4, {}, {out0.data_ptr(), out1.data_ptr()}, 0, 0};
  for (size_t j = 0; j < N; ++j) range.in[j] = in[j].const_data_ptr();
  const auto kernel = cpu::act_tangent_range.get();
  at::parallel_for(0, in[0].numel(), kGrain, [&](int64_t begin, int64_t end) {
    cpu::ActRange mine = range;
    mine.begin = begin;
    mine.end = end;
    kernel(mine);
  });
  return {out0, out1};
}

std::tuple<at::Tensor, at::Tensor> act_tangent_cpu(const at::Tensor& z, const at::Tensor& dz, int64_t kind) {
  check("act_tangent", kind, {{"z", &z}, {"dz", &dz}});
  return run<2>({z, dz}, kind);
}

std::tuple<at::Tensor, at::Tensor> act_tangent_backward_cpu(const at::Tensor& z, const at::Tensor& dz,
                                                            const at::Tensor& gy, const at::Tensor& gdy,
                                                            int64_t kind) {
  check("act_tangent_backward", kind, {{"z", &z}, {"dz", &dz}, {"gy", &gy}, {"gdy", &gdy}});
  return run<4>({z, dz, gy, gdy}, kind);
}

}  // namespace

TORCH_LIBRARY_IMPL(winnow, CPU, m) {
  m.impl("act_tangent", &act_tangent_cpu);
  m.impl("act_tangent_backward", &act_tangent_backward_cpu);
}

}  // namespace winnow::act

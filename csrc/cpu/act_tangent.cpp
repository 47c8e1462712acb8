// CPU launcher of act_tangent / act_tangent_backward (math in winnow/act_tangent.h): one
// parallel pass over contiguous copies, in the dtype's op-math type (float for half/bfloat16).
#include "winnow/act_tangent.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <array>
#include <tuple>

namespace winnow::act {
namespace {

constexpr int64_t kGrain = 16384;

// Both ops: Op<kind> per element over N same-shaped inputs, two outputs shaped like them.
template <template <int> class Op, size_t N>
std::tuple<at::Tensor, at::Tensor> run(const std::array<at::Tensor, N>& inputs, int64_t kind) {
  std::array<at::Tensor, N> in;
  for (size_t j = 0; j < N; ++j) in[j] = inputs[j].contiguous();
  at::Tensor out0 = at::empty_like(in[0]), out1 = at::empty_like(in[0]);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in[0].scalar_type(), "act_tangent", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    Pointers<scalar_t, static_cast<int>(N)> p;
    for (size_t j = 0; j < N; ++j) p.in[j] = in[j].template const_data_ptr<scalar_t>();
    p.out[0] = out0.data_ptr<scalar_t>();
    p.out[1] = out1.data_ptr<scalar_t>();
    WINNOW_DISPATCH_ACT(static_cast<int>(kind), [&] {
      at::parallel_for(0, in[0].numel(), kGrain, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) apply_at<Op, K, scalar_t, opmath_t, static_cast<int>(N)>(p, i);
      });
    });
  });
  return {out0, out1};
}

std::tuple<at::Tensor, at::Tensor> act_tangent_cpu(const at::Tensor& z, const at::Tensor& dz, int64_t kind) {
  check("act_tangent", kind, {{"z", &z}, {"dz", &dz}});
  return run<Forward, 2>({z, dz}, kind);
}

std::tuple<at::Tensor, at::Tensor> act_tangent_backward_cpu(const at::Tensor& z, const at::Tensor& dz,
                                                            const at::Tensor& gy, const at::Tensor& gdy,
                                                            int64_t kind) {
  check("act_tangent_backward", kind, {{"z", &z}, {"dz", &dz}, {"gy", &gy}, {"gdy", &gdy}});
  return run<Backward, 4>({z, dz, gy, gdy}, kind);
}

}  // namespace

TORCH_LIBRARY_IMPL(winnow, CPU, m) {
  m.impl("act_tangent", &act_tangent_cpu);
  m.impl("act_tangent_backward", &act_tangent_backward_cpu);
}

}  // namespace winnow::act

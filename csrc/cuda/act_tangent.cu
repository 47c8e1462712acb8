// CUDA launcher of act_tangent / act_tangent_backward (math in winnow/act_tangent.h): one
// grid-stride elementwise kernel, on contiguous copies, in the dtype's op-math type.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <tuple>

#include "multi_tensor.cuh"
#include "winnow/act_tangent.h"

namespace winnow::act {
namespace {

constexpr int kThreads = 256;

inline int blocks_for(int64_t n) { return cuda::grid_for(n, kThreads); }

template <template <int> class Op, int K, typename scalar_t, int N>
__global__ void elementwise_kernel(Pointers<scalar_t, N> p, int64_t n) {
  using opmath_t = at::opmath_type<scalar_t>;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    apply_at<Op, K, scalar_t, opmath_t, N>(p, i);
  }
}

// Both ops: Op<kind> per element over N same-shaped inputs, two outputs shaped like them.
template <template <int> class Op, size_t N>
std::tuple<at::Tensor, at::Tensor> run(const std::array<at::Tensor, N>& inputs, int64_t kind) {
  const c10::cuda::CUDAGuard guard(inputs[0].device());
  std::array<at::Tensor, N> in;
  for (size_t j = 0; j < N; ++j) in[j] = inputs[j].contiguous();
  at::Tensor out0 = at::empty_like(in[0]), out1 = at::empty_like(in[0]);
  const int64_t n = in[0].numel();
  if (n == 0) return {out0, out1};
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in[0].scalar_type(), "act_tangent", [&] {
    Pointers<scalar_t, static_cast<int>(N)> p;
    for (size_t j = 0; j < N; ++j) p.in[j] = in[j].template const_data_ptr<scalar_t>();
    p.out[0] = out0.data_ptr<scalar_t>();
    p.out[1] = out1.data_ptr<scalar_t>();
    WINNOW_DISPATCH_ACT(static_cast<int>(kind), [&] {
      elementwise_kernel<Op, K, scalar_t, static_cast<int>(N)><<<blocks_for(n), kThreads, 0, stream>>>(p, n);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {out0, out1};
}

std::tuple<at::Tensor, at::Tensor> act_tangent_cuda(const at::Tensor& z, const at::Tensor& dz, int64_t kind) {
  check("act_tangent", kind, {{"z", &z}, {"dz", &dz}});
  return run<Forward, 2>({z, dz}, kind);
}

std::tuple<at::Tensor, at::Tensor> act_tangent_backward_cuda(const at::Tensor& z, const at::Tensor& dz,
                                                             const at::Tensor& gy, const at::Tensor& gdy,
                                                             int64_t kind) {
  check("act_tangent_backward", kind, {{"z", &z}, {"dz", &dz}, {"gy", &gy}, {"gdy", &gdy}});
  return run<Backward, 4>({z, dz, gy, gdy}, kind);
}

}  // namespace

TORCH_LIBRARY_IMPL(winnow, CUDA, m) {
  m.impl("act_tangent", &act_tangent_cuda);
  m.impl("act_tangent_backward", &act_tangent_backward_cuda);
}

}  // namespace winnow::act

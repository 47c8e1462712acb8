// CUDA launcher of oba_score_accumulate (math in winnow/oba_score.h): a grid-stride kernel per
// tensor on the current stream (the parameter count per model is small enough that launches,
// not bandwidth, are the cost only for tiny tensors).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "winnow/oba_score.h"

namespace winnow::oba {
namespace {

template <typename scalar_t>
__global__ void accumulate_kernel(double* __restrict__ s, const scalar_t* __restrict__ a,
                                  const scalar_t* __restrict__ b, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    accumulate(s[i], a[i], b[i]);
  }
}

void oba_score_accumulate_cuda(at::TensorList thetas, at::TensorList h_thetas, at::TensorList scores) {
  check_accumulate(thetas, h_thetas, scores);
  const c10::cuda::CUDAGuard guard(thetas[0].device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  constexpr int kThreads = 256;
  for (size_t t = 0; t < thetas.size(); ++t) {
    const int64_t n = thetas[t].numel();
    if (n == 0) continue;
    const at::Tensor theta = thetas[t].contiguous(), h = h_thetas[t].contiguous();
    const int blocks = static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 4096));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, theta.scalar_type(), "oba_score_accumulate", [&] {
      accumulate_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
          scores[t].data_ptr<double>(), theta.const_data_ptr<scalar_t>(), h.const_data_ptr<scalar_t>(), n);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(winnow, CUDA, m) { m.impl("oba_score_accumulate", &oba_score_accumulate_cuda); }

}  // namespace winnow::oba

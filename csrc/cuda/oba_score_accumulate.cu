// CUDA launcher of oba_score_accumulate (math in winnow/oba_score_accumulate.h): one multi-tensor
// launch per parameter dtype, 16-byte loads where aligned.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "multi_tensor.cuh"
#include "winnow/oba_score_accumulate.h"

namespace winnow::oba {
namespace {

using cuda::load;
using cuda::ptr;
using cuda::store;

// Slots: 0 theta, 1 h_theta (scalar_t), 2 scores (double).
template <typename scalar_t>
__global__ void __launch_bounds__(cuda::kBlockThreads) accumulate_kernel(const cuda::TensorListMeta<3> meta) {
  const int t = cuda::tensor_of_block(meta, blockIdx.x);
  const auto* theta = static_cast<const scalar_t*>(meta.ptr[0][t]);
  const auto* h = static_cast<const scalar_t*>(meta.ptr[1][t]);
  auto* s = static_cast<double*>(meta.ptr[2][t]);
  cuda::for_chunk(meta, t, [&](auto width, int64_t i) {
    constexpr int W = decltype(width)::value;
    const auto tv = load<W>(theta + i);
    const auto hv = load<W>(h + i);
    auto sv = load<W>(s + i);
#pragma unroll
    for (int k = 0; k < W; ++k) accumulate(sv.v[k], tv.v[k], hv.v[k]);
    store<W>(s + i, sv);
  });
}

void oba_score_accumulate_cuda(at::TensorList thetas, at::TensorList h_thetas, at::TensorList scores) {
  check_accumulate(thetas, h_thetas, scores);
  const c10::cuda::CUDAGuard guard(thetas[0].device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  std::vector<at::Tensor> theta_c, h_c;  // contiguous inputs (the scores are contiguous already)
  for (size_t t = 0; t < thetas.size(); ++t) {
    theta_c.push_back(thetas[t].contiguous());
    h_c.push_back(h_thetas[t].contiguous());
  }
  cuda::per_dtype(theta_c, [&](at::ScalarType dtype, const std::vector<size_t>& idx) {
    std::vector<std::array<void*, 3>> ptrs;
    std::vector<int64_t> numels;
    for (size_t t : idx) {
      ptrs.push_back({ptr(theta_c[t]), ptr(h_c[t]), scores[t].data_ptr()});
      numels.push_back(theta_c[t].numel());
    }
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "oba_score_accumulate", [&] {
      const int s = sizeof(scalar_t);
      cuda::launch_over<cuda::TensorListMeta<3>>(ptrs, numels, {s, s, 8},
                                                 [&](const cuda::TensorListMeta<3>& meta, int64_t blocks) {
        accumulate_kernel<scalar_t><<<blocks, cuda::kBlockThreads, 0, stream>>>(meta);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(winnow, CUDA, m) { m.impl("oba_score_accumulate", &oba_score_accumulate_cuda); }

}  // namespace winnow::oba

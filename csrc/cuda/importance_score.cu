// CUDA launcher of importance_score (math in winnow/importance_score.h): element scores in one
// multi-tensor launch, means through the shared segmented sums.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "multi_tensor.cuh"
#include "segmented_sums.cuh"
#include "winnow/importance_score.h"

namespace winnow::importance {
namespace {

using cuda::for_chunk;
using cuda::load;
using cuda::ptr;
using cuda::store;
using cuda::TensorListMeta;

template <typename acc_t>
__global__ void __launch_bounds__(cuda::kBlockThreads) score_kernel(const TensorListMeta<3> meta) {
  const int t = cuda::tensor_of_block(meta, blockIdx.x);
  const auto* a = static_cast<const acc_t*>(meta.ptr[0][t]);
  const auto* u = static_cast<const acc_t*>(meta.ptr[1][t]);
  auto* out = static_cast<acc_t*>(meta.ptr[2][t]);
  for_chunk(meta, t, [&](auto width, int64_t i) {
    constexpr int W = decltype(width)::value;
    const auto av = load<W>(a + i);
    const auto uv = load<W>(u + i);
    cuda::Vec<acc_t, W> o;
#pragma unroll
    for (int k = 0; k < W; ++k) o.v[k] = adalora_score(av.v[k], uv.v[k]);
    store<W>(out + i, o);
  });
}

// Element scores through score_kernel; means through the shared segmented sums (mean_dims 1: along
// each row, 0: down each column, tiled so that the reads are coalesced).
std::vector<at::Tensor> importance_score_cuda(at::TensorList exp_avg_ipt, at::TensorList exp_avg_unc,
                                              at::IntArrayRef mean_dims) {
  check_score(exp_avg_ipt, exp_avg_unc, mean_dims);
  const c10::cuda::CUDAGuard guard(exp_avg_ipt[0].device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  std::vector<at::Tensor> out = score_outputs(exp_avg_ipt, mean_dims);
  cuda::per_dtype(exp_avg_ipt, [&](at::ScalarType dtype, const std::vector<size_t>& idx) {
    AT_DISPATCH_FLOATING_TYPES(dtype, "importance_score", [&] {
      std::vector<std::array<void*, 3>> ptrs;
      std::vector<int64_t> numels;
      std::vector<cuda::SumJob> row_means, column_means;
      for (size_t i : idx) {
        const at::Tensor& a = exp_avg_ipt[i];
        if (mean_dims[i] == -1) {
          ptrs.push_back({ptr(a), ptr(exp_avg_unc[i]), out[i].data_ptr()});
          numels.push_back(a.numel());
          continue;
        }
        const cuda::SumJob job{a.const_data_ptr(), exp_avg_unc[i].const_data_ptr(), out[i].data_ptr(), a.size(0),
                               a.size(1), 1, true};
        (mean_dims[i] == 1 ? row_means : column_means).push_back(job);
      }
      const int a = sizeof(scalar_t);
      cuda::launch_over<TensorListMeta<3>>(ptrs, numels, {a, a, a}, [&](const TensorListMeta<3>& meta, int64_t blocks) {
        score_kernel<scalar_t><<<blocks, cuda::kBlockThreads, 0, stream>>>(meta);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
      cuda::launch_sums<scalar_t, scalar_t>(cuda::Along::Rows, row_means, stream);
      cuda::launch_sums<scalar_t, scalar_t>(cuda::Along::Columns, column_means, stream);
    });
  }, {at::kFloat, at::kDouble});
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(winnow, CUDA, m) { m.impl("importance_score", &importance_score_cuda); }

}  // namespace winnow::importance

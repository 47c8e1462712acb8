// CUDA launchers of oba_score_accumulate (a grid-stride kernel per tensor on the current stream)
// and oba_channel_sums (a warp per row for the row sums, a thread per input-channel slot for
// the column sums; fixed summation orders, so results are deterministic). Math and index map in
// winnow/oba_score.h.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

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

constexpr int kWarp = 32;

__global__ void row_sums_kernel(const double* __restrict__ s, double* __restrict__ rows, int64_t a_n, int64_t len) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / kWarp);
  for (int64_t a = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / kWarp; a < a_n; a += warps) {
    double total = 0;
    for (int64_t i = lane; i < len; i += kWarp) total += s[a * len + i];
    for (int offset = kWarp / 2; offset > 0; offset /= 2) total += __shfl_xor_sync(0xffffffffu, total, offset);
    if (lane == 0) rows[a] = total;
  }
}

__global__ void col_sums_kernel(const double* __restrict__ s, double* __restrict__ cols, int64_t slots,
                                int64_t b_n, int64_t k_n, int64_t per_group) {
  for (int64_t slot = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; slot < slots;
       slot += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    cols[slot] = column_sum(s, slot, b_n, k_n, per_group);
  }
}

std::tuple<at::Tensor, at::Tensor> oba_channel_sums_cuda(const at::Tensor& scores_in, int64_t groups) {
  check_channel_sums(scores_in, groups);
  const c10::cuda::CUDAGuard guard(scores_in.device());
  const at::Tensor scores = scores_in.contiguous();
  const ChannelShape shape = channel_shape(scores);
  const int64_t a_n = shape.a, b_n = shape.b, k_n = shape.k;
  at::Tensor rows = at::zeros({a_n}, scores.options()), cols = at::zeros({groups * b_n}, scores.options());
  if (scores.numel() == 0) return {rows, cols};
  auto stream = c10::cuda::getCurrentCUDAStream();
  constexpr int kThreads = 256;
  const int row_blocks = static_cast<int>(std::min<int64_t>((a_n * kWarp + kThreads - 1) / kThreads, 4096));
  row_sums_kernel<<<row_blocks, kThreads, 0, stream>>>(scores.const_data_ptr<double>(), rows.data_ptr<double>(), a_n,
                                                       b_n * k_n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t slots = groups * b_n;
  const int col_blocks = static_cast<int>(std::min<int64_t>((slots + kThreads - 1) / kThreads, 4096));
  col_sums_kernel<<<col_blocks, kThreads, 0, stream>>>(scores.const_data_ptr<double>(), cols.data_ptr<double>(),
                                                       slots, b_n, k_n, a_n / groups);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {rows, cols};
}

}  // namespace

TORCH_LIBRARY_IMPL(winnow, CUDA, m) {
  m.impl("oba_score_accumulate", &oba_score_accumulate_cuda);
  m.impl("oba_channel_sums", &oba_channel_sums_cuda);
}

}  // namespace winnow::oba

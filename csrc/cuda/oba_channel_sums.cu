// CUDA launcher of oba_channel_sums (index map in winnow/oba_channel_sums.h), on the shared
// segmented sums: a warp per output channel along its row; the input channels as column sums of
// tiles of 32 columns (coalesced), then each slot's K kernel positions added along a row. Fixed
// orders, so results are deterministic.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

#include "segmented_sums.cuh"
#include "winnow/oba_channel_sums.h"

namespace winnow::oba {
namespace {

std::tuple<at::Tensor, at::Tensor> oba_channel_sums_cuda(const at::Tensor& scores_in, int64_t groups) {
  check_channel_sums(scores_in, groups);
  const c10::cuda::CUDAGuard guard(scores_in.device());
  const at::Tensor scores = scores_in.contiguous();
  const ChannelShape shape = channel_shape(scores);
  const int64_t a_n = shape.a, b_n = shape.b, k_n = shape.k;
  at::Tensor rows = at::zeros({a_n}, scores.options()), cols = at::zeros({groups * b_n}, scores.options());
  if (scores.numel() == 0) return {rows, cols};
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const double* s = scores.const_data_ptr<double>();
  // rows[a]: row a of the (A, B * K) matrix
  cuda::launch_sums<double, double>(cuda::Along::Rows, {{s, nullptr, rows.data_ptr(), a_n, b_n * k_n, 1, false}},
                                    stream);
  // cols[g * B + b]: group g's column sums of the (A, B * K) matrix, then each slot's K of them
  if (k_n == 1) {
    cuda::launch_sums<double, double>(cuda::Along::Columns, {{s, nullptr, cols.data_ptr(), a_n, b_n, groups, false}},
                                      stream);
  } else {
    at::Tensor per_position = at::empty({groups * b_n * k_n}, scores.options());
    cuda::launch_sums<double, double>(
        cuda::Along::Columns, {{s, nullptr, per_position.data_ptr(), a_n, b_n * k_n, groups, false}}, stream);
    cuda::launch_sums<double, double>(
        cuda::Along::Rows, {{per_position.const_data_ptr(), nullptr, cols.data_ptr(), groups * b_n, k_n, 1, false}},
        stream);
  }
  return {rows, cols};
}

}  // namespace

TORCH_LIBRARY_IMPL(winnow, CUDA, m) { m.impl("oba_channel_sums", &oba_channel_sums_cuda); }

}  // namespace winnow::oba

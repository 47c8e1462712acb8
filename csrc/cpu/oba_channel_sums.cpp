// CPU launcher of oba_channel_sums (index map in winnow/oba_channel_sums.h): the rows in parallel,
// then the input-channel slots in parallel, each sum in a fixed order.
#include "winnow/oba_channel_sums.h"

#include <ATen/Parallel.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <tuple>

namespace winnow::oba {
namespace {

// cols[slot] for slot = g * B + b: column b of group g's rows, summed in a fixed order.
double column_sum(const double* s, int64_t slot, int64_t b_n, int64_t k_n, int64_t rows_per_group) {
  const int64_t g = slot / b_n, b = slot % b_n;
  double total = 0;
  for (int64_t a = g * rows_per_group; a < (g + 1) * rows_per_group; ++a) {
    for (int64_t k = 0; k < k_n; ++k) total += s[(a * b_n + b) * k_n + k];
  }
  return total;
}

std::tuple<at::Tensor, at::Tensor> oba_channel_sums_cpu(const at::Tensor& scores_in, int64_t groups) {
  check_channel_sums(scores_in, groups);
  const at::Tensor scores = scores_in.contiguous();
  const ChannelShape shape = channel_shape(scores);
  const int64_t a_n = shape.a, b_n = shape.b, k_n = shape.k;
  const int64_t per_group = a_n / groups;
  at::Tensor rows = at::zeros({a_n}, scores.options()), cols = at::zeros({groups * b_n}, scores.options());
  if (scores.numel() == 0) return {rows, cols};
  const double* s = scores.const_data_ptr<double>();
  double* r = rows.data_ptr<double>();
  double* c = cols.data_ptr<double>();
  at::parallel_for(0, a_n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t a = begin; a < end; ++a) {
      double total = 0;
      for (int64_t i = 0; i < b_n * k_n; ++i) total += s[a * b_n * k_n + i];
      r[a] = total;
    }
  });
  at::parallel_for(0, groups * b_n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t slot = begin; slot < end; ++slot) c[slot] = column_sum(s, slot, b_n, k_n, per_group);
  });
  return {rows, cols};
}

}  // namespace

TORCH_LIBRARY_IMPL(winnow, CPU, m) { m.impl("oba_channel_sums", &oba_channel_sums_cpu); }

}  // namespace winnow::oba

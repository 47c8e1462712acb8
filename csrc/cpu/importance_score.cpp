// CPU launcher of importance_score (math in winnow/importance_score.h, loops in
// isa/importance_kernels.cpp): element scores, or their mean along one dim accumulated in
// double, with the elements (or the means' rows and columns) of all tensors shared out among
// the threads together.
#include "winnow/importance_score.h"

#include <torch/library.h>

#include "isa/importance_kernels.h"
#include "multi_tensor.h"

namespace winnow::cpu {
Stub<void (*)(const ScoreRange&)> importance_score_range;
}  // namespace winnow::cpu

namespace winnow::importance {
namespace {

std::vector<at::Tensor> importance_score_cpu(at::TensorList exp_avg_ipt, at::TensorList exp_avg_unc,
                                             at::IntArrayRef mean_dims) {
  check_score(exp_avg_ipt, exp_avg_unc, mean_dims);
  std::vector<at::Tensor> out = score_outputs(exp_avg_ipt, mean_dims);
  const size_t n = out.size();
  // Work items: elements, or the means (each the sum of `inner` elements, so fewer per chunk;
  // column means at least 16 columns wide so that each row read is a cache line).
  std::vector<int64_t> items(n), per_chunk(n);
  for (size_t i = 0; i < n; ++i) {
    items[i] = out[i].numel();
    const int64_t dim = mean_dims[i];
    const int64_t inner = dim == -1 ? 1 : exp_avg_ipt[i].size(1 - dim);
    per_chunk[i] = std::max<int64_t>(dim == 0 ? 16 : 1, cpu::kChunkElements / std::max<int64_t>(inner, 1));
  }
  const auto kernel = cpu::importance_score_range.get();
  cpu::for_each_chunk(
      items,
      [&](const cpu::Chunk& ch) -> int64_t {
        const size_t i = ch.tensor;
        const at::Tensor& a = exp_avg_ipt[i];
        kernel({a.scalar_type(), a.const_data_ptr(), exp_avg_unc[i].const_data_ptr(), out[i].data_ptr(), mean_dims[i],
                a.dim() == 2 ? a.size(0) : 0, a.dim() == 2 ? a.size(1) : 0, ch.begin, ch.end});
        return 0;
      },
      per_chunk);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(winnow, CPU, m) { m.impl("importance_score", &importance_score_cpu); }

}  // namespace winnow::importance

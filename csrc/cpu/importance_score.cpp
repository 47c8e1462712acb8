// CPU launcher of importance_score (math in winnow/importance_score.h): element scores, or their
// mean along one dim accumulated in double, parallel over the tensors.
#include "winnow/importance_score.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

namespace winnow::importance {
namespace {

std::vector<at::Tensor> importance_score_cpu(at::TensorList exp_avg_ipt, at::TensorList exp_avg_unc,
                                             at::IntArrayRef mean_dims) {
  check_score(exp_avg_ipt, exp_avg_unc, mean_dims);
  std::vector<at::Tensor> out = score_outputs(exp_avg_ipt, mean_dims);
  at::parallel_for(0, static_cast<int64_t>(out.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      AT_DISPATCH_FLOATING_TYPES(exp_avg_ipt[i].scalar_type(), "importance_score", [&] {
        const scalar_t* a = exp_avg_ipt[i].const_data_ptr<scalar_t>();
        const scalar_t* u = exp_avg_unc[i].const_data_ptr<scalar_t>();
        scalar_t* o = out[i].data_ptr<scalar_t>();
        const int64_t dim = mean_dims[i];
        if (dim == -1) {
          const int64_t n = exp_avg_ipt[i].numel();
          for (int64_t k = 0; k < n; ++k) o[k] = adalora_score(a[k], u[k]);
          return;
        }
        const int64_t rows = exp_avg_ipt[i].size(0), cols = exp_avg_ipt[i].size(1);
        const int64_t outer = dim == 1 ? rows : cols, inner = dim == 1 ? cols : rows;
        const int64_t outer_stride = dim == 1 ? cols : 1, inner_stride = dim == 1 ? 1 : cols;
        for (int64_t r = 0; r < outer; ++r) {
          double sum = 0.0;
          for (int64_t k = 0; k < inner; ++k) {
            const int64_t idx = r * outer_stride + k * inner_stride;
            sum += static_cast<double>(adalora_score(a[idx], u[idx]));
          }
          o[r] = static_cast<scalar_t>(inner > 0 ? sum / static_cast<double>(inner) : NAN);
        }
      });
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(winnow, CPU, m) { m.impl("importance_score", &importance_score_cpu); }

}  // namespace winnow::importance

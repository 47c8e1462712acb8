// CPU launcher of oba_score_accumulate (math in winnow/oba_score_accumulate.h): one parallel pass
// per tensor.
#include "winnow/oba_score_accumulate.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

namespace winnow::oba {
namespace {

void oba_score_accumulate_cpu(at::TensorList thetas, at::TensorList h_thetas, at::TensorList scores) {
  check_accumulate(thetas, h_thetas, scores);
  for (size_t t = 0; t < thetas.size(); ++t) {
    const at::Tensor theta = thetas[t].contiguous(), h = h_thetas[t].contiguous();
    double* s = scores[t].data_ptr<double>();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, theta.scalar_type(), "oba_score_accumulate", [&] {
      const scalar_t* a = theta.const_data_ptr<scalar_t>();
      const scalar_t* b = h.const_data_ptr<scalar_t>();
      at::parallel_for(0, theta.numel(), 32768, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) accumulate(s[i], a[i], b[i]);
      });
    });
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(winnow, CPU, m) { m.impl("oba_score_accumulate", &oba_score_accumulate_cpu); }

}  // namespace winnow::oba

// CPU launcher of oba_score_accumulate (math in winnow/oba_score_accumulate.h, loop in
// isa/importance_kernels.cpp): the elements of all tensors shared out among the threads together.
#include "winnow/oba_score_accumulate.h"

#include <torch/library.h>

#include "isa/importance_kernels.h"
#include "multi_tensor.h"

namespace winnow::cpu {
Stub<void (*)(const ObaRange&)> oba_accumulate_range;
}  // namespace winnow::cpu

namespace winnow::oba {
namespace {

void oba_score_accumulate_cpu(at::TensorList thetas, at::TensorList h_thetas, at::TensorList scores) {
  check_accumulate(thetas, h_thetas, scores);
  std::vector<at::Tensor> theta, h;  // contiguous (a non-contiguous input is copied once)
  for (size_t t = 0; t < thetas.size(); ++t) {
    theta.push_back(thetas[t].contiguous());
    h.push_back(h_thetas[t].contiguous());
  }
  const auto kernel = cpu::oba_accumulate_range.get();
  cpu::for_each_chunk(cpu::numels_of(theta), [&](const cpu::Chunk& ch) -> int64_t {
    const size_t t = ch.tensor;
    kernel({theta[t].scalar_type(), theta[t].const_data_ptr(), h[t].const_data_ptr(), scores[t].data_ptr<double>(),
            ch.begin, ch.end});
    return 0;
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(winnow, CPU, m) { m.impl("oba_score_accumulate", &oba_score_accumulate_cpu); }

}  // namespace winnow::oba

// CPU launcher of importance_update (math in winnow/importance_update.h, loops in
// isa/importance_kernels.cpp): the elements of all tensors shared out among the threads.
#include "winnow/importance_update.h"

#include <torch/library.h>

#include "isa/importance_kernels.h"
#include "multi_tensor.h"

namespace winnow::cpu {
Stub<int64_t (*)(const AdaloraRange&)> adalora_update_range;
Stub<int64_t (*)(const Id3Range&)> id3_update_range;
}  // namespace winnow::cpu

namespace winnow::importance {
namespace {
using cpu::offset;

void importance_update_adalora_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avg_ipt,
                                   at::TensorList exp_avg_unc, double beta1, double beta2,
                                   const at::Tensor& nonfinite) {
  const UpdateInputs in = check_adalora(params, grads, exp_avg_ipt, exp_avg_unc, beta1, beta2, nonfinite);
  const auto kernel = cpu::adalora_update_range.get();
  const auto skipped = cpu::for_each_chunk(cpu::numels_of(in.params), [&](const cpu::Chunk& ch) {
    const size_t t = ch.tensor;
    const int64_t b = ch.begin;
    const size_t in_size = in.params[t].element_size(), stat_size = exp_avg_ipt[t].element_size();
    return kernel({in.params[t].scalar_type(), offset(in.params[t].const_data_ptr(), b, in_size),
                   offset(in.grads[t].const_data_ptr(), b, in_size), offset(exp_avg_ipt[t].data_ptr(), b, stat_size),
                   offset(exp_avg_unc[t].data_ptr(), b, stat_size), ch.end - b, beta1, beta2});
  });
  cpu::add_counts(nonfinite, skipped);
}

void importance_update_id3_cpu(at::TensorList params, at::TensorList grads, at::TensorList scores,
                               at::TensorList unmasked, double eps, double exponent, double beta,
                               const at::Tensor& nonfinite) {
  const UpdateInputs in = check_id3(params, grads, scores, unmasked, eps, exponent, beta, nonfinite);
  const auto kernel = cpu::id3_update_range.get();
  const auto skipped = cpu::for_each_chunk(cpu::numels_of(in.params), [&](const cpu::Chunk& ch) {
    const size_t t = ch.tensor;
    const int64_t b = ch.begin;
    const size_t in_size = in.params[t].element_size();
    const bool* mask = unmasked.empty() ? nullptr : unmasked[t].const_data_ptr<bool>() + b;
    return kernel({in.params[t].scalar_type(), offset(in.params[t].const_data_ptr(), b, in_size),
                   offset(in.grads[t].const_data_ptr(), b, in_size),
                   offset(scores[t].data_ptr(), b, scores[t].element_size()), mask, ch.end - b, eps, exponent, beta});
  });
  cpu::add_counts(nonfinite, skipped);
}

}  // namespace

TORCH_LIBRARY_IMPL(winnow, CPU, m) {
  m.impl("importance_update_adalora", &importance_update_adalora_cpu);
  m.impl("importance_update_id3", &importance_update_id3_cpu);
}

}  // namespace winnow::importance

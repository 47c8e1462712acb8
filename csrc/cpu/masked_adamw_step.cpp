// CPU launcher of masked_adamw_step (math in winnow/masked_adamw_step.h, loop in
// isa/masked_adamw_kernel.cpp): checks, step counts, and the chunks shared out among threads.
#include "winnow/masked_adamw_step.h"

#include <torch/library.h>

#include "isa/masked_adamw_kernel.h"
#include "multi_tensor.h"

namespace winnow::cpu {
Stub<void (*)(const AdamwChunk&)> masked_adamw_chunk;
}  // namespace winnow::cpu

namespace winnow::adamw {
namespace {

void masked_adamw_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                           at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs, at::TensorList active_blocks,
                           at::TensorList block_steps, at::IntArrayRef block_sizes, double lr, double beta1,
                           double beta2, double weight_decay, double eps, bool amsgrad, bool maximize,
                           const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf) {
  const StepInputs in = check_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, active_blocks, block_steps,
                                   block_sizes, lr, beta1, beta2, weight_decay, eps, amsgrad, grad_scale, found_inf);
  const size_t n = params.size();
  // Block indices are the optimizer's bookkeeping; a bad one would write out of bounds, so
  // check them all before anything is modified (O(active blocks), cheap next to the update).
  for (size_t i = 0; i < n; ++i) {
    const int64_t nb = num_blocks(params[i].numel(), block_sizes[i]);
    const int64_t* b = active_blocks[i].const_data_ptr<int64_t>();
    for (int64_t j = 0; j < active_blocks[i].numel(); ++j) {
      TORCH_CHECK_VALUE(block_in_range(b[j], nb), block_range_message(i, b[j], nb, block_sizes[i]));
    }
  }
  if (found_inf.has_value() && found_inf->item<float>() != 0.f) return;  // AMP: skip the whole step
  const double scale = grad_scale.has_value() ? static_cast<double>(grad_scale->item<float>()) : 1.0;

  std::vector<int64_t> work(n);  // compact elements of each tensor
  for (size_t i = 0; i < n; ++i) {
    int32_t* steps = block_steps[i].data_ptr<int32_t>();
    for (int64_t j = 0; j < block_steps[i].numel(); ++j) steps[j] += 1;
    work[i] = active_blocks[i].numel() * block_sizes[i];
  }
  const auto kernel = cpu::masked_adamw_chunk.get();
  cpu::for_each_chunk(work, [&](const cpu::Chunk& ch) -> int64_t {
    const size_t t = ch.tensor;
    kernel({params[t].scalar_type(), params[t].data_ptr(), in.grads[t].const_data_ptr(), exp_avgs[t].data_ptr(),
            exp_avg_sqs[t].data_ptr(), amsgrad ? max_exp_avg_sqs[t].data_ptr() : nullptr,
            active_blocks[t].const_data_ptr<int64_t>(), block_steps[t].const_data_ptr<int32_t>(), block_sizes[t],
            params[t].numel(), ch.begin, ch.end, lr, beta1, beta2, weight_decay, eps, scale, amsgrad, maximize});
    return 0;
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(winnow, CPU, m) { m.impl("masked_adamw_step", &masked_adamw_step_cpu); }

}  // namespace winnow::adamw

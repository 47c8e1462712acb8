// CPU launcher of masked_adamw_step (math in winnow/masked_adamw_step.h).
#include "winnow/masked_adamw_step.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "multi_tensor.h"

namespace winnow::adamw {
namespace {

// Elements [k0, k1) of one active block: param/grad at `p`/`g` (the block's first element),
// state at `m`/`v`/`vmax` (the block's slot). Contiguous on both sides, so it vectorises.
template <bool kAmsgrad, bool kMaximize, typename scalar_t, typename acc_t>
WINNOW_CPU_CLONES void update_range(scalar_t* __restrict p, const scalar_t* __restrict g, acc_t* __restrict m,
                                    acc_t* __restrict v, acc_t* __restrict vmax, int64_t k0, int64_t k1,
                                    const Hyper<acc_t> h, const BlockCoeffs<acc_t> c) {
  for (int64_t k = k0; k < k1; ++k) {
    acc_t pk = static_cast<acc_t>(p[k]);
    acc_t unused = 0;
    update<kAmsgrad, kMaximize>(pk, static_cast<acc_t>(g[k]), m[k], v[k], kAmsgrad ? vmax[k] : unused, h, c);
    p[k] = static_cast<scalar_t>(pk);
  }
}

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
      TORCH_CHECK_VALUE(b[j] >= 0 && b[j] < nb, "masked_adamw_step: active_blocks[", i, "] holds block ", b[j],
                        " but params[", i, "] has ", nb, " blocks of ", block_sizes[i]);
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
  cpu::for_each_chunk(work, [&](const cpu::Chunk& ch) -> int64_t {
    const size_t t = ch.tensor;
    const int64_t bs = block_sizes[t], numel = params[t].numel();
    const int64_t* blocks = active_blocks[t].const_data_ptr<int64_t>();
    const int32_t* steps = block_steps[t].const_data_ptr<int32_t>();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[t].scalar_type(), "masked_adamw_step", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto h = hyper<acc_t>(lr, beta1, beta2, weight_decay, eps, scale);
      scalar_t* p = params[t].data_ptr<scalar_t>();
      const scalar_t* g = in.grads[t].const_data_ptr<scalar_t>();
      acc_t* m = exp_avgs[t].data_ptr<acc_t>();
      acc_t* v = exp_avg_sqs[t].data_ptr<acc_t>();
      acc_t* vmax = amsgrad ? max_exp_avg_sqs[t].data_ptr<acc_t>() : nullptr;
      int32_t coeff_step = -1;  // blocks activated together share a step: compute pow() once
      BlockCoeffs<acc_t> c{};
      dispatch_flags(amsgrad, maximize, [&](auto ams, auto maxi) {
        for (int64_t pos = ch.begin; pos < ch.end;) {
          const int64_t j = pos / bs, k0 = pos % bs;
          const int64_t k1 = std::min(bs, k0 + (ch.end - pos));
          if (steps[j] != coeff_step) {
            coeff_step = steps[j];
            c = block_coeffs(h, coeff_step);
          }
          const int64_t first = blocks[j] * bs;  // the block's first element in the parameter
          const int64_t valid = std::min(k1, numel - first);  // the last block may be partial
          const int64_t slot = j * bs;
          update_range<decltype(ams)::value, decltype(maxi)::value>(
              p + first, g + first, m + slot, v + slot, vmax ? vmax + slot : nullptr, k0, valid, h, c);
          pos += k1 - k0;
        }
      });
    });
    return 0;
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(winnow, CPU, m) { m.impl("masked_adamw_step", &masked_adamw_step_cpu); }

}  // namespace winnow::adamw

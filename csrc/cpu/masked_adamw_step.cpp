// CPU launcher of masked_adamw_step (math in winnow/masked_adamw_step.h).
#include "winnow/masked_adamw_step.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "multi_tensor.h"

namespace winnow::adamw {
namespace {

// n consecutive elements: param/grad from `p`/`g`, state from `m`/`v`/`vmax`. Contiguous on both
// sides, so it vectorises.
template <bool kAmsgrad, bool kMaximize, typename scalar_t, typename acc_t>
WINNOW_CPU_CLONES void update_range(scalar_t* __restrict p, const scalar_t* __restrict g, acc_t* __restrict m,
                                    acc_t* __restrict v, acc_t* __restrict vmax, int64_t n, const Hyper<acc_t> h,
                                    const BlockCoeffs<acc_t> c) {
  for (int64_t k = 0; k < n; ++k) {
    acc_t pk = static_cast<acc_t>(p[k]);
    acc_t unused = 0;
    update<kAmsgrad, kMaximize>(pk, static_cast<acc_t>(g[k]), m[k], v[k], kAmsgrad ? vmax[k] : unused, h, c);
    p[k] = static_cast<scalar_t>(pk);
  }
}

// Sparse blocks sit at unpredictable addresses in the parameter and its gradient: fetch those of
// a block a few runs ahead while this one computes (the compact state streams by itself).
template <typename scalar_t>
inline void prefetch_block(const scalar_t* p, const scalar_t* g, int64_t first, int64_t len) {
  constexpr int64_t kLine = 64 / sizeof(scalar_t);
  for (int64_t k = 0; k < len; k += kLine) {
    __builtin_prefetch(p + first + k, 1);
    __builtin_prefetch(g + first + k, 0);
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
      const int64_t last_block = (ch.end + bs - 1) / bs;  // one past the last block this chunk touches
      constexpr int64_t kAhead = 12;
      dispatch_flags(amsgrad, maximize, [&](auto ams, auto maxi) {
        for (int64_t pos = ch.begin; pos < ch.end;) {
          const int64_t j = pos / bs;
          // A run: following blocks that are also next in the parameter and share the step are
          // contiguous on both sides, so they are one range (at density 1, the whole chunk).
          int64_t j_end = j + 1;
          while (j_end < last_block && blocks[j_end] == blocks[j_end - 1] + 1 && steps[j_end] == steps[j]) ++j_end;
          if (j_end + kAhead < last_block) prefetch_block(p, g, blocks[j_end + kAhead] * bs, bs);
          if (steps[j] != coeff_step) {
            coeff_step = steps[j];
            c = block_coeffs(h, coeff_step);
          }
          const int64_t run_end = std::min(ch.end, j_end * bs);
          const int64_t first = blocks[j] * bs + (pos - j * bs);  // param element of compact slot `pos`
          const int64_t valid = std::min(run_end - pos, numel - first);  // the last block may be partial
          update_range<decltype(ams)::value, decltype(maxi)::value>(p + first, g + first, m + pos, v + pos,
                                                                    vmax ? vmax + pos : nullptr, valid, h, c);
          pos = run_end;
        }
      });
    });
    return 0;
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(winnow, CPU, m) { m.impl("masked_adamw_step", &masked_adamw_step_cpu); }

}  // namespace winnow::adamw

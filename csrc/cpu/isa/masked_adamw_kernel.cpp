// masked_adamw_step's CPU loop, compiled once per instruction set (csrc/cpu/isa.h); the math is
// winnow/masked_adamw_step.h, the block update and prefetch winnow/masked_adamw_cpu_loop.h, the
// launcher csrc/cpu/masked_adamw_step.cpp.
#include "masked_adamw_kernel.h"

#include <ATen/OpMathType.h>

#include <algorithm>
#include <type_traits>

#include "winnow/masked_adamw_cpu_loop.h"
#include "winnow/masked_adamw_step.h"

namespace winnow::cpu {
namespace {

// True when blocks [first, last) follow each other in the parameter and share one step count:
// then the chunk is one range (at density 1, every chunk). A loop without an early exit, so it
// vectorises.
inline bool one_run(const int64_t* __restrict blocks, const int32_t* __restrict steps, int64_t first, int64_t last) {
  int same = 1;
  for (int64_t j = first + 1; j < last; ++j) {
    same &= static_cast<int>(blocks[j] == blocks[j - 1] + 1) & static_cast<int>(steps[j] == steps[first]);
  }
  return same != 0;
}

void chunk(const AdamwChunk& a) {
  const int64_t bs = a.block_size, numel = a.numel;
  const int64_t* blocks = a.blocks;
  int32_t* steps = a.steps;
  const int64_t first_block = a.begin / bs, last_block = (a.end + bs - 1) / bs;  // the chunk's blocks
  WINNOW_ISA_DISPATCH_FLOATING_WITH_HALF(a.dtype, [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto h = adamw::hyper<acc_t>(a.lr, a.beta1, a.beta2, a.weight_decay, a.eps, a.grad_scale);
    auto* p = static_cast<scalar_t*>(a.param);
    const auto* g = static_cast<const scalar_t*>(a.grad);
    auto* m = static_cast<acc_t*>(a.exp_avg);
    auto* v = static_cast<acc_t*>(a.exp_avg_sq);
    auto* vmax = static_cast<acc_t*>(a.max_exp_avg_sq);
    // Blocks activated together share a step: pow() once per change of step, or from the call's
    // table (ID3's cohorts change step every few blocks, so per change cost 8 of a 23 ms step).
    // `counted` is a block's step count before this step: this step is its next
    auto coeffs = [&](int32_t counted) -> adamw::BlockCoeffs<acc_t> {
      const int32_t step = counted + 1;
      const int64_t at = static_cast<int64_t>(step) - a.first_step;
      if (at < 0 || at >= a.table_size) return adamw::block_coeffs(h, step);
      return {static_cast<acc_t>(a.table[at].neg_step_size), static_cast<acc_t>(a.table[at].bias_correction2_sqrt)};
    };
    int32_t coeff_step = -1;
    adamw::BlockCoeffs<acc_t> c{};
    adamw::dispatch_flags(a.amsgrad, a.maximize, [&](auto ams, auto maxi) {
      auto update = [&](int64_t first, int64_t slot, int64_t n) {  // n elements from param element `first`
        update_range<decltype(ams)::value, decltype(maxi)::value>(p + first, g + first, m + slot, v + slot,
                                                                  vmax ? vmax + slot : nullptr, n, h, c);
      };
      if (one_run(blocks, steps, first_block, last_block)) {  // one range: the hardware streams it
        c = coeffs(steps[first_block]);
        const int64_t first = blocks[first_block] * bs;
        update(first, a.begin, std::min(a.end - a.begin, numel - first));
        return;
      }
      // Block by block, each fetched ahead of its update (prefetch_ahead), also inside runs of
      // consecutive blocks: merging runs into one range, or leaving the middle of a run to the
      // hardware, measured 3-6% slower at density 0.5 with 64-element blocks (Xeon, AVX-512):
      // the run lengths are random, a fixed trip count is not. One-element blocks (ID3) get a
      // loop of their own, whose update the compiler knows is one element.
      auto walk = [&](auto one_element) {
        constexpr bool kOne = decltype(one_element)::value;
        for (int64_t j = first_block; j < last_block; ++j) {
          if constexpr (kOne) {  // one-element blocks cost less each: fetched further ahead
            if (j + 16 < last_block) prefetch_block(p, g, blocks[j + 16], 1);
          } else {
            prefetch_ahead(p, g, m, v, blocks, j, last_block, bs);
          }
          if (steps[j] != coeff_step) {
            coeff_step = steps[j];
            c = coeffs(coeff_step);
          }
          if constexpr (kOne) {
            update(blocks[j], j, 1);
          } else {
            const int64_t first = blocks[j] * bs;
            update(first, j * bs, std::min(bs, numel - first));  // the parameter's last block may be partial
          }
        }
      };
      bs == 1 ? walk(std::true_type{}) : walk(std::false_type{});
    });
  });
  // the chunk holds whole blocks (the launcher cuts it so): no other chunk reads these counts
  for (int64_t j = first_block; j < last_block; ++j) steps[j] += 1;
}

WINNOW_REGISTER_ISA_KERNEL(masked_adamw_chunk, &chunk);

}  // namespace
}  // namespace winnow::cpu

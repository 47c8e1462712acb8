// masked_adamw_step's CPU loop, compiled once per instruction set (csrc/cpu/isa.h); the math is
// winnow/masked_adamw_step.h, the launcher csrc/cpu/masked_adamw_step.cpp.
#include "masked_adamw_kernel.h"

#include <ATen/OpMathType.h>

#include <algorithm>

#include "winnow/masked_adamw_step.h"

namespace winnow::cpu {
namespace {

// n consecutive elements: param/grad from `p`/`g`, state from `m`/`v`/`vmax`. Contiguous on both
// sides, so it vectorises.
template <bool kAmsgrad, bool kMaximize, typename scalar_t, typename acc_t>
void update_range(scalar_t* __restrict p, const scalar_t* __restrict g, acc_t* __restrict m, acc_t* __restrict v,
                  acc_t* __restrict vmax, int64_t n, const adamw::Hyper<acc_t> h, const adamw::BlockCoeffs<acc_t> c) {
  for (int64_t k = 0; k < n; ++k) {
    acc_t pk = static_cast<acc_t>(p[k]);
    acc_t unused = 0;
    adamw::update<kAmsgrad, kMaximize>(pk, static_cast<acc_t>(g[k]), m[k], v[k], kAmsgrad ? vmax[k] : unused, h, c);
    p[k] = static_cast<scalar_t>(pk);
  }
}

// Sparse blocks sit at unpredictable addresses in the parameter and its gradient, where the
// hardware prefetchers cannot follow: fetch each block that starts a jump a fixed distance ahead
// of the one being updated (the compact state streams by itself).
template <typename scalar_t>
inline void prefetch_block(const scalar_t* p, const scalar_t* g, int64_t first, int64_t len) {
  constexpr int64_t kLine = 64 / sizeof(scalar_t);
  for (int64_t k = 0; k < len; k += kLine) {
    __builtin_prefetch(p + first + k, 1);
    __builtin_prefetch(g + first + k, 0);
  }
}

// True when blocks [first, last) follow each other in the parameter and share one step count:
// then the chunk is one range (at density 1, every chunk). A loop without an early exit, so it
// vectorises: the block-by-block walk below costs ~2 ns a block, 1/20 of a 64-element update.
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
    constexpr int64_t kAhead = 12;  // blocks
    int64_t fetched = first_block;  // blocks before this one have been prefetched
    adamw::dispatch_flags(a.amsgrad, a.maximize, [&](auto ams, auto maxi) {
      // the whole chunk one run: no walk, nothing to prefetch (the hardware streams it)
      const bool whole = one_run(blocks, steps, first_block, last_block);
      if (whole) fetched = last_block;
      if (bs == 1 && !whole) {  // one element a block (ID3): a gather and a scatter, no runs to look for
        constexpr int64_t kAheadElements = 16;
        for (int64_t j = a.begin; j < a.end; ++j) {
          if (j + kAheadElements < a.end) {
            __builtin_prefetch(p + blocks[j + kAheadElements], 1);
            __builtin_prefetch(g + blocks[j + kAheadElements], 0);
          }
          if (steps[j] != coeff_step) {
            coeff_step = steps[j];
            c = coeffs(coeff_step);
          }
          update_range<decltype(ams)::value, decltype(maxi)::value>(p + blocks[j], g + blocks[j], m + j, v + j,
                                                                    vmax ? vmax + j : nullptr, 1, h, c);
        }
        return;
      }
      for (int64_t pos = a.begin; pos < a.end;) {
        const int64_t j = pos / bs;
        // A run: following blocks that are also next in the parameter and share the step are
        // contiguous on both sides, so they are one range (at density 1, the whole chunk).
        int64_t j_end = whole ? last_block : j + 1;
        while (j_end < last_block && blocks[j_end] == blocks[j_end - 1] + 1 && steps[j_end] == steps[j]) ++j_end;
        for (const int64_t until = std::min(last_block, j_end + kAhead); fetched < until; ++fetched) {
          // two blocks into a contiguous stretch the hardware streams it: prefetching costs more
          const bool streamed = fetched >= 2 && blocks[fetched] == blocks[fetched - 1] + 1 &&
                                blocks[fetched - 1] == blocks[fetched - 2] + 1;
          if (!streamed) prefetch_block(p, g, blocks[fetched] * bs, bs);
        }
        if (steps[j] != coeff_step) {
          coeff_step = steps[j];
          c = coeffs(coeff_step);
        }
        const int64_t run_end = std::min(a.end, j_end * bs);
        const int64_t first = blocks[j] * bs + (pos - j * bs);  // param element of compact slot `pos`
        const int64_t valid = std::min(run_end - pos, numel - first);  // the last block may be partial
        update_range<decltype(ams)::value, decltype(maxi)::value>(p + first, g + first, m + pos, v + pos,
                                                                  vmax ? vmax + pos : nullptr, valid, h, c);
        pos = run_end;
      }
    });
  });
  // the chunk holds whole blocks (the launcher cuts it so): no other chunk reads these counts
  for (int64_t j = first_block; j < last_block; ++j) steps[j] += 1;
}

WINNOW_REGISTER_ISA_KERNEL(masked_adamw_chunk, &chunk);

}  // namespace
}  // namespace winnow::cpu

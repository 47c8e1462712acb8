#pragma once
// The CPU loop pieces of masked_adamw_step, shared by its kernel (csrc/cpu/isa/
// masked_adamw_kernel.cpp) and the random-block floor benchmark (benchmarks/floors/
// random_blocks.cpp), so that the floor runs MaskedAdamW's own update and prefetching. Internal
// linkage on purpose: the kernel is compiled once per instruction set (csrc/cpu/isa.h), and each
// copy must keep its own instantiations, not share one chosen by the linker.
#include <cstdint>

#include "winnow/masked_adamw_step.h"

namespace winnow::cpu {
namespace {

constexpr int64_t kBlocksPrefetchedAhead = 12;

// n consecutive elements: param/grad from `p`/`g`, state from `m`/`v`/`vmax`. Contiguous on both
// sides and restrict-qualified, so it vectorises.
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
// hardware prefetchers cannot follow: every block is fetched a fixed distance ahead of the one
// being updated (the compact state streams by itself).
template <typename scalar_t>
inline void prefetch_block(const scalar_t* p, const scalar_t* g, int64_t first, int64_t len) {
  constexpr int64_t kLine = 64 / sizeof(scalar_t);
  for (int64_t k = 0; k < len; k += kLine) {
    __builtin_prefetch(p + first + k, 1);
    __builtin_prefetch(g + first + k, 0);
  }
}

}  // namespace
}  // namespace winnow::cpu

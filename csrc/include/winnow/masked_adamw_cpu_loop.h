#pragma once
// The CPU loop pieces of masked_adamw_step, shared by its kernel (csrc/cpu/isa/
// masked_adamw_kernel.cpp) and the random-block floor benchmark (benchmarks/floors/
// random_blocks.cpp), so that the floor runs MaskedAdamW's own update and prefetching. Internal
// linkage on purpose: the kernel is compiled once per instruction set (csrc/cpu/isa.h), and each
// copy must keep its own instantiations, not share one chosen by the linker.
#include <algorithm>
#include <cstdint>

#include "winnow/masked_adamw_step.h"

namespace winnow::cpu {
namespace {

// How far ahead a block's parameter and gradient are fetched: 768 elements (12 blocks of 64, 3 of
// 256; 6 of 128 measured 2.5% faster than 12, 3 of 256 2-6% faster than 12 at random densities
// 0.5-0.01, Xeon AVX-512), at most 12 blocks (shorter blocks unmeasured: kept at 12).
inline int64_t blocks_prefetched_ahead(int64_t block_size) {
  return std::clamp<int64_t>(768 / block_size, 1, 12);
}

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
// being updated.
template <typename scalar_t>
[[gnu::always_inline]] inline void prefetch_block(const scalar_t* p, const scalar_t* g, int64_t first, int64_t len) {
  constexpr int64_t kLine = 64 / sizeof(scalar_t);
  for (int64_t k = 0; k < len; k += kLine) {
    __builtin_prefetch(p + first + k, 1);
    __builtin_prefetch(g + first + k, 0);
  }
}

// The compact state streams, yet with blocks of 64 elements (4 lines of each moment) fetching
// it ahead too took 5-8% off the step at random densities 0.5, 0.1 and 0.01 (Xeon, AVX-512;
// same-process A/B of floor kernels, three instances each); with 128 it gained ~1%, with 256
// nothing. So only blocks up to 64 elements, 8 blocks ahead (1-16 measured alike).
constexpr int64_t kStateBlocksPrefetchedAhead = 8;
constexpr int64_t kStatePrefetchedUpToBlock = 64;

// Before the update of block j of [.., last): the parameter and gradient of the block
// `blocks_prefetched_ahead` further, and for short blocks the moments (compact slots) of block
// j + kStateBlocksPrefetchedAhead.
// Always inlined: GCC 12 takes a function of prefetches alone for a pure one with no result
// and drops the call to it (measured: a step with no prefetch at all, 25-30% slower).
template <typename scalar_t, typename acc_t>
[[gnu::always_inline]] inline void prefetch_ahead(const scalar_t* p, const scalar_t* g, const acc_t* m,
                                                  const acc_t* v, const int64_t* blocks, int64_t j, int64_t last,
                                                  int64_t block_size) {
  const int64_t ahead = j + blocks_prefetched_ahead(block_size);
  if (ahead < last) prefetch_block(p, g, blocks[ahead] * block_size, block_size);
  if (block_size <= kStatePrefetchedUpToBlock && j + kStateBlocksPrefetchedAhead < last) {
    constexpr int64_t kLine = 64 / sizeof(acc_t);
    const int64_t slot = (j + kStateBlocksPrefetchedAhead) * block_size;
    for (int64_t k = 0; k < block_size; k += kLine) {
      __builtin_prefetch(m + slot + k, 1);
      __builtin_prefetch(v + slot + k, 1);
    }
  }
}

}  // namespace
}  // namespace winnow::cpu

// The least a block-sparse AdamW step can cost on this machine: a minimal kernel, compiled by
// benchmarks/random_block_floor.py with -O3 -march=native, no checks, no dispatch, one loop.
// It reads and writes what MaskedAdamW does (the active blocks of p and g, compact moments) with
// MaskedAdamW's own per-element update (winnow/masked_adamw_step.h: torch's formula and rounding, two
// divides and a square root per element), and prefetches
// the next blocks of p and g as MaskedAdamW's kernel does; it keeps no per-block step count
// (MaskedAdamW's 4 B per block). What it costs is the memory system's price for that access
// pattern, the bound no kernel of this layout goes below. float32, whole blocks only.
#include <omp.h>

#include <cstdint>

#include "winnow/masked_adamw_step.h"  // the per-element update MaskedAdamW's kernels run

namespace {

constexpr int64_t kAhead = 12;  // blocks prefetched ahead, as in MaskedAdamW's CPU kernel

// One block; restrict-qualified parameters, so that the loop vectorises (as MaskedAdamW's does).
void update_block(float* __restrict p, const float* __restrict g, float* __restrict m, float* __restrict v,
                  int64_t n, const winnow::adamw::Hyper<float> h, const winnow::adamw::BlockCoeffs<float> c) {
  for (int64_t k = 0; k < n; ++k) {
    float pk = p[k], unused = 0;
    winnow::adamw::update<false, false>(pk, g[k], m[k], v[k], unused, h, c);
    p[k] = pk;
  }
}

}  // namespace

extern "C" void floor_step(int num_tensors, float* const* params, const float* const* grads, float* const* exp_avgs,
                           float* const* exp_avg_sqs, const int64_t* const* blocks, const int64_t* num_blocks,
                           int64_t block_size, int num_threads, double lr, double beta1, double beta2,
                           double weight_decay, double eps, int step) {
  using namespace winnow::adamw;
  const Hyper<float> h = hyper<float>(lr, beta1, beta2, weight_decay, eps, 1.0);
  const BlockCoeffs<float> c = block_coeffs(h, step);
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads)
  for (int t = 0; t < num_tensors; ++t) {
    float* p = params[t];
    const float* g = grads[t];
    const int64_t* b = blocks[t];
    const int64_t count = num_blocks[t];
    for (int64_t j = 0; j < count; ++j) {
      if (j + kAhead < count) {
        const int64_t ahead = b[j + kAhead] * block_size;
        for (int64_t k = 0; k < block_size; k += 16) {
          __builtin_prefetch(p + ahead + k, 1);
          __builtin_prefetch(g + ahead + k, 0);
        }
      }
      const int64_t first = b[j] * block_size;
      update_block(p + first, g + first, exp_avgs[t] + j * block_size, exp_avg_sqs[t] + j * block_size, block_size,
                   h, c);
    }
  }
}

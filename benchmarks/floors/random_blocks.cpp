// The least a block-sparse AdamW step can cost on this machine: a minimal kernel, compiled by
// benchmarks/random_block_floor.py with -O3 -march=native, no checks, no dispatch, one loop.
// It reads and writes what MaskedAdamW does (the active blocks of p and g, compact moments) with
// MaskedAdamW's own block update and prefetching (winnow/masked_adamw_cpu_loop.h, on the
// per-element update of winnow/masked_adamw_step.h: torch's formula and rounding, two divides and
// a square root per element); it keeps no per-block step count (MaskedAdamW's 4 B per block).
// What it costs is the memory system's price for that access pattern, the bound no kernel of
// this layout goes below. float32, whole blocks only.
#include <omp.h>

#include <cstdint>

#include "winnow/masked_adamw_cpu_loop.h"  // MaskedAdamW's block update and prefetch

extern "C" void floor_step(int num_tensors, float* const* params, const float* const* grads, float* const* exp_avgs,
                           float* const* exp_avg_sqs, const int64_t* const* blocks, const int64_t* num_blocks,
                           int64_t block_size, int num_threads, double lr, double beta1, double beta2,
                           double weight_decay, double eps, int step) {
  using namespace winnow::adamw;
  using namespace winnow::cpu;
  const Hyper<float> h = hyper<float>(lr, beta1, beta2, weight_decay, eps, 1.0);
  const BlockCoeffs<float> c = block_coeffs(h, step);
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads)
  for (int t = 0; t < num_tensors; ++t) {
    float* p = params[t];
    const float* g = grads[t];
    const int64_t* b = blocks[t];
    const int64_t count = num_blocks[t];
    for (int64_t j = 0; j < count; ++j) {
      prefetch_ahead(p, g, exp_avgs[t], exp_avg_sqs[t], b, j, count, block_size);
      const int64_t first = b[j] * block_size;
      update_range<false, false>(p + first, g + first, exp_avgs[t] + j * block_size, exp_avg_sqs[t] + j * block_size,
                                 static_cast<float*>(nullptr), block_size, h, c);
    }
  }
}

// The least a block-sparse AdamW step can cost on this machine: a minimal kernel, compiled by
// benchmarks/random_block_floor.py with -O3 -march=native, no checks, no dispatch, one loop.
// It reads and writes what MaskedAdamW does (the active blocks of p and g, compact moments) with
// torch's AdamW formula and rounding (two divides and a square root per element), and prefetches
// the next blocks of p and g as MaskedAdamW's kernel does; it keeps no per-block step count
// (MaskedAdamW's 4 B per block). What it costs is the memory system's price for that access
// pattern, the bound no kernel of this layout goes below. float32, whole blocks only.
#include <omp.h>

#include <cmath>
#include <cstdint>

namespace {

constexpr int64_t kAhead = 12;  // blocks prefetched ahead, as in MaskedAdamW's CPU kernel

void update_block(float* __restrict p, const float* __restrict g, float* __restrict m, float* __restrict v,
                  int64_t n, float decay, float w1, float beta2, float w2, float bc2_sqrt, float eps,
                  float neg_step) {
  for (int64_t k = 0; k < n; ++k) {
    const float gk = g[k];
    const float pk = p[k] * decay;
    const float mk = m[k] + w1 * (gk - m[k]);  // torch's lerp, weight 1 - beta1 < 0.5
    const float vk = v[k] * beta2 + w2 * gk * gk;
    const float denom = std::sqrt(vk) / bc2_sqrt + eps;
    p[k] = pk + neg_step * mk / denom;
    m[k] = mk;
    v[k] = vk;
  }
}

}  // namespace

extern "C" void floor_step(int num_tensors, float* const* params, const float* const* grads, float* const* exp_avgs,
                           float* const* exp_avg_sqs, const int64_t* const* blocks, const int64_t* num_blocks,
                           int64_t block_size, int num_threads, double lr, double beta1, double beta2,
                           double weight_decay, double eps, int step) {
  const float decay = static_cast<float>(1.0 - lr * weight_decay), w1 = static_cast<float>(1.0 - beta1);
  const float b2 = static_cast<float>(beta2), w2 = static_cast<float>(1.0 - beta2), e = static_cast<float>(eps);
  const float neg_step = static_cast<float>(-lr / (1.0 - std::pow(beta1, step)));
  const float bc2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(beta2, step)));
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
                   decay, w1, b2, w2, bc2_sqrt, e, neg_step);
    }
  }
}

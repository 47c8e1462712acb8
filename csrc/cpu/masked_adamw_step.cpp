// CPU launcher of masked_adamw_step (math in winnow/masked_adamw_step.h, loop in
// isa/masked_adamw_kernel.cpp): checks, step counts, and the chunks shared out among threads.
#include "winnow/masked_adamw_step.h"

#include <algorithm>
#include <atomic>
#include <limits>

#include <torch/library.h>

#include "isa/masked_adamw_kernel.h"
#include "multi_tensor.h"

namespace winnow::cpu {
Stub<void (*)(const AdamwChunk&)> masked_adamw_chunk;
}  // namespace winnow::cpu

namespace winnow::adamw {
namespace {

constexpr int64_t kChunkBlocks = 512;
constexpr int64_t kBlocksPerTableEntry = 4;  // a table entry (two pow()) per 4 blocks at most

void masked_adamw_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                           at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs, at::TensorList active_blocks,
                           at::TensorList block_steps, at::IntArrayRef block_sizes, double lr, double beta1,
                           double beta2, double weight_decay, double eps, bool amsgrad, bool maximize,
                           const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf) {
  const StepInputs in = check_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, active_blocks, block_steps,
                                   block_sizes, lr, beta1, beta2, weight_decay, eps, amsgrad, grad_scale, found_inf);
  const size_t n = params.size();
  // Block indices are the optimizer's bookkeeping; a bad one would write out of bounds, so
  // check them all before anything is modified. The same read-only pass finds the range of the
  // blocks' step counts (for the table of coefficients below); each chunk of the update counts
  // its own blocks' step, so no pass writes the counts alone. The passes share the threads (at
  // density 1 with 64-element blocks they read 3 MB): a min / max per chunk that vectorises, the
  // first bad index found only for the message.
  std::vector<int64_t> blocks_of(n), work(n);  // active blocks, compact elements of each tensor
  int64_t total_blocks = 0;
  for (size_t i = 0; i < n; ++i) {
    blocks_of[i] = active_blocks[i].numel();
    work[i] = blocks_of[i] * block_sizes[i];
    total_blocks += blocks_of[i];
  }
  // a pass over the block lists: on this thread when they are short (a parallel region costs
  // more than it saves below ~64k blocks)
  auto over_blocks = [&](auto&& body) {
    if (total_blocks >= (int64_t{1} << 16)) return cpu::for_each_chunk(blocks_of, body);
    std::vector<int64_t> per_tensor(n);
    for (size_t i = 0; i < n; ++i) per_tensor[i] = body(cpu::Chunk{i, 0, blocks_of[i]});
    return per_tensor;
  };
  std::atomic<int32_t> lowest{std::numeric_limits<int32_t>::max()}, highest{0};
  const auto out_of_range = over_blocks([&](const cpu::Chunk& ch) -> int64_t {
    const int64_t* b = active_blocks[ch.tensor].const_data_ptr<int64_t>();
    const int32_t* steps = block_steps[ch.tensor].const_data_ptr<int32_t>();
    int64_t lo = 0, hi = 0;
    int32_t steps_lo = std::numeric_limits<int32_t>::max(), steps_hi = 0;
    for (int64_t j = ch.begin; j < ch.end; ++j) {
      lo = std::min(lo, b[j]);
      hi = std::max(hi, b[j]);
      steps_lo = std::min(steps_lo, steps[j]);
      steps_hi = std::max(steps_hi, steps[j]);
    }
    for (int32_t seen = lowest.load(); steps_lo < seen && !lowest.compare_exchange_weak(seen, steps_lo);) {
    }
    for (int32_t seen = highest.load(); steps_hi > seen && !highest.compare_exchange_weak(seen, steps_hi);) {
    }
    return lo < 0 || hi >= num_blocks(params[ch.tensor].numel(), block_sizes[ch.tensor]);
  });
  for (size_t i = 0; i < n; ++i) {
    if (out_of_range[i] == 0) continue;
    const int64_t nb = num_blocks(params[i].numel(), block_sizes[i]);
    const int64_t* b = active_blocks[i].const_data_ptr<int64_t>();
    for (int64_t j = 0; j < blocks_of[i]; ++j) {
      TORCH_CHECK_VALUE(block_in_range(b[j], nb), block_range_message(i, b[j], nb, block_sizes[i]));
    }
  }
  if (found_inf.has_value() && found_inf->item<float>() != 0.f) return;  // AMP: skip the whole step
  const double scale = grad_scale.has_value() ? static_cast<double>(grad_scale->item<float>()) : 1.0;
  // The coefficients of every step in that range, when it is short next to the block count: the
  // loop would otherwise call pow() at every change of step along a block list (ID3 appends a
  // cohort of blocks per step, so its lists change step every few blocks).
  std::vector<BlockCoeffs<double>> table;
  const int32_t first_step = lowest.load() + 1;  // the steps this update takes
  const int64_t range = static_cast<int64_t>(highest.load()) - lowest.load() + 1;
  if (range > 1 && range * kBlocksPerTableEntry <= total_blocks) {
    const auto h = hyper<double>(lr, beta1, beta2, weight_decay, eps, 1.0);
    table.resize(range);
    for (int64_t s = 0; s < range; ++s) table[s] = block_coeffs(h, static_cast<int32_t>(first_step + s));
  }
  // Chunks of 32k compact elements, or of 512 blocks when blocks are smaller than 64 elements:
  // a block costs a jump in the parameter, so ID3's one-element blocks would otherwise put up
  // to 32k random reads in one chunk, on one thread. Whole blocks: a chunk counts its blocks' step.
  std::vector<int64_t> chunk_lengths(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t bs = block_sizes[i];
    chunk_lengths[i] = std::max<int64_t>(1, std::min(cpu::kChunkElements, kChunkBlocks * bs) / bs) * bs;
  }
  const auto kernel = cpu::masked_adamw_chunk.get();
  cpu::for_each_chunk(work, [&](const cpu::Chunk& ch) -> int64_t {
    const size_t t = ch.tensor;
    kernel({params[t].scalar_type(), params[t].data_ptr(), in.grads[t].const_data_ptr(), exp_avgs[t].data_ptr(),
            exp_avg_sqs[t].data_ptr(), amsgrad ? max_exp_avg_sqs[t].data_ptr() : nullptr,
            active_blocks[t].const_data_ptr<int64_t>(), block_steps[t].data_ptr<int32_t>(), block_sizes[t],
            params[t].numel(), ch.begin, ch.end, lr, beta1, beta2, weight_decay, eps, scale, amsgrad, maximize,
            table.data(), first_step, static_cast<int64_t>(table.size())});
    return 0;
  }, chunk_lengths);
}

}  // namespace

TORCH_LIBRARY_IMPL(winnow, CPU, m) { m.impl("masked_adamw_step", &masked_adamw_step_cpu); }

}  // namespace winnow::adamw

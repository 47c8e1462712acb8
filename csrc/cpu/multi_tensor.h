#pragma once
// One parallel region over a list of tensors: every tensor is cut into chunks and the chunks
// of all tensors are shared out among the threads together (CPU analogue of multi_tensor_apply).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

namespace winnow::cpu {

struct Chunk {
  size_t tensor;  // index into the tensor list
  int64_t begin;  // element range [begin, end) of that tensor
  int64_t end;
};

constexpr int64_t kChunkElements = 1 << 15;

// Runs body(chunk) -> int64_t for every chunk, in parallel; returns the per-tensor sums of
// what body returned (used for counts of skipped elements). Tensor t is cut into chunks of
// chunk_lengths[t] items (default kChunkElements; a launcher whose items are rows passes fewer).
template <typename Body>
std::vector<int64_t> for_each_chunk(const std::vector<int64_t>& numels, Body&& body,
                                    const std::vector<int64_t>& chunk_lengths = {}) {
  std::vector<Chunk> chunks;
  for (size_t t = 0; t < numels.size(); ++t) {
    const int64_t len = chunk_lengths.empty() ? kChunkElements : std::max<int64_t>(1, chunk_lengths[t]);
    for (int64_t b = 0; b < numels[t]; b += len) {
      chunks.push_back({t, b, std::min(numels[t], b + len)});
    }
  }
  std::vector<int64_t> per_chunk(chunks.size(), 0);
  // Chunks handed out in order from a shared counter, not split in halves up front: chunks cost
  // unequal time (ID3's scan keys some tiles and skips others), and a thread done early would
  // otherwise wait. Each thread still sees its chunks in increasing order.
  const auto count = static_cast<int64_t>(chunks.size());
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min<int64_t>(count, at::get_num_threads()), 1, [&](int64_t, int64_t) {
    for (int64_t c; (c = next.fetch_add(1, std::memory_order_relaxed)) < count;) per_chunk[c] = body(chunks[c]);
  });
  std::vector<int64_t> per_tensor(numels.size(), 0);
  for (size_t c = 0; c < chunks.size(); ++c) per_tensor[chunks[c].tensor] += per_chunk[c];
  return per_tensor;
}

inline std::vector<int64_t> numels_of(const std::vector<at::Tensor>& tensors) {
  std::vector<int64_t> n;
  n.reserve(tensors.size());
  for (const auto& t : tensors) n.push_back(t.numel());
  return n;
}

// Raw data pointer advanced by `elements` items of `item_size` bytes (for the untyped kernel
// arguments of csrc/cpu/isa/).
inline const void* offset(const void* p, int64_t elements, size_t item_size) {
  return static_cast<const char*>(p) + elements * static_cast<int64_t>(item_size);
}
inline void* offset(void* p, int64_t elements, size_t item_size) {
  return static_cast<char*>(p) + elements * static_cast<int64_t>(item_size);
}

// counter[i] += add[i] for a CPU int64 counter tensor.
inline void add_counts(const at::Tensor& counter, const std::vector<int64_t>& add) {
  int64_t* c = counter.data_ptr<int64_t>();
  for (size_t i = 0; i < add.size(); ++i) c[i] += add[i];
}

}  // namespace winnow::cpu

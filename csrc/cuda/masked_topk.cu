// CUDA launcher of masked_topk (key math and digit steps in winnow/masked_topk.h): the CPU's radix
// select with the digit counts kept on the device, so the only host sync is the one that sizes
// the outputs. Per 11-bit digit: a histogram launch over every chunk of every tensor (each block
// counts in shared memory, then adds its bins to the global histogram) and a one-block launch that
// picks the digit holding the k-th largest key. Then a launch counts each chunk's keys above and at
// the threshold; ATen's cumsum gives every chunk its share of the ties (lowest (tensor, index)
// first) and its output offset; the offsets come to the host once; a last launch writes each
// chunk's indices in order (a block scan per tile of 256). The scores are read 3 + 2 times
// (float32; 6 + 2 for float64) and never concatenated or copied.
#include <ATen/Dispatch.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/clamp_min.h>
#include <ATen/ops/minimum.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include "multi_tensor.cuh"
#include "winnow/masked_topk.h"

namespace winnow::topk {
namespace {

using cuda::kBlockThreads;
using cuda::kChunkElements;
using cuda::ptr;

// The select's state on the device: the threshold's known digits, how many of the wanted keys
// share them, and `all`: fewer candidates than k (every one is taken; the threshold is key 0).
// Laid out as three int64 (its storage is an int64 tensor; `remaining` is read by ATen ops).
struct State {
  unsigned long long prefix;
  long long remaining;
  long long all;
};
static_assert(sizeof(State) == 3 * sizeof(int64_t), "State is stored as three int64");

__global__ void init_state_kernel(State* state, int64_t k) { *state = {0ull, k, 0}; }

// Slots: 0 scores, 1 unmasked (or null).
using ScoreMeta = cuda::TensorListMeta<2>;

template <typename scalar_t, typename key_t>
__global__ void __launch_bounds__(kBlockThreads)
    histogram_kernel(const ScoreMeta meta, int pass, const State* state, unsigned long long* hist) {
  constexpr int kBits = 8 * sizeof(key_t);
  __shared__ unsigned int local[kBins];
  for (int d = threadIdx.x; d < kBins; d += kBlockThreads) local[d] = 0;
  __syncthreads();
  if (state->remaining > 0 && state->all == 0) {  // the same for the whole block
    const auto prefix = static_cast<key_t>(state->prefix);
    const int t = cuda::tensor_of_block(meta, blockIdx.x);
    const auto* s = static_cast<const scalar_t*>(meta.ptr[0][t]);
    const auto* skip = static_cast<const bool*>(meta.ptr[1][t]);
    cuda::for_chunk(meta, t, [&](auto width, int64_t i) {
      constexpr int W = decltype(width)::value;
      const auto sv = cuda::load<W>(s + i);
      cuda::Vec<bool, W> sk{};
      if (skip != nullptr) sk = cuda::load<W>(skip + i);
#pragma unroll
      for (int k = 0; k < W; ++k) {
        const key_t key = order_key(sv.v[k]);
        if (!sk.v[k] && has_prefix(key, prefix, pass, kBits)) atomicAdd(&local[digit(key, pass, kBits)], 1u);
      }
    });
  }
  __syncthreads();
  for (int d = threadIdx.x; d < kBins; d += kBlockThreads) {
    if (local[d] != 0) atomicAdd(&hist[d], static_cast<unsigned long long>(local[d]));
  }
}

// One block: thread i holds bins kBins-1-8i down to kBins-8-8i (descending key order); a block
// scan gives each thread the count of the bins above its own, and the thread whose bins hold the
// remaining-th largest key sets the digit. Leaves the histogram zeroed for the next pass.
template <typename key_t>
__global__ void __launch_bounds__(kBlockThreads) pick_digit_kernel(int pass, State* state, unsigned long long* hist) {
  constexpr int kBits = 8 * sizeof(key_t);
  constexpr int kPerThread = kBins / kBlockThreads;
  static_assert(kBins % kBlockThreads == 0, "bins must split evenly over the threads");
  using Scan = cub::BlockScan<long long, kBlockThreads>;
  __shared__ typename Scan::TempStorage temp;
  long long count[kPerThread], mine = 0;
  for (int q = 0; q < kPerThread; ++q) {
    const int d = kBins - 1 - (threadIdx.x * kPerThread + q);
    count[q] = static_cast<long long>(hist[d]);
    hist[d] = 0;
    mine += count[q];
  }
  const long long remaining = state->remaining;
  const long long all = state->all;
  long long above = 0, candidates = 0;
  Scan(temp).ExclusiveSum(mine, above, candidates);
  __syncthreads();  // every thread has read the state before it changes
  if (remaining <= 0 || all != 0) return;
  if (pass == 0 && candidates < remaining) {  // fewer candidates than k: all of them
    if (threadIdx.x == 0) state->all = 1;
    return;
  }
  for (int q = 0; q < kPerThread; ++q) {
    if (above < remaining && above + count[q] >= remaining) {
      const int d = kBins - 1 - (threadIdx.x * kPerThread + q);
      state->prefix = with_digit(static_cast<key_t>(state->prefix), d, pass, kBits);
      state->remaining = remaining - above;
    }
    above += count[q];
  }
}

// The threshold key: the k-th largest, or 0 (the lowest key) when every candidate is taken.
template <typename key_t>
struct Threshold {
  key_t key;
  __device__ explicit Threshold(const State* state) : key(state->all ? key_t(0) : static_cast<key_t>(state->prefix)) {}
};

// Packed per-chunk counts: keys above the threshold in the high 32 bits, keys equal to it in the
// low 32 (a chunk has at most 2^16 entries).
__device__ __forceinline__ unsigned long long packed(bool above, bool equal) {
  return (static_cast<unsigned long long>(above) << 32) | static_cast<unsigned long long>(equal);
}

template <typename scalar_t, typename key_t>
__device__ __forceinline__ unsigned long long classify(const scalar_t* s, const bool* skip, int64_t i,
                                                       const Threshold<key_t>& thr) {
  if (skip != nullptr && skip[i]) return 0ull;
  const key_t key = order_key(s[i]);
  return packed(key > thr.key, key == thr.key);
}

template <typename scalar_t, typename key_t>
__global__ void __launch_bounds__(kBlockThreads)
    count_kernel(const ScoreMeta meta, int64_t chunk0, const State* state, int64_t* above, int64_t* equal) {
  using Reduce = cub::BlockReduce<unsigned long long, kBlockThreads>;
  __shared__ typename Reduce::TempStorage temp;
  const Threshold<key_t> thr(state);
  const int t = cuda::tensor_of_block(meta, blockIdx.x);
  const auto* s = static_cast<const scalar_t*>(meta.ptr[0][t]);
  const auto* skip = static_cast<const bool*>(meta.ptr[1][t]);
  unsigned long long mine = 0;
  cuda::for_chunk(meta, t, [&](auto width, int64_t i) {
    for (int k = 0; k < decltype(width)::value; ++k) mine += classify(s, skip, i + k, thr);
  });
  const unsigned long long total = Reduce(temp).Sum(mine);
  if (threadIdx.x == 0) {
    above[chunk0 + blockIdx.x] = static_cast<int64_t>(total >> 32);
    equal[chunk0 + blockIdx.x] = static_cast<int64_t>(total & 0xffffffffull);
  }
}

// Slots: 0 scores, 1 unmasked (or null), 2 the tensor's output. aux[0]: the output offset of the
// tensor's first chunk (chunk offsets count over all tensors).
using WriteMeta = cuda::TensorListMeta<3, 1>;

template <typename scalar_t, typename key_t>
__global__ void __launch_bounds__(kBlockThreads)
    write_kernel(const WriteMeta meta, int64_t chunk0, const State* state, const int64_t* take,
                 const int64_t* offset_after, const int64_t* selected) {
  using Scan = cub::BlockScan<unsigned long long, kBlockThreads>;
  __shared__ typename Scan::TempStorage temp;
  const Threshold<key_t> thr(state);
  const int t = cuda::tensor_of_block(meta, blockIdx.x);
  const int64_t chunk = chunk0 + blockIdx.x;
  const auto* s = static_cast<const scalar_t*>(meta.ptr[0][t]);
  const auto* skip = static_cast<const bool*>(meta.ptr[1][t]);
  auto* out = static_cast<int64_t*>(meta.ptr[2][t]) + (offset_after[chunk] - selected[chunk] - meta.aux[0][t]);
  const long long ties = take[chunk];
  const int64_t begin = (static_cast<int64_t>(blockIdx.x) - meta.first_block[t]) * kChunkElements;
  const int64_t end = min(begin + kChunkElements, meta.numel[t]);
  unsigned long long carry = 0;  // packed counts of the earlier tiles of this chunk
  for (int64_t tile = begin; tile < end; tile += kBlockThreads) {
    const int64_t i = tile + threadIdx.x;
    const unsigned long long flags = i < end ? classify(s, skip, i, thr) : 0ull;
    if (!__syncthreads_or(flags != 0ull)) continue;  // nothing in this tile (the common case)
    unsigned long long before = 0, tile_total = 0;
    Scan(temp).ExclusiveSum(flags, before, tile_total);
    before += carry;
    const long long above_before = static_cast<long long>(before >> 32);
    const long long equal_before = static_cast<long long>(before & 0xffffffffull);
    const bool is_above = (flags >> 32) != 0ull, is_equal = (flags & 1ull) != 0ull;
    if (is_above || (is_equal && equal_before < ties)) {
      out[above_before + (equal_before < ties ? equal_before : ties)] = i;
    }
    carry += tile_total;
    __syncthreads();  // temp is reused by the next tile's scan
  }
}

template <typename scalar_t, typename key_t>
std::vector<at::Tensor> select(at::TensorList scores, at::TensorList unmasked, int64_t k) {
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const size_t n = scores.size();
  const auto long_opts = scores[0].options().dtype(at::kLong);
  std::vector<std::array<void*, 2>> ptrs;
  std::vector<int64_t> numels;
  for (size_t t = 0; t < n; ++t) {
    ptrs.push_back({ptr(scores[t]), unmasked.empty() ? nullptr : ptr(unmasked[t])});
    numels.push_back(scores[t].numel());
  }
  const int s_bytes = sizeof(scalar_t);
  // Every chunk-wise launch: the same layout (launch_over skips empty tensors), chunk0 running on.
  auto over_chunks = [&](auto&& launch) {
    int64_t chunk0 = 0;
    cuda::launch_over<ScoreMeta>(ptrs, numels, {s_bytes, 1}, [&](const ScoreMeta& meta, int64_t blocks) {
      launch(meta, blocks, chunk0);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      chunk0 += blocks;
    });
  };
  at::Tensor state_store = at::empty({3}, long_opts);
  auto* state = reinterpret_cast<State*>(state_store.data_ptr<int64_t>());
  init_state_kernel<<<1, 1, 0, stream>>>(state, k);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  at::Tensor hist = at::zeros({kBins}, long_opts);
  auto* bins = reinterpret_cast<unsigned long long*>(hist.data_ptr<int64_t>());
  for (int pass = 0; pass < num_passes<key_t>(); ++pass) {
    over_chunks([&](const ScoreMeta& meta, int64_t blocks, int64_t) {
      histogram_kernel<scalar_t, key_t><<<blocks, kBlockThreads, 0, stream>>>(meta, pass, state, bins);
    });
    pick_digit_kernel<key_t><<<1, kBlockThreads, 0, stream>>>(pass, state, bins);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  std::vector<int64_t> first_chunk(n, 0);  // the chunk layout of over_chunks
  int64_t chunks = 0;
  for (size_t t = 0; t < n; ++t) {
    first_chunk[t] = chunks;
    chunks += (numels[t] + kChunkElements - 1) / kChunkElements;
  }
  at::Tensor above = at::empty({chunks}, long_opts), equal = at::empty({chunks}, long_opts);
  over_chunks([&](const ScoreMeta& meta, int64_t blocks, int64_t chunk0) {
    count_kernel<scalar_t, key_t><<<blocks, kBlockThreads, 0, stream>>>(meta, chunk0, state, above.data_ptr<int64_t>(),
                                                                        equal.data_ptr<int64_t>());
  });
  // Ties go to the lowest (tensor, index): chunk c takes min(equal, remaining - ties before it).
  // (remaining is k when every candidate is taken: every tie fits.)
  const at::Tensor remaining = state_store.select(0, 1);
  const at::Tensor take = at::minimum(equal, (remaining - (equal.cumsum(0) - equal)).clamp_min(0));
  const at::Tensor selected = above + take;
  const at::Tensor offset_after = selected.cumsum(0);
  const at::Tensor host = offset_after.cpu();  // the one host sync: the output sizes
  const int64_t* ends = host.const_data_ptr<int64_t>();

  std::vector<at::Tensor> out(n);
  std::vector<std::array<void*, 3>> write_ptrs;
  std::vector<std::vector<int64_t>> bases(1);
  for (size_t t = 0; t < n; ++t) {
    const int64_t c0 = first_chunk[t], c1 = t + 1 < n ? first_chunk[t + 1] : chunks;
    const int64_t base = c0 == 0 ? 0 : ends[c0 - 1];
    out[t] = at::empty({c1 > c0 ? ends[c1 - 1] - base : 0}, long_opts);
    write_ptrs.push_back({ptrs[t][0], ptrs[t][1], out[t].data_ptr()});
    bases[0].push_back(base);
  }
  int64_t chunk0 = 0;
  cuda::launch_over<WriteMeta>(write_ptrs, numels, {0, 0, 0}, [&](const WriteMeta& meta, int64_t blocks) {
    write_kernel<scalar_t, key_t><<<blocks, kBlockThreads, 0, stream>>>(
        meta, chunk0, state, take.const_data_ptr<int64_t>(), offset_after.const_data_ptr<int64_t>(),
        selected.const_data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    chunk0 += blocks;
  }, bases);
  return out;
}

std::vector<at::Tensor> masked_topk_cuda(at::TensorList scores, at::TensorList unmasked, int64_t k) {
  check_topk(scores, unmasked, k);
  const c10::cuda::CUDAGuard guard(scores[0].device());
  if (k == 0) return nothing_selected(scores);
  if (scores[0].scalar_type() == at::kDouble) return select<double, uint64_t>(scores, unmasked, k);
  return select<float, uint32_t>(scores, unmasked, k);
}

}  // namespace

TORCH_LIBRARY_IMPL(winnow, CUDA, m) { m.impl("masked_topk", &masked_topk_cuda); }

}  // namespace winnow::topk

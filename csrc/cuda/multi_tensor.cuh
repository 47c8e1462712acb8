#pragma once
// Launch helpers of every CUDA kernel. Multi-tensor launches: one kernel launch covers up to kMaxTensorsPerLaunch tensors (of one
// dtype), one thread block per chunk of kChunkElements elements. Tensor pointers and sizes
// travel as a by-value kernel argument (as in torch's MultiTensorApply), so a launch needs no
// allocation and no host-device copy. Indices are int64 throughout (tensors over 2^31 elements).
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <vector>

namespace winnow::cuda {

constexpr int kBlockThreads = 256;
constexpr int64_t kChunkElements = 1 << 16;
constexpr int kVec = 4;  // elements per vector access (16 B of float32)
constexpr int kMaxTensorsPerLaunch = 48;

// N pointer slots and kAux integers per tensor (their meaning is the kernel's: e.g. a block
// size). MaxT tensors per launch keeps the struct under the 4 KB kernel-parameter limit.
template <int N, int kAux = 0, int MaxT = kMaxTensorsPerLaunch>
struct TensorListMeta {
  static constexpr int kMaxTensors = MaxT;
  void* ptr[N][MaxT];
  int64_t aux[kAux > 0 ? kAux : 1][MaxT];
  int64_t numel[MaxT];  // elements of work in each tensor
  int64_t first_block[MaxT + 1];
  bool aligned[MaxT];  // every pointer aligned for kVec-wide accesses
  int num_tensors;
};
static_assert(sizeof(TensorListMeta<5>) < 4000, "kernel argument too large");

// The tensor a block works on: the last one whose first block is <= blockIdx.x.
template <typename Meta>
__device__ __forceinline__ int tensor_of_block(const Meta& meta, int64_t block) {
  int lo = 0, hi = meta.num_tensors - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (meta.first_block[mid] <= block) lo = mid; else hi = mid - 1;
  }
  return lo;
}

template <typename T, int W>
struct alignas(sizeof(T) * W) Vec {
  T v[W];
};

template <int W, typename T>
__device__ __forceinline__ Vec<T, W> load(const T* p) {
  return *reinterpret_cast<const Vec<T, W>*>(p);
}

template <int W, typename T>
__device__ __forceinline__ void store(T* p, const Vec<T, W>& v) {
  *reinterpret_cast<Vec<T, W>*>(p) = v;
}

// Calls body(width, i) over this block's chunk: width = kVec on aligned tensors for all full
// groups, width = 1 for the rest. body processes elements [i, i + width).
template <typename Meta, typename Body>
__device__ __forceinline__ void for_chunk(const Meta& meta, int t, Body&& body) {
  const int64_t begin = (static_cast<int64_t>(blockIdx.x) - meta.first_block[t]) * kChunkElements;
  const int64_t end = begin + kChunkElements < meta.numel[t] ? begin + kChunkElements : meta.numel[t];
  const int64_t vec_end = meta.aligned[t] ? begin + (end - begin) / kVec * kVec : begin;
  for (int64_t i = begin + static_cast<int64_t>(threadIdx.x) * kVec; i < vec_end; i += blockDim.x * kVec) {
    body(std::integral_constant<int, kVec>{}, i);
  }
  for (int64_t i = vec_end + threadIdx.x; i < end; i += blockDim.x) {
    body(std::integral_constant<int, 1>{}, i);
  }
}

// Adds a block's count of skipped elements to a per-tensor int64 counter; atomics only in the
// (rare) blocks that saw one.
__device__ __forceinline__ void add_skipped(int64_t* counter, int skipped) {
  if (__syncthreads_or(skipped != 0) && skipped != 0) {
    atomicAdd(reinterpret_cast<unsigned long long*>(counter), static_cast<unsigned long long>(skipped));
  }
}

// Host side: fills a TensorListMeta for consecutive groups of tensors and calls
// launch(meta, num_blocks) for each. elem_bytes[k] is the element size of pointer slot k
// (0 for a slot that may be null, e.g. an optional mask); aux[k][t] the integers of tensor t.
// numels[t] counts tensor t's units of work, units_per_block of them per thread block (the
// default: a chunk of elements, for for_chunk; a kernel may count rows or column tiles instead).
template <typename Meta, size_t N, typename Launch>
void launch_over(const std::vector<std::array<void*, N>>& ptrs, const std::vector<int64_t>& numels,
                 const std::array<int, N>& elem_bytes, Launch&& launch,
                 const std::vector<std::vector<int64_t>>& aux = {}, int64_t units_per_block = kChunkElements) {
  Meta meta{};
  int64_t blocks = 0;
  auto flush = [&] {
    if (meta.num_tensors == 0) return;
    meta.first_block[meta.num_tensors] = blocks;
    launch(meta, blocks);
    meta = Meta{};
    blocks = 0;
  };
  for (size_t t = 0; t < ptrs.size(); ++t) {
    if (numels[t] == 0) continue;
    const int slot = meta.num_tensors;
    bool aligned = true;
    for (size_t k = 0; k < N; ++k) {
      meta.ptr[k][slot] = ptrs[t][k];
      const auto addr = reinterpret_cast<uintptr_t>(ptrs[t][k]);
      if (ptrs[t][k] != nullptr && elem_bytes[k] > 0) aligned = aligned && addr % (elem_bytes[k] * kVec) == 0;
    }
    meta.aligned[slot] = aligned;
    meta.numel[slot] = numels[t];
    for (size_t k = 0; k < aux.size(); ++k) meta.aux[k][slot] = aux[k][t];
    meta.first_block[slot] = blocks;
    blocks += (numels[t] + units_per_block - 1) / units_per_block;
    meta.num_tensors++;
    if (meta.num_tensors == Meta::kMaxTensors) flush();
  }
  flush();
}

constexpr int kWarp = 32;

// The sum over a warp's 32 lanes, in every lane (a fixed tree: deterministic).
template <typename T>
__device__ __forceinline__ T warp_sum(T x) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

// The current device's multiprocessor count, asked once per device (grid sizes of grid-stride
// kernels; cudaDeviceGetAttribute on every launch costs a driver call).
inline int sm_count() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cached[kMaxDevices] = {};
  const int device = c10::cuda::current_device();
  if (device >= kMaxDevices) {
    int sms = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    return sms;
  }
  int sms = cached[device].load(std::memory_order_relaxed);
  if (sms == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    cached[device].store(sms, std::memory_order_relaxed);
  }
  return sms;
}

// Grid of a grid-stride kernel over `units` (threads, or warps, ...), `per_block` per block:
// enough blocks for every unit, at most `waves` per multiprocessor.
inline int grid_for(int64_t units, int64_t per_block, int waves = 8) {
  const int64_t needed = (units + per_block - 1) / per_block;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(needed, int64_t(sm_count()) * waves)));
}

inline void* ptr(const at::Tensor& t) { return const_cast<void*>(t.const_data_ptr()); }

// Groups tensors by the dtype of `keys` (one kernel instantiation each) and hands every group to
// launch(dtype, indices), the positions in `keys` of that group's tensors, in order.
template <typename Launch>
void per_dtype(at::TensorList keys, Launch&& launch,
               std::initializer_list<at::ScalarType> dtypes = {at::kFloat, at::kBFloat16, at::kHalf, at::kDouble}) {
  for (auto dtype : dtypes) {
    std::vector<size_t> idx;
    for (size_t i = 0; i < keys.size(); ++i) {
      if (keys[i].scalar_type() == dtype) idx.push_back(i);
    }
    if (!idx.empty()) launch(dtype, idx);
  }
}

}  // namespace winnow::cuda

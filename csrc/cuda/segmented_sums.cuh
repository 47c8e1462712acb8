#pragma once
// Row and column sums (or means) of row-major matrices, many matrices per launch, accumulated in
// double in a fixed order (so results are deterministic) with coalesced reads:
//   along rows:    a warp per row; the lanes stride along the row, then a shuffle tree.
//   along columns: a block per tile of 32 columns of one group of rows; warp y of the block adds
//                  rows y, y + 8, ... (each load: 32 consecutive columns of one row), then the 8
//                  partial sums are added in order.
// A job's values are a[i], or the AdaLoRA element score a[i] * b[i] when b is given. Column sums
// split the rows into `groups` equal groups (out[g * cols + c]). Used by importance_score's means,
// rank_prune's triplet means and oba_channel_sums.
#include <cmath>
#include <vector>

#include "multi_tensor.cuh"
#include "winnow/importance_score.h"

namespace winnow::cuda {

constexpr int kRowsPerBlock = kBlockThreads / kWarp;
constexpr int kTileCols = kWarp;
constexpr int kTileRows = kBlockThreads / kTileCols;

enum class Along { Rows, Columns };

struct SumJob {
  const void* a;
  const void* b;  // null: plain sums of a
  void* out;
  int64_t rows, cols, groups;
  bool mean;  // divide by the number of values summed (NaN when there are none)
};

// Slots: 0 a, 1 b, 2 out. aux: 0 rows, 1 cols, 2 groups, 3 mean.
using SumMeta = TensorListMeta<3, 4, 40>;
static_assert(sizeof(SumMeta) < 4000, "kernel argument too large");

template <typename in_t>
__device__ __forceinline__ double value_at(const in_t* a, const in_t* b, int64_t i) {
  return b == nullptr ? static_cast<double>(a[i]) : static_cast<double>(importance::adalora_score(a[i], b[i]));
}

template <typename out_t>
__device__ __forceinline__ out_t finish(double sum, int64_t count, bool mean) {
  if (!mean) return static_cast<out_t>(sum);
  return static_cast<out_t>(count > 0 ? sum / static_cast<double>(count) : NAN);
}

template <typename in_t, typename out_t>
__global__ void __launch_bounds__(kBlockThreads) row_sums_kernel(const SumMeta meta) {
  const int t = tensor_of_block(meta, blockIdx.x);
  const int64_t row = (static_cast<int64_t>(blockIdx.x) - meta.first_block[t]) * kRowsPerBlock + threadIdx.x / kWarp;
  if (row >= meta.numel[t]) return;  // a whole warp leaves together, so the shuffles below see 32 lanes
  const auto* a = static_cast<const in_t*>(meta.ptr[0][t]);
  const auto* b = static_cast<const in_t*>(meta.ptr[1][t]);
  const int64_t cols = meta.aux[1][t];
  const int lane = threadIdx.x % kWarp;
  double sum = 0.0;
  for (int64_t c = lane; c < cols; c += kWarp) sum += value_at(a, b, row * cols + c);
  sum = warp_sum(sum);
  if (lane == 0) static_cast<out_t*>(meta.ptr[2][t])[row] = finish<out_t>(sum, cols, meta.aux[3][t] != 0);
}

template <typename in_t, typename out_t>
__global__ void __launch_bounds__(kBlockThreads) column_sums_kernel(const SumMeta meta) {
  __shared__ double partial[kTileRows][kTileCols];
  const int t = tensor_of_block(meta, blockIdx.x);
  const auto* a = static_cast<const in_t*>(meta.ptr[0][t]);
  const auto* b = static_cast<const in_t*>(meta.ptr[1][t]);
  const int64_t cols = meta.aux[1][t], per_group = meta.aux[0][t] / meta.aux[2][t];
  const int64_t tiles = (cols + kTileCols - 1) / kTileCols;
  const int64_t unit = static_cast<int64_t>(blockIdx.x) - meta.first_block[t];
  const int64_t g = unit / tiles;
  const int x = threadIdx.x % kTileCols, y = threadIdx.x / kTileCols;
  const int64_t c = (unit % tiles) * kTileCols + x;
  double sum = 0.0;
  if (c < cols) {
    for (int64_t r = g * per_group + y; r < (g + 1) * per_group; r += kTileRows) sum += value_at(a, b, r * cols + c);
  }
  partial[y][x] = sum;
  __syncthreads();
  if (y == 0 && c < cols) {
    double total = 0.0;
    for (int k = 0; k < kTileRows; ++k) total += partial[k][x];
    static_cast<out_t*>(meta.ptr[2][t])[g * cols + c] = finish<out_t>(total, per_group, meta.aux[3][t] != 0);
  }
}

// Host side: the jobs' sums along `along`, on `stream`; in_t is a and b's dtype, out_t out's.
template <typename in_t, typename out_t>
void launch_sums(Along along, const std::vector<SumJob>& jobs, cudaStream_t stream) {
  std::vector<std::array<void*, 3>> ptrs;
  std::vector<int64_t> units;
  std::vector<std::vector<int64_t>> aux(4);
  for (const SumJob& job : jobs) {
    ptrs.push_back({const_cast<void*>(job.a), const_cast<void*>(job.b), job.out});
    // rows: one unit per row; columns: one per (group, 32-column tile); no outputs, no units
    units.push_back(along == Along::Rows ? job.rows : job.groups * ((job.cols + kTileCols - 1) / kTileCols));
    aux[0].push_back(job.rows);
    aux[1].push_back(job.cols);
    aux[2].push_back(job.groups);
    aux[3].push_back(job.mean ? 1 : 0);
  }
  launch_over<SumMeta>(
      ptrs, units, {0, 0, 0},
      [&](const SumMeta& meta, int64_t blocks) {
        if (along == Along::Rows) {
          row_sums_kernel<in_t, out_t><<<blocks, kBlockThreads, 0, stream>>>(meta);
        } else {
          column_sums_kernel<in_t, out_t><<<blocks, kBlockThreads, 0, stream>>>(meta);
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      },
      aux, along == Along::Rows ? kRowsPerBlock : 1);
}

}  // namespace winnow::cuda

// CUDA launcher of rank_prune (math in winnow/rank_prune.h): the triplet means through the shared
// segmented sums (A's rows along the row, B's columns down tiled columns: coalesced), one kernel
// for every triplet's score and order key, at::kthvalue of the keys for the threshold (it stays
// on the device), one kernel that masks every lora_E. No host sync.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/kthvalue.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

#include "multi_tensor.cuh"
#include "segmented_sums.cuh"
#include "winnow/rank_prune.h"

namespace winnow::rank {
namespace {

using cuda::ptr;

// Thread per triplet of a module: S = s(E) + (mean_a + mean_b), and S's order key. Slots: ipt_E,
// unc_E; aux[0]: the module's first row in the flat outputs (means, scores and keys).
template <typename acc_t>
__global__ void __launch_bounds__(cuda::kBlockThreads)
    triplet_kernel(const cuda::TensorListMeta<2, 1> meta, const acc_t* mean_a, const acc_t* mean_b, acc_t* scores,
                   int64_t* keys) {
  const int t = cuda::tensor_of_block(meta, blockIdx.x);
  const auto* ie = static_cast<const acc_t*>(meta.ptr[0][t]);
  const auto* ue = static_cast<const acc_t*>(meta.ptr[1][t]);
  const int64_t row0 = meta.aux[0][t];
  cuda::for_chunk(meta, t, [&](auto width, int64_t i) {
    for (int k = 0; k < decltype(width)::value; ++k) {
      const int64_t row = row0 + i + k;
      const acc_t s = triplet_score(importance::adalora_score(ie[i + k], ue[i + k]), mean_a[row], mean_b[row]);
      scores[row] = s;
      keys[row] = signed_order_key(s);
    }
  });
}

// Thread per triplet: keep flag, and lora_E zeroed where masked. E pointers are per module.
template <typename e_t, typename acc_t>
__global__ void mask_kernel(const cuda::TensorListMeta<1, 1> meta, const acc_t* scores, const int64_t* threshold_key,
                            bool* keep) {
  const int t = cuda::tensor_of_block(meta, blockIdx.x);
  auto* e = static_cast<e_t*>(meta.ptr[0][t]);
  const int64_t row0 = meta.aux[0][t];
  cuda::for_chunk(meta, t, [&](auto width, int64_t i) {
    for (int k = 0; k < decltype(width)::value; ++k) {
      const int64_t row = row0 + i + k;
      const bool kept = keeps(scores[row], threshold_key);
      keep[row] = kept;
      if (!kept) e[i + k] = e_t(0);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> rank_prune_cuda(at::TensorList lora_E, at::TensorList ipt_E, at::TensorList unc_E,
                                                   at::TensorList ipt_A, at::TensorList unc_A, at::TensorList ipt_B,
                                                   at::TensorList unc_B, int64_t num_masked) {
  int64_t total = 0;
  const std::vector<Module> mods = check_prune(lora_E, ipt_E, unc_E, ipt_A, unc_A, ipt_B, unc_B, num_masked, total);
  const c10::cuda::CUDAGuard guard(lora_E[0].device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor scores = at::empty({total}, ipt_E[0].options());
  at::Tensor keep = at::empty({total}, ipt_E[0].options().dtype(at::kBool));
  if (total == 0) return {scores, keep};
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "rank_prune", [&] {
    using acc_t = scalar_t;
    // Row m.first_row + j of `means`: [0] the mean of A's row j, [1] the mean of B's column j.
    at::Tensor means = at::empty({2, total}, scores.options());
    acc_t* mean_a = means.data_ptr<acc_t>();
    acc_t* mean_b = mean_a + total;
    std::vector<cuda::SumJob> a_rows, b_columns;
    std::vector<std::array<void*, 2>> e_stats;
    std::vector<int64_t> ranks;
    std::vector<std::vector<int64_t>> first_rows(1);
    for (size_t m = 0; m < mods.size(); ++m) {
      const Module& mod = mods[m];
      if (mod.rank == 0) continue;
      a_rows.push_back({ipt_A[m].const_data_ptr(), unc_A[m].const_data_ptr(), mean_a + mod.first_row, mod.rank,
                        mod.in_features, 1, true});
      b_columns.push_back({ipt_B[m].const_data_ptr(), unc_B[m].const_data_ptr(), mean_b + mod.first_row,
                           mod.out_features, mod.rank, 1, true});
      e_stats.push_back({ptr(ipt_E[m]), ptr(unc_E[m])});
      ranks.push_back(mod.rank);
      first_rows[0].push_back(mod.first_row);
    }
    cuda::launch_sums<acc_t, acc_t>(cuda::Along::Rows, a_rows, stream);
    cuda::launch_sums<acc_t, acc_t>(cuda::Along::Columns, b_columns, stream);
    at::Tensor keys = at::empty({total}, scores.options().dtype(at::kLong));
    cuda::launch_over<cuda::TensorListMeta<2, 1>>(
        e_stats, ranks, {0, 0},
        [&](const cuda::TensorListMeta<2, 1>& meta, int64_t blocks) {
          triplet_kernel<acc_t><<<blocks, cuda::kBlockThreads, 0, stream>>>(meta, mean_a, mean_b,
                                                                            scores.data_ptr<acc_t>(),
                                                                            keys.data_ptr<int64_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        },
        first_rows);

    at::Tensor threshold;  // the k-th smallest key, a 0-d device tensor
    if (num_masked > 0) threshold = std::get<0>(at::kthvalue(keys, num_masked));
    const int64_t* thr = num_masked > 0 ? threshold.const_data_ptr<int64_t>() : nullptr;
    cuda::per_dtype(lora_E, [&](at::ScalarType dtype, const std::vector<size_t>& idx) {
      std::vector<std::array<void*, 1>> e_ptrs;
      std::vector<int64_t> e_ranks;
      std::vector<std::vector<int64_t>> rows(1);
      for (size_t m : idx) {
        e_ptrs.push_back({lora_E[m].data_ptr()});
        e_ranks.push_back(mods[m].rank);
        rows[0].push_back(mods[m].first_row);
      }
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "rank_prune_mask", [&] {
        using e_t = scalar_t;
        cuda::launch_over<cuda::TensorListMeta<1, 1>>(
            e_ptrs, e_ranks, {0},
            [&](const cuda::TensorListMeta<1, 1>& meta, int64_t blocks) {
              mask_kernel<e_t, acc_t><<<blocks, cuda::kBlockThreads, 0, stream>>>(
                  meta, scores.const_data_ptr<acc_t>(), thr, keep.data_ptr<bool>());
              C10_CUDA_KERNEL_LAUNCH_CHECK();
            },
            rows);
      });
    });
  });
  return {scores, keep};
}

}  // namespace

TORCH_LIBRARY_IMPL(winnow, CUDA, m) { m.impl("rank_prune", &rank_prune_cuda); }

}  // namespace winnow::rank

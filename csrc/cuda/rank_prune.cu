// CUDA launcher of rank_prune (math in winnow/rank_prune.h): one kernel for every triplet score,
// at::kthvalue for the threshold (stays on the device), one kernel that masks every lora_E.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/kthvalue.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

#include "multi_tensor.cuh"
#include "winnow/rank_prune.h"

namespace winnow::rank {
namespace {

inline const void* cptr(const at::Tensor& t) { return t.const_data_ptr(); }

constexpr int kMaxModules = 40;
struct ScoreMeta {
  const void* stat[6][kMaxModules];  // ipt_E, unc_E, ipt_A, unc_A, ipt_B, unc_B
  int64_t rank[kMaxModules], in_features[kMaxModules], out_features[kMaxModules], first_row[kMaxModules + 1];
  int num_modules;
};
static_assert(sizeof(ScoreMeta) < 4000, "kernel argument too large");

// Sum of element scores at ipt[k * stride] over k < n, strided over the block's threads, in double.
template <typename acc_t>
__device__ double block_sum_scores(const acc_t* ipt, const acc_t* unc, int64_t n, int64_t stride, double* shared) {
  double sum = 0.0;
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) {
    sum += static_cast<double>(importance::adalora_score(ipt[k * stride], unc[k * stride]));
  }
  shared[threadIdx.x] = sum;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
    __syncthreads();
  }
  const double total = shared[0];
  __syncthreads();
  return total;
}

// One block per triplet (module m, row j).
template <typename acc_t>
__global__ void __launch_bounds__(cuda::kBlockThreads) triplet_kernel(const ScoreMeta meta, acc_t* scores) {
  __shared__ double shared[cuda::kBlockThreads];
  int m = 0;
  while (m + 1 < meta.num_modules && meta.first_row[m + 1] <= blockIdx.x) ++m;
  const int64_t j = blockIdx.x - meta.first_row[m];
  const int64_t r = meta.rank[m], in = meta.in_features[m], out = meta.out_features[m];
  const auto* ia = static_cast<const acc_t*>(meta.stat[2][m]) + j * in;
  const auto* ua = static_cast<const acc_t*>(meta.stat[3][m]) + j * in;
  const auto* ib = static_cast<const acc_t*>(meta.stat[4][m]) + j;
  const auto* ub = static_cast<const acc_t*>(meta.stat[5][m]) + j;
  const double sum_a = block_sum_scores(ia, ua, in, 1, shared);
  const double sum_b = block_sum_scores(ib, ub, out, r, shared);
  if (threadIdx.x == 0) {
    const acc_t se = importance::adalora_score(static_cast<const acc_t*>(meta.stat[0][m])[j],
                                               static_cast<const acc_t*>(meta.stat[1][m])[j]);
    const acc_t mean_a = static_cast<acc_t>(in > 0 ? sum_a / static_cast<double>(in) : NAN);
    const acc_t mean_b = static_cast<acc_t>(out > 0 ? sum_b / static_cast<double>(out) : NAN);
    scores[meta.first_row[m] + j] = triplet_score(se, mean_a, mean_b);
  }
}

// Thread per triplet: keep flag, and lora_E zeroed where masked. E pointers are per module.
template <typename e_t, typename acc_t>
__global__ void mask_kernel(const cuda::TensorListMeta<1> meta, const acc_t* scores, const acc_t* threshold,
                            bool* keep) {
  const int t = cuda::tensor_of_block(meta, blockIdx.x);
  auto* e = static_cast<e_t*>(meta.ptr[0][t]);
  const int64_t row0 = meta.aux[0][t];
  cuda::for_chunk(meta, t, [&](auto width, int64_t i) {
    for (int k = 0; k < decltype(width)::value; ++k) {
      const int64_t row = row0 + i + k;
      const bool kept = keeps(scores[row], threshold);
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
    ScoreMeta meta{};
    int64_t blocks = 0;
    auto flush = [&] {
      if (meta.num_modules == 0) return;
      meta.first_row[meta.num_modules] = blocks + meta.first_row[0];
      // first_row holds global rows; the kernel's block index is relative to this launch
      const int64_t base = meta.first_row[0];
      for (int m = 0; m <= meta.num_modules; ++m) meta.first_row[m] -= base;
      triplet_kernel<scalar_t><<<blocks, cuda::kBlockThreads, 0, stream>>>(meta, scores.data_ptr<scalar_t>() + base);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      meta = ScoreMeta{};
      blocks = 0;
    };
    for (size_t m = 0; m < mods.size(); ++m) {
      if (mods[m].rank == 0) continue;
      const int slot = meta.num_modules++;
      const at::Tensor* stats[6] = {&ipt_E[m], &unc_E[m], &ipt_A[m], &unc_A[m], &ipt_B[m], &unc_B[m]};
      for (int k = 0; k < 6; ++k) meta.stat[k][slot] = cptr(*stats[k]);
      meta.rank[slot] = mods[m].rank;
      meta.in_features[slot] = mods[m].in_features;
      meta.out_features[slot] = mods[m].out_features;
      meta.first_row[slot] = mods[m].first_row;
      blocks += mods[m].rank;
      if (meta.num_modules == kMaxModules) flush();
    }
    flush();

    using acc_t = scalar_t;
    at::Tensor threshold;
    if (num_masked > 0) threshold = std::get<0>(at::kthvalue(scores, num_masked));  // stays on the device
    const scalar_t* thr = num_masked > 0 ? threshold.const_data_ptr<scalar_t>() : nullptr;
    for (auto dtype : {at::kFloat, at::kBFloat16, at::kHalf, at::kDouble}) {
      std::vector<std::array<void*, 1>> ptrs;
      std::vector<int64_t> ranks;
      std::vector<std::vector<int64_t>> rows(1);
      for (size_t m = 0; m < mods.size(); ++m) {
        if (lora_E[m].scalar_type() != dtype) continue;
        ptrs.push_back({lora_E[m].data_ptr()});
        ranks.push_back(mods[m].rank);
        rows[0].push_back(mods[m].first_row);
      }
      if (ptrs.empty()) continue;
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "rank_prune_mask", [&] {
        using e_t = scalar_t;
        cuda::launch_over<cuda::TensorListMeta<1>>(
            ptrs, ranks, {0},
            [&](const cuda::TensorListMeta<1>& meta1, int64_t nblocks) {
              mask_kernel<e_t, acc_t><<<nblocks, cuda::kBlockThreads, 0, stream>>>(
                  meta1, scores.const_data_ptr<acc_t>(), thr, keep.data_ptr<bool>());
              C10_CUDA_KERNEL_LAUNCH_CHECK();
            },
            rows);
      });
    }
  });
  return {scores, keep};
}

}  // namespace

TORCH_LIBRARY_IMPL(winnow, CUDA, m) { m.impl("rank_prune", &rank_prune_cuda); }

}  // namespace winnow::rank

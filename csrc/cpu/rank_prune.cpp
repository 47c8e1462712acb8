// CPU launcher of rank_prune (math in winnow/rank_prune.h).
#include "winnow/rank_prune.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

namespace winnow::rank {
namespace {

// Mean of the element scores at base[k * stride], k < n, summed in double.
template <typename acc_t>
acc_t mean_score(const acc_t* ipt, const acc_t* unc, int64_t n, int64_t stride) {
  double sum = 0.0;
  for (int64_t k = 0; k < n; ++k) sum += static_cast<double>(importance::adalora_score(ipt[k * stride], unc[k * stride]));
  return static_cast<acc_t>(n > 0 ? sum / static_cast<double>(n) : NAN);
}

std::tuple<at::Tensor, at::Tensor> rank_prune_cpu(at::TensorList lora_E, at::TensorList ipt_E, at::TensorList unc_E,
                                                  at::TensorList ipt_A, at::TensorList unc_A, at::TensorList ipt_B,
                                                  at::TensorList unc_B, int64_t num_masked) {
  int64_t total = 0;
  const std::vector<Module> mods = check_prune(lora_E, ipt_E, unc_E, ipt_A, unc_A, ipt_B, unc_B, num_masked, total);
  at::Tensor scores = at::empty({total}, ipt_E[0].options());
  at::Tensor keep = at::empty({total}, ipt_E[0].options().dtype(at::kBool));
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "rank_prune", [&] {
    scalar_t* s = scores.data_ptr<scalar_t>();
    at::parallel_for(0, static_cast<int64_t>(mods.size()), 1, [&](int64_t begin, int64_t end) {
      for (int64_t m = begin; m < end; ++m) {
        const Module& mod = mods[m];
        const auto* ie = ipt_E[m].const_data_ptr<scalar_t>();
        const auto* ue = unc_E[m].const_data_ptr<scalar_t>();
        const auto* ia = ipt_A[m].const_data_ptr<scalar_t>();
        const auto* ua = unc_A[m].const_data_ptr<scalar_t>();
        const auto* ib = ipt_B[m].const_data_ptr<scalar_t>();
        const auto* ub = unc_B[m].const_data_ptr<scalar_t>();
        for (int64_t j = 0; j < mod.rank; ++j) {
          const scalar_t mean_a = mean_score(ia + j * mod.in_features, ua + j * mod.in_features, mod.in_features, 1);
          const scalar_t mean_b = mean_score(ib + j, ub + j, mod.out_features, mod.rank);
          s[mod.first_row + j] = triplet_score(importance::adalora_score(ie[j], ue[j]), mean_a, mean_b);
        }
      }
    });
    int64_t threshold_key = 0;
    const int64_t* threshold = nullptr;
    if (num_masked > 0) {  // the k-th smallest key: a total order, so NaN and -0 are well defined
      std::vector<int64_t> keys(total);
      for (int64_t i = 0; i < total; ++i) keys[i] = signed_order_key(s[i]);
      std::nth_element(keys.begin(), keys.begin() + (num_masked - 1), keys.end());
      threshold_key = keys[num_masked - 1];
      threshold = &threshold_key;
    }
    bool* k = keep.data_ptr<bool>();
    for (size_t m = 0; m < mods.size(); ++m) {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, lora_E[m].scalar_type(), "rank_prune_mask", [&] {
        using e_t = scalar_t;
        e_t* e = lora_E[m].data_ptr<e_t>();
        for (int64_t j = 0; j < mods[m].rank; ++j) {
          const int64_t row = mods[m].first_row + j;
          k[row] = keeps(s[row], threshold);
          if (!k[row]) e[j] = e_t(0);
        }
      });
    }
  });
  return {scores, keep};
}

}  // namespace

TORCH_LIBRARY_IMPL(winnow, CPU, m) { m.impl("rank_prune", &rank_prune_cpu); }

}  // namespace winnow::rank

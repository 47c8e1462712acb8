#pragma once
// rank_prune: AdaLoRA's budget step for all adapted modules at once. Triplet i of module m is
// (column i of P = lora_B, lambda_i = lora_E[i], row i of Q = lora_A); its score is
//   S = s(E_i) + (mean_k s(A_ik) + mean_k s(B_ki)),   s = exp_avg_ipt * exp_avg_unc,
// added in peft's order (mask_to_budget: ipt_E + sum(cat[mean_A, mean_B])). The k-th smallest
// S over all modules is the threshold; E_i is zeroed where S <= threshold (ties included, as in
// peft); k = 0 masks nothing. Scores rank by winnow/order_key.h: -0 == +0 and NaN (the empty
// mean of a zero-width module) lowest, so masked first (peft's kthvalue would rank NaN highest).
// Shared by csrc/cpu/rank_prune.cpp and csrc/cuda/rank_prune.cu.
#include "winnow/importance_score.h"
#include "winnow/macros.h"
#include "winnow/order_key.h"

namespace winnow::rank {

template <typename acc_t>
WINNOW_HD acc_t triplet_score(acc_t score_e, acc_t mean_a, acc_t mean_b) {
  return score_e + (mean_a + mean_b);
}

// A triplet survives when its score ranks above the threshold, given as the signed order key
// of the k-th smallest score (no threshold: all survive).
template <typename acc_t>
WINNOW_HD bool keeps(acc_t score, const int64_t* threshold_key) {
  return threshold_key == nullptr || signed_order_key(score) > *threshold_key;
}

}  // namespace winnow::rank

// ---- host side: validation shared by both backends ----
#include <vector>

#include "winnow/checks.h"

namespace winnow::rank {

struct Module {
  int64_t rank, in_features, out_features, first_row;  // first_row: offset in the flat score vector
};

// Checks the lists and returns each module's sizes; `total` receives the number of triplets.
inline std::vector<Module> check_prune(at::TensorList lora_E, at::TensorList ipt_E, at::TensorList unc_E,
                                       at::TensorList ipt_A, at::TensorList unc_A, at::TensorList ipt_B,
                                       at::TensorList unc_B, int64_t num_masked, int64_t& total) {
  const char* op = "rank_prune";
  checks::nonempty(op, "lora_E", lora_E.size());
  const size_t n = lora_E.size();
  checks::same_length(op, "ipt_E", ipt_E.size(), "lora_E", n);
  checks::same_length(op, "unc_E", unc_E.size(), "lora_E", n);
  checks::same_length(op, "ipt_A", ipt_A.size(), "lora_E", n);
  checks::same_length(op, "unc_A", unc_A.size(), "lora_E", n);
  checks::same_length(op, "ipt_B", ipt_B.size(), "lora_E", n);
  checks::same_length(op, "unc_B", unc_B.size(), "lora_E", n);
  const at::Device device = lora_E[0].device();
  const at::ScalarType stat = ipt_E[0].defined() ? ipt_E[0].scalar_type() : at::kFloat;
  TORCH_CHECK_TYPE(stat == at::kFloat || stat == at::kDouble, op, ": statistics must be float32 or float64, got ",
                   stat);
  std::vector<Module> mods;
  total = 0;
  auto stat_like = [&](const char* name, size_t i, const at::Tensor& t, int64_t rows, int64_t cols) {
    TORCH_CHECK_VALUE(t.defined(), op, ": ", name, "[", i, "] is undefined (None)");
    TORCH_CHECK_TYPE(t.scalar_type() == stat, op, ": ", name, "[", i, "] must be ", stat,
                     " like the other statistics, got ", t.scalar_type());
    checks::same_device(op, name, i, t, device);
    TORCH_CHECK_VALUE(t.dim() == 2 && t.size(0) == rows && t.size(1) == cols, op, ": ", name, "[", i,
                      "] must have shape [", rows, ", ", cols, "], got ", t.sizes());
    TORCH_CHECK_VALUE(t.is_contiguous(), op, ": ", name, "[", i, "] must be contiguous");
  };
  for (size_t i = 0; i < n; ++i) {
    checks::float_input(op, "lora_E", i, lora_E[i]);
    checks::same_device(op, "lora_E", i, lora_E[i], device);
    TORCH_CHECK_VALUE(lora_E[i].dim() == 2 && lora_E[i].size(1) == 1 && lora_E[i].is_contiguous(), op, ": lora_E[",
                      i, "] must be a contiguous [r, 1] tensor, got shape ", lora_E[i].sizes());
    const int64_t r = lora_E[i].size(0);
    TORCH_CHECK_VALUE(ipt_A[i].defined() && ipt_A[i].dim() == 2 && ipt_B[i].defined() && ipt_B[i].dim() == 2, op,
                      ": ipt_A[", i, "] and ipt_B[", i, "] must be 2-D");
    const int64_t in = ipt_A[i].size(1), out = ipt_B[i].size(0);
    stat_like("ipt_E", i, ipt_E[i], r, 1);
    stat_like("unc_E", i, unc_E[i], r, 1);
    stat_like("ipt_A", i, ipt_A[i], r, in);
    stat_like("unc_A", i, unc_A[i], r, in);
    stat_like("ipt_B", i, ipt_B[i], out, r);
    stat_like("unc_B", i, unc_B[i], out, r);
    mods.push_back({r, in, out, total});
    total += r;
  }
  TORCH_CHECK_VALUE(num_masked >= 0 && num_masked <= total, op, ": num_masked must be in [0, ", total,
                    "] (the number of triplets), got ", num_masked);
  return mods;
}

}  // namespace winnow::rank

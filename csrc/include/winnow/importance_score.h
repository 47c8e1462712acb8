#pragma once
// importance_score: AdaLoRA's element score s = Ibar * Ubar ("_element_score"), on demand, or its
// mean along one dim of a 2-D tensor (peft averages lora_A's scores along each row and lora_B's
// down each column). The score is shared by csrc/cpu/importance_score.cpp,
// csrc/cuda/importance_score.cu and rank_prune; the means are summed in double.
#include "winnow/macros.h"

namespace winnow::importance {

// Element score s = Ibar * Ubar (AdaLoRA's "_element_score").
template <typename acc_t>
WINNOW_HD acc_t adalora_score(acc_t ibar, acc_t ubar) {
  return ibar * ubar;
}

}  // namespace winnow::importance

// ---- host side: validation shared by both backends ----
#include <vector>

#include <ATen/ops/empty.h>

#include "winnow/checks.h"

namespace winnow::importance {

// mean_dims[i]: -1 = element scores of tensor i, 0 = their mean over dim 0 (one per column),
// 1 = their mean over dim 1 (one per row); 0 and 1 need a 2-D tensor.
inline void check_score(at::TensorList exp_avg_ipt, at::TensorList exp_avg_unc, at::IntArrayRef mean_dims) {
  const char* op = "importance_score";
  checks::nonempty(op, "exp_avg_ipt", exp_avg_ipt.size());
  checks::same_length(op, "exp_avg_unc", exp_avg_unc.size(), "exp_avg_ipt", exp_avg_ipt.size());
  checks::same_length(op, "mean_dims", mean_dims.size(), "exp_avg_ipt", exp_avg_ipt.size());
  for (size_t i = 0; i < exp_avg_ipt.size(); ++i) {
    const at::Tensor& a = exp_avg_ipt[i];
    TORCH_CHECK_VALUE(a.defined(), op, ": exp_avg_ipt[", i, "] is undefined (None)");
    TORCH_CHECK_TYPE(a.scalar_type() == at::kFloat || a.scalar_type() == at::kDouble, op, ": exp_avg_ipt[", i,
                     "] must be float32 or float64, got ", a.scalar_type());
    TORCH_CHECK_VALUE(a.is_contiguous(), op, ": exp_avg_ipt[", i, "] must be contiguous");
    checks::same_device(op, "exp_avg_ipt", i, a, exp_avg_ipt[0].device());
    checks::state_of(op, "exp_avg_unc", i, exp_avg_unc[i], "exp_avg_ipt", a);
    const int64_t d = mean_dims[i];
    TORCH_CHECK_VALUE(d == -1 || d == 0 || d == 1, op, ": mean_dims[", i, "] must be -1 (none), 0 or 1, got ", d);
    TORCH_CHECK_VALUE(d == -1 || a.dim() == 2, op, ": mean_dims[", i, "] = ", d,
                      " needs a 2-D tensor, got shape ", a.sizes());
  }
}

// importance_score's outputs: element scores keep the shape, a mean drops the averaged dim.
inline std::vector<at::Tensor> score_outputs(at::TensorList exp_avg_ipt, at::IntArrayRef mean_dims) {
  std::vector<at::Tensor> out;
  for (size_t i = 0; i < exp_avg_ipt.size(); ++i) {
    const at::Tensor& t = exp_avg_ipt[i];
    const std::vector<int64_t> shape = mean_dims[i] == -1 ? t.sizes().vec() : std::vector<int64_t>{t.size(1 - mean_dims[i])};
    out.push_back(at::empty(shape, t.options()));
  }
  return out;
}

}  // namespace winnow::importance

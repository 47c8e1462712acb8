#pragma once
// oba_score_accumulate: OBA's per-parameter score epilogue, s += theta * (H theta), read in the
// parameters' dtype and accumulated in float64 (scores are averaged over batches, and a float32
// product of two small numbers loses the digits a global threshold compares). One call covers
// every parameter. Shared by csrc/cpu/oba_score_accumulate.cpp and csrc/cuda/oba_score_accumulate.cu.
#include <cstdint>

#include "winnow/macros.h"

namespace winnow::oba {

template <typename T>
WINNOW_HD void accumulate(double& score, T theta, T h_theta) {
  score += static_cast<double>(theta) * static_cast<double>(h_theta);
}

}  // namespace winnow::oba

// ---- host side: validation shared by both backends ----
#include "winnow/checks.h"

namespace winnow::oba {

inline void check_accumulate(at::TensorList thetas, at::TensorList h_thetas, at::TensorList scores) {
  const char* op = "oba_score_accumulate";
  checks::nonempty(op, "thetas", thetas.size());
  checks::same_length(op, "h_thetas", h_thetas.size(), "thetas", thetas.size());
  checks::same_length(op, "scores", scores.size(), "thetas", thetas.size());
  const at::Device device = thetas[0].device();
  for (size_t i = 0; i < thetas.size(); ++i) {
    checks::float_input(op, "thetas", i, thetas[i]);
    checks::float_input(op, "h_thetas", i, h_thetas[i]);
    checks::same_device(op, "thetas", i, thetas[i], device);
    checks::matches(op, "h_thetas", i, h_thetas[i], "thetas", thetas[i]);
    TORCH_CHECK_TYPE(h_thetas[i].scalar_type() == thetas[i].scalar_type(), op, ": h_thetas[", i, "] is ",
                     h_thetas[i].scalar_type(), " but thetas[", i, "] is ", thetas[i].scalar_type());
    TORCH_CHECK_VALUE(scores[i].defined(), op, ": scores[", i, "] is undefined (None)");
    TORCH_CHECK_TYPE(scores[i].scalar_type() == at::kDouble, op, ": scores[", i, "] must be float64, got ",
                     scores[i].scalar_type());
    checks::matches(op, "scores", i, scores[i], "thetas", thetas[i]);
    TORCH_CHECK_VALUE(scores[i].is_contiguous(), op, ": scores[", i, "] must be contiguous (it is written in place)");
  }
}

}  // namespace winnow::oba

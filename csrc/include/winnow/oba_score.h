#pragma once
// oba_score_accumulate: OBA's per-parameter score epilogue, s += theta * (H theta), read in the
// parameters' dtype and accumulated in float64 (scores are averaged over batches, and a float32
// product of two small numbers loses the digits a global threshold compares). One call covers
// every parameter. Shared by csrc/cpu/oba_score.cpp and csrc/cuda/oba_score.cu.
//
// oba_channel_sums: the segmented sums that turn a weight's float64 scores, viewed as
// (A, B, K) = (dim 0, dim 1, the rest), into per-structure scores in one call:
//   rows[a] = sum over b, k of s[a, b, k]                       (Conv/Linear: output channels)
//   cols[g * B + b] = sum over a in group g, k of s[a, b, k]      (input channels)
// With G groups, dim 0 splits into G equal groups and group g's dim 1 is its own slice of
// input channels, so cols has G * B entries (a grouped conv's in_channels). A transposed conv
// stores (in, out / G, k): the same op gives per-input rows and per-output cols.
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

// oba_channel_sums' view of scores: (A, B, K), K the product of the trailing dims.
struct ChannelShape {
  int64_t a, b, k;
};

inline ChannelShape channel_shape(const at::Tensor& scores) {
  int64_t k = 1;
  for (int64_t d = 2; d < scores.dim(); ++d) k *= scores.size(d);
  return {scores.size(0), scores.size(1), k};
}

inline void check_channel_sums(const at::Tensor& scores, int64_t groups) {
  const char* op = "oba_channel_sums";
  TORCH_CHECK_VALUE(scores.defined(), op, ": scores is undefined (None)");
  TORCH_CHECK_TYPE(scores.layout() == at::kStrided, op, ": scores must be a dense tensor");
  TORCH_CHECK_TYPE(scores.scalar_type() == at::kDouble, op, ": scores must be float64, got ", scores.scalar_type());
  TORCH_CHECK_VALUE(scores.dim() >= 2, op, ": scores must have at least 2 dims (rows, columns, ...), got shape ",
                    scores.sizes());
  TORCH_CHECK_VALUE(groups >= 1, op, ": groups must be >= 1, got ", groups);
  TORCH_CHECK_VALUE(scores.size(0) % groups == 0, op, ": dim 0 of scores (", scores.size(0),
                    ") must be divisible by groups (", groups, ")");
}

}  // namespace winnow::oba

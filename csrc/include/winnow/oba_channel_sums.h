#pragma once
// oba_channel_sums: the segmented sums that turn a weight's float64 OBA scores, viewed as
// (A, B, K) = (dim 0, dim 1, the rest), into per-structure scores in one call:
//   rows[a] = sum over b, k of s[a, b, k]                       (Conv/Linear: output channels)
//   cols[g * B + b] = sum over a in group g, k of s[a, b, k]      (input channels)
// With G groups, dim 0 splits into G equal groups and group g's dim 1 is its own slice of
// input channels, so cols has G * B entries (a grouped conv's in_channels). A transposed conv
// stores (in, out / G, k): the same op gives per-input rows and per-output cols. Each sum runs in
// a fixed order (deterministic); the order differs between csrc/cpu/oba_channel_sums.cpp and
// csrc/cuda/oba_channel_sums.cu (which reads coalesced), so they agree to rounding.
#include <cstdint>

#include "winnow/checks.h"

namespace winnow::oba {

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

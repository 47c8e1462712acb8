#pragma once
// masked_topk: the global top-k over the still-masked entries of a list of score tensors,
// without concatenating them (ID3's selection step). Radix select on the order keys of
// winnow/order_key.h (-0 == +0, NaN below every number); ties at the k-th key go to the lowest
// (tensor, element) index, so the result is deterministic. When fewer than k entries are still
// masked, all of them are returned. Shared by csrc/cpu/masked_topk.cpp and
// csrc/cuda/masked_topk.cu (csrc/masked_topk_aten.cpp composes the same rule from ATen ops).
#include <cstdint>

#include "winnow/macros.h"
#include "winnow/order_key.h"

namespace winnow::topk {

constexpr int kDigitBits = 11;
constexpr int kBins = 1 << kDigitBits;

// Digit `pass` (0 = most significant) of a key with `bits` bits.
template <typename key_t>
WINNOW_HD int digit(key_t key, int pass, int bits) {
  const int shift = bits - (pass + 1) * kDigitBits;
  return shift >= 0 ? static_cast<int>((key >> shift) & (kBins - 1))
                    : static_cast<int>((key << -shift) & (kBins - 1));
}

// Does `key` share the `pass` most significant digits with `prefix`?
template <typename key_t>
WINNOW_HD bool has_prefix(key_t key, key_t prefix, int pass, int bits) {
  const int known = pass * kDigitBits;
  if (known == 0) return true;
  const int shift = bits - known;
  return shift <= 0 ? key == prefix : (key >> shift) == (prefix >> shift);
}

// `prefix` with digit `pass` set to d (its lower digits are still zero).
template <typename key_t>
WINNOW_HD key_t with_digit(key_t prefix, int d, int pass, int bits) {
  const int shift = bits - (pass + 1) * kDigitBits;
  return prefix | (shift >= 0 ? (static_cast<key_t>(d) << shift) : (static_cast<key_t>(d) >> -shift));
}

template <typename key_t>
constexpr int num_passes() {
  return (8 * static_cast<int>(sizeof(key_t)) + kDigitBits - 1) / kDigitBits;
}

}  // namespace winnow::topk

// ---- host side: validation shared by the backends ----
#include <vector>

#include <ATen/ops/empty.h>

#include "winnow/checks.h"

namespace winnow::topk {

inline void check_topk(at::TensorList scores, at::TensorList unmasked, int64_t k) {
  const char* op = "masked_topk";
  checks::nonempty(op, "scores", scores.size());
  const at::Device device = scores[0].device();
  const at::ScalarType dtype = scores[0].scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble, op, ": scores must be float32 or float64, got ", dtype);
  int64_t total = 0;
  for (size_t i = 0; i < scores.size(); ++i) {
    TORCH_CHECK_TYPE(scores[i].scalar_type() == dtype, op, ": scores[", i, "] has dtype ", scores[i].scalar_type(),
                     " but scores[0] has ", dtype, " (one dtype per call)");
    checks::same_device(op, "scores", i, scores[i], device);
    TORCH_CHECK_VALUE(scores[i].is_contiguous(), op, ": scores[", i, "] must be contiguous");
    total += scores[i].numel();
  }
  checks::optional_masks(op, "unmasked", unmasked, "scores", scores);
  TORCH_CHECK_VALUE(k >= 0 && k <= total, op, ": k must be in [0, ", total, "], got ", k);
}

// k == 0: an empty int64 index tensor per input, on its device, without scanning anything.
inline std::vector<at::Tensor> nothing_selected(at::TensorList like) {
  std::vector<at::Tensor> out;
  for (const auto& t : like) out.push_back(at::empty({0}, t.options().dtype(at::kLong)));
  return out;
}

}  // namespace winnow::topk

// ---- _masked_topk_id3: ID3's selection from (param, grad) without a score buffer (CPU) ----
#include <cmath>

namespace winnow::topk {

struct Id3Inputs {
  std::vector<at::Tensor> grads;  // contiguous
};

inline Id3Inputs check_topk_id3(at::TensorList params, at::TensorList grads, at::TensorList unmasked, int64_t k,
                                double eps, double exponent) {
  const char* op = "_masked_topk_id3";
  checks::nonempty(op, "params", params.size());
  checks::same_length(op, "grads", grads.size(), "params", params.size());
  const at::Device device = params[0].device();
  const bool wide = params[0].defined() && params[0].scalar_type() == at::kDouble;
  int64_t total = 0;
  Id3Inputs in;
  for (size_t i = 0; i < params.size(); ++i) {
    checks::float_input(op, "params", i, params[i]);
    checks::float_input(op, "grads", i, grads[i]);
    checks::same_device(op, "params", i, params[i], device);
    checks::matches(op, "grads", i, grads[i], "params", params[i]);
    TORCH_CHECK_TYPE(grads[i].scalar_type() == params[i].scalar_type(), op, ": grads[", i, "] has dtype ",
                     grads[i].scalar_type(), " but params[", i, "] has dtype ", params[i].scalar_type());
    TORCH_CHECK_TYPE((params[i].scalar_type() == at::kDouble) == wide, op, ": params[", i, "] is ",
                     params[i].scalar_type(), " but params[0] is ", params[0].scalar_type(),
                     " (float64 parameters cannot share a call with narrower ones: one key width per call)");
    TORCH_CHECK_VALUE(params[i].is_contiguous(), op, ": params[", i, "] must be contiguous");
    in.grads.push_back(grads[i].contiguous());
    total += params[i].numel();
  }
  checks::optional_masks(op, "unmasked", unmasked, "params", params);
  TORCH_CHECK_VALUE(k >= 0 && k <= total, op, ": k must be in [0, ", total, "], got ", k);
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0.0, op, ": eps must be finite and >= 0, got ", eps);
  TORCH_CHECK_VALUE(std::isfinite(exponent), op, ": exponent must be finite, got ", exponent);
  return in;
}

}  // namespace winnow::topk

#pragma once
// masked_topk: the global top-k over the still-masked entries of a list of score tensors,
// without concatenating them (ID3's selection step). Radix select on order-preserving integer
// keys of the scores; ties at the k-th value go to the lowest (tensor, element) index, so the
// result is deterministic. Shared by csrc/cpu/masked_topk.cpp (and a CUDA launcher).
#include <cstdint>

#include "winnow/macros.h"

namespace winnow::topk {

// Unsigned key with the same order as the float: flip all bits of negatives, set the sign bit
// of positives. NaN gets key 0, below every number (never preferred).
// Branch-free so that CPU loops vectorise.
WINNOW_HD uint32_t bits_of(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  return __builtin_bit_cast(uint32_t, x);  // (memcpy defeats GCC's vectoriser here)
#endif
}

WINNOW_HD uint64_t bits_of(double x) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint64_t>(__double_as_longlong(x));
#else
  return __builtin_bit_cast(uint64_t, x);
#endif
}

WINNOW_HD uint32_t order_key(float x) {
  const uint32_t b = bits_of(x);
  const uint32_t flip = static_cast<uint32_t>(static_cast<int32_t>(b) >> 31) | 0x80000000u;
  const bool nan = (b & 0x7fffffffu) > 0x7f800000u;  // integer test: keeps the loop integer-only
  return nan ? 0u : (b ^ flip);
}

WINNOW_HD uint64_t order_key(double x) {
  const uint64_t b = bits_of(x);
  const uint64_t flip = static_cast<uint64_t>(static_cast<int64_t>(b) >> 63) | 0x8000000000000000ull;
  const bool nan = (b & 0x7fffffffffffffffull) > 0x7ff0000000000000ull;
  return nan ? 0ull : (b ^ flip);
}

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

}  // namespace winnow::topk

// ---- host side: validation shared by the backends ----
#include <vector>

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

}  // namespace winnow::topk

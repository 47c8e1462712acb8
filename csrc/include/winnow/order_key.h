#pragma once
// The one ranking rule of every selection in winnow (masked_topk, rank_prune; the Python
// references follow it too): scores are compared as numbers, -0 == +0, and NaN ranks below every
// number, -inf included. Ties are broken by position by each op. Scores are turned into unsigned
// integer keys with that order, so a selection is an integer radix select / nth_element.
// Branch-free, so that CPU loops vectorise; shared by the CPU and CUDA launchers.
#include <cstdint>

#include "winnow/macros.h"

namespace winnow {

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

// Flip all bits of negatives and set the sign bit of positives: the unsigned order is then the
// numeric order. -0 is read as +0 first; NaN (any sign or payload) gets key 0, below -inf's.
WINNOW_HD uint32_t order_key(float x) {
  const uint32_t b = bits_of(x + 0.0f);  // -0 + 0 = +0 (round to nearest); every other x is kept
  const uint32_t flip = static_cast<uint32_t>(static_cast<int32_t>(b) >> 31) | 0x80000000u;
  const bool nan = (b & 0x7fffffffu) > 0x7f800000u;  // integer test: keeps the loop integer-only
  return nan ? 0u : (b ^ flip);
}

WINNOW_HD uint64_t order_key(double x) {
  const uint64_t b = bits_of(x + 0.0);
  const uint64_t flip = static_cast<uint64_t>(static_cast<int64_t>(b) >> 63) | 0x8000000000000000ull;
  const bool nan = (b & 0x7fffffffffffffffull) > 0x7ff0000000000000ull;
  return nan ? 0ull : (b ^ flip);
}

// The number a key stands for (order_key's inverse; NaN's key gives a NaN, -0 came back as +0).
WINNOW_HD float value_of_key(uint32_t key) {
  const uint32_t b = (key & 0x80000000u) ? (key ^ 0x80000000u) : ~key;
#if defined(__CUDA_ARCH__)
  return __uint_as_float(b);
#else
  return __builtin_bit_cast(float, b);
#endif
}

WINNOW_HD double value_of_key(uint64_t key) {
  const uint64_t b = (key & 0x8000000000000000ull) ? (key ^ 0x8000000000000000ull) : ~key;
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(static_cast<long long>(b));
#else
  return __builtin_bit_cast(double, b);
#endif
}

// The same order as a signed 64-bit integer, for selections done with ATen's integer ops.
WINNOW_HD int64_t signed_order_key(float x) { return static_cast<int64_t>(order_key(x)); }
WINNOW_HD int64_t signed_order_key(double x) {
  return static_cast<int64_t>(order_key(x) ^ 0x8000000000000000ull);
}

}  // namespace winnow

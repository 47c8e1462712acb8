// masked_topk's tile scans, compiled once per instruction set (csrc/cpu/isa.h); AVX2 and AVX-512
// have the unsigned max they reduce with.
#include "topk_kernel.h"

#include <ATen/OpMathType.h>

#include <algorithm>

#include "winnow/importance_update.h"
#include "winnow/order_key.h"

namespace winnow::cpu {
namespace {

// Two loops through the caller's L1 buffer: GCC vectorises each, not the fused one (measured 5x
// slower when the keys are not stored).
template <typename key_t>
key_t max_key(const key_t* __restrict keys, int64_t len) {
  key_t top = 0;
  for (int64_t j = 0; j < len; ++j) top = keys[j] > top ? keys[j] : top;
  return top;
}

template <typename scalar_t, typename key_t>
key_t tile_keys(const scalar_t* __restrict s, int64_t len, key_t* __restrict keys) {
  for (int64_t j = 0; j < len; ++j) keys[j] = order_key(s[j]);
  return max_key(keys, len);
}

template <importance::Exponent E, typename scalar_t, typename acc_t, typename key_t>
void id3_keys(const scalar_t* __restrict p, const scalar_t* __restrict g, const bool* __restrict skip, int64_t len,
              const importance::Id3Coeffs<acc_t> c, key_t* __restrict keys) {
  for (int64_t j = 0; j < len; ++j) {
    const acc_t h = importance::id3_importance<E>(static_cast<acc_t>(p[j]), static_cast<acc_t>(g[j]), c);
    keys[j] = order_key(is_finite(h) ? h : acc_t(0));
  }
  if (skip != nullptr) {
    const auto* done = reinterpret_cast<const uint8_t*>(skip);
    for (int64_t j = 0; j < len; ++j) keys[j] = done[j] ? key_t(0) : keys[j];
  }
}

// True when every H of the tile is at most `cut` for certain: |g| <= cut, or for exponent 1
// |g| <= cut' * (|p| + eps) with cut' a 2^-20 (double: 2^-49) relative margin below cut, more
// than the two roundings apart (H's divide, the test's multiply), so fl(H) <= cut. A multiply and
// a compare per entry instead of a divide and a key; a NaN fails the test (the tile is keyed).
// With `skip` (the unmasked flags of the tile), its unmasked entries count as at most `cut`: late
// in ID3 most tiles hold an unmasked entry, whose H is high (that is why it was unmasked), and
// would otherwise be keyed only to have that entry dropped.
template <importance::Exponent E, typename scalar_t, typename acc_t>
bool id3_tile_at_most(const scalar_t* __restrict p, const scalar_t* __restrict g, int64_t len,
                      const importance::Id3Coeffs<acc_t> c, acc_t cut, const bool* __restrict skip = nullptr) {
  int all = 1;  // an AND over the tile, not an early exit: the loop vectorises
  const auto* done = reinterpret_cast<const uint8_t*>(skip);
  const acc_t margin = sizeof(acc_t) == 4 ? acc_t(1.0 / (1 << 20)) : acc_t(1.0 / (int64_t{1} << 49));
  const acc_t bound = cut * (acc_t(1) - margin);
  auto at_most = [&](int64_t j) -> int {
    if constexpr (E == importance::Exponent::Zero) {
      return abs_value(static_cast<acc_t>(g[j])) <= cut;
    } else {
      return abs_value(static_cast<acc_t>(g[j])) <= bound * (abs_value(static_cast<acc_t>(p[j])) + c.eps);
    }
  };
  if (done == nullptr) {
    for (int64_t j = 0; j < len; ++j) all &= at_most(j);
  } else {
    for (int64_t j = 0; j < len; ++j) all &= at_most(j) | static_cast<int>(done[j] != 0);
  }
  return all != 0;
}

constexpr int64_t kAheadBytes = 8192;  // software prefetch distance of the flag scan, per operand

void tiles_at_most(const Id3Tile& r, uint8_t* flags) {
  const int64_t tiles = (r.len + kTopkTile - 1) / kTopkTile;
  std::fill(flags, flags + tiles, uint8_t{0});
  WINNOW_ISA_DISPATCH_FLOATING_WITH_HALF(r.dtype, [&] {
    using acc_t = at::opmath_type<scalar_t>;
    importance::dispatch_exponent(r.exponent, [&](auto kind) {
      constexpr importance::Exponent E = decltype(kind)::value;
      if constexpr (E != importance::Exponent::General) {
        const auto* p = static_cast<const scalar_t*>(r.param);
        const auto* g = static_cast<const scalar_t*>(r.grad);
        const auto c = importance::id3_coeffs<acc_t>(r.eps, r.exponent, 0.0);
        const auto cut = static_cast<acc_t>(r.cut);
        // tile by tile, in order: one stream per operand, which the hardware prefetchers follow
        // best (4 stretches of the range read side by side, 8 streams, cost 15-20% more on an
        // AVX-512 AMD EPYC: a 32k chunk cut in 4 makes short streams the prefetchers ramp up for).
        // Each tile's lines are also prefetched kAheadBytes ahead: the hardware alone keeps too
        // few lines in flight (a two-stream read on 2 threads of a Xeon: 20 GB/s, 27 with this).
        constexpr int64_t kLine = 64 / sizeof(scalar_t), kAhead = kAheadBytes / sizeof(scalar_t);
        for (int64_t tile = 0; tile < tiles; ++tile) {
          const int64_t b = tile * kTopkTile;
          for (int64_t e = b + kAhead; e < std::min(r.len, b + kAhead + kTopkTile); e += kLine) {
            __builtin_prefetch(p + e, 0);
            __builtin_prefetch(g + e, 0);
          }
          flags[tile] = id3_tile_at_most<E>(p + b, g + b, std::min(kTopkTile, r.len - b), c, cut);
        }
      }
    });
  });
}

template <typename key_t>
key_t id3_tile_keys(const Id3Tile& t, key_t* keys) {
  bool skipped = false;
  WINNOW_ISA_DISPATCH_FLOATING_WITH_HALF(t.dtype, [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if constexpr (sizeof(acc_t) == sizeof(key_t)) {  // the launcher pairs float keys with float math
      importance::dispatch_exponent(t.exponent, [&](auto kind) {
        constexpr importance::Exponent E = decltype(kind)::value;
        const auto* p = static_cast<const scalar_t*>(t.param);
        const auto* g = static_cast<const scalar_t*>(t.grad);
        const auto c = importance::id3_coeffs<acc_t>(t.eps, t.exponent, 0.0);
        if constexpr (E != importance::Exponent::General) {
          if (t.above && id3_tile_at_most<E>(p, g, t.len, c, static_cast<acc_t>(t.cut), t.skip)) {
            skipped = true;
            return;
          }
        }
        id3_keys<E>(p, g, t.skip, t.len, c, keys);
      });
    }
  });
  return skipped ? key_t(0) : max_key(keys, t.len);
}

WINNOW_REGISTER_ISA_KERNEL(tile_keys_float, (&tile_keys<float, uint32_t>));
WINNOW_REGISTER_ISA_KERNEL(tile_keys_double, (&tile_keys<double, uint64_t>));
WINNOW_REGISTER_ISA_KERNEL(id3_tile_keys_float, (&id3_tile_keys<uint32_t>));
WINNOW_REGISTER_ISA_KERNEL(id3_tile_keys_double, (&id3_tile_keys<uint64_t>));
WINNOW_REGISTER_ISA_KERNEL(id3_tiles_at_most, &tiles_at_most);

}  // namespace
}  // namespace winnow::cpu

// masked_topk's tile scan, compiled once per instruction set (csrc/cpu/isa.h); AVX2 and AVX-512
// have the unsigned max it reduces with.
#include "topk_kernel.h"

#include "winnow/order_key.h"

namespace winnow::cpu {
namespace {

constexpr int64_t kMaxTile = 256;  // masked_topk's tile

template <typename scalar_t, typename key_t>
key_t tile_max_key(const scalar_t* __restrict s, int64_t len) {
  // Two loops through an L1 buffer: GCC vectorises each, not the fused one (measured 5x slower).
  key_t keys[kMaxTile];
  len = len < kMaxTile ? len : kMaxTile;
  for (int64_t j = 0; j < len; ++j) keys[j] = order_key(s[j]);
  key_t top = 0;
  for (int64_t j = 0; j < len; ++j) top = keys[j] > top ? keys[j] : top;
  return top;
}

WINNOW_REGISTER_ISA_KERNEL(tile_max_key_float, (&tile_max_key<float, uint32_t>));
WINNOW_REGISTER_ISA_KERNEL(tile_max_key_double, (&tile_max_key<double, uint64_t>));

}  // namespace
}  // namespace winnow::cpu

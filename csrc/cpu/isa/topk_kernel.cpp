// masked_topk's tile scan, compiled once per instruction set (csrc/cpu/isa.h); AVX2 and AVX-512
// have the unsigned max it reduces with.
#include "topk_kernel.h"

#include "winnow/order_key.h"

namespace winnow::cpu {
namespace {

template <typename scalar_t, typename key_t>
key_t tile_keys(const scalar_t* __restrict s, int64_t len, key_t* __restrict keys) {
  // Two loops: GCC vectorises each, not the fused one (it rejects the store + reduction mix).
  for (int64_t j = 0; j < len; ++j) keys[j] = order_key(s[j]);
  key_t top = 0;
  for (int64_t j = 0; j < len; ++j) top = keys[j] > top ? keys[j] : top;
  return top;
}

WINNOW_REGISTER_ISA_KERNEL(tile_keys_float, (&tile_keys<float, uint32_t>));
WINNOW_REGISTER_ISA_KERNEL(tile_keys_double, (&tile_keys<double, uint64_t>));

}  // namespace
}  // namespace winnow::cpu

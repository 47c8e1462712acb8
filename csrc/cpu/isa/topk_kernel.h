#pragma once
// Per-instruction-set entry point (csrc/cpu/isa.h) of masked_topk's scan: the order keys of a tile
// of scores (winnow/order_key.h) and their maximum, for float and for double scores.
#include <cstdint>

#include "../isa.h"

namespace winnow::cpu {

extern Stub<uint32_t (*)(const float* scores, int64_t len, uint32_t* keys)> tile_keys_float;
extern Stub<uint64_t (*)(const double* scores, int64_t len, uint64_t* keys)> tile_keys_double;

// The stub for scores of type T.
template <typename T>
const auto& tile_keys_stub() {
  if constexpr (sizeof(T) == 4) {
    return tile_keys_float;
  } else {
    return tile_keys_double;
  }
}

}  // namespace winnow::cpu

#pragma once
// Per-instruction-set entry point (csrc/cpu/isa.h) of masked_topk's scan: the largest order key
// (winnow/order_key.h) of a tile of at most 256 scores, for float and for double scores.
#include <cstdint>

#include "../isa.h"

namespace winnow::cpu {

extern Stub<uint32_t (*)(const float* scores, int64_t len)> tile_max_key_float;
extern Stub<uint64_t (*)(const double* scores, int64_t len)> tile_max_key_double;

// The stub for scores of type T.
template <typename T>
const auto& tile_max_key_stub() {
  if constexpr (sizeof(T) == 4) {
    return tile_max_key_float;
  } else {
    return tile_max_key_double;
  }
}

}  // namespace winnow::cpu

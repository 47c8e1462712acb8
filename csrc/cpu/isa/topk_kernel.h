#pragma once
// Per-instruction-set entry points (csrc/cpu/isa.h) of masked_topk's scan: the order keys
// (winnow/order_key.h) of a tile of at most kTopkTile entries and their maximum, from scores, or
// from ID3's importance H computed on the fly from (param, grad) (_masked_topk_id3).
#include <c10/core/ScalarType.h>

#include <cstdint>

#include "../isa.h"

namespace winnow::cpu {

constexpr int64_t kTopkTile = 256;

extern Stub<uint32_t (*)(const float* scores, int64_t len, uint32_t* keys)> tile_keys_float;
extern Stub<uint64_t (*)(const double* scores, int64_t len, uint64_t* keys)> tile_keys_double;

// H = |g| / (|p| + eps)^exponent of `len` elements in the op-math type of `dtype` (float keys
// for float, half and bfloat16 parameters, double keys for double ones); a non-finite H counts
// as 0 (as if the gradient were zero); an entry with skip[j] set (already unmasked) gets NaN's
// key, the lowest. With `above` set, a tile whose every H is provably at most `cut` (the
// selection's k-th best so far) may return without keys, its maximum reported as 0.
struct Id3Tile {
  c10::ScalarType dtype;
  const void *param, *grad;
  const bool* skip;  // or null
  int64_t len;
  double eps, exponent;
  bool above;
  double cut;
};

extern Stub<uint32_t (*)(const Id3Tile& tile, uint32_t* keys)> id3_tile_keys_float;
extern Stub<uint64_t (*)(const Id3Tile& tile, uint64_t* keys)> id3_tile_keys_double;

// The prefilter of id3_tile_keys for every tile of a longer range (`range.len` entries from
// `range.param` / `range.grad`, cut into tiles of kTopkTile; `above` and `skip` unused):
// flags[i] = 1 when every H of tile i is provably at most `range.cut`, else 0 (always 0 for a
// general exponent). One call per range instead of one per tile: the range is read in order.
extern Stub<void (*)(const Id3Tile& range, uint8_t* flags)> id3_tiles_at_most;

// The stubs for keys of type K.
template <typename K>
const auto& tile_keys_stub() {
  if constexpr (sizeof(K) == 4) {
    return tile_keys_float;
  } else {
    return tile_keys_double;
  }
}
template <typename K>
const auto& id3_tile_keys_stub() {
  if constexpr (sizeof(K) == 4) {
    return id3_tile_keys_float;
  } else {
    return id3_tile_keys_double;
  }
}

}  // namespace winnow::cpu

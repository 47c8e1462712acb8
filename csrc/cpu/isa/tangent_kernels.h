#pragma once
// Per-instruction-set entry points (csrc/cpu/isa.h) of the fast H-theta path's elementwise ops:
// act_tangent / act_tangent_backward on a range of elements, softmax_tangent(_backward) on a
// range of rows. The launchers (csrc/cpu/act_tangent.cpp, softmax_tangent.cpp) share the ranges
// out among the threads.
#include <c10/core/ScalarType.h>

#include <cstdint>

#include "../isa.h"

namespace winnow::cpu {

// Forward reads (z, dz) and writes (y, dy); backward reads (z, dz, gy, gdy), writes (gz, gdz).
struct ActRange {
  c10::ScalarType dtype;
  int kind;  // winnow::act::Kind
  bool backward;
  const void* in[4];
  void* out[2];
  int64_t begin, end;
};

// Forward reads (p, ds) and writes dp to out[0]; backward reads (p, ds, g), writes (gp, gds).
struct SoftmaxRows {
  c10::ScalarType dtype;
  bool backward;
  const void *p, *ds, *g;
  void* out[2];
  int64_t n;           // row length (the softmax dim)
  int64_t begin, end;  // rows
};

extern Stub<void (*)(const ActRange&)> act_tangent_range;
extern Stub<void (*)(const SoftmaxRows&)> softmax_tangent_rows;

}  // namespace winnow::cpu

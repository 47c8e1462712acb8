#pragma once
// Per-instruction-set entry point of masked_adamw_step's CPU loop (csrc/cpu/isa.h): one chunk
// of one tensor's compact state, [begin, end), with its blocks' parameter and gradient elements.
#include <c10/core/ScalarType.h>

#include <cstdint>

#include "../isa.h"
#include "winnow/masked_adamw_step.h"

namespace winnow::cpu {

struct AdamwChunk {
  c10::ScalarType dtype;           // params and grads; the state is its op-math type
  void* param;
  const void* grad;
  void *exp_avg, *exp_avg_sq, *max_exp_avg_sq;  // compact; max_exp_avg_sq is null without amsgrad
  const int64_t* blocks;           // active block indices
  int32_t* steps;                  // their step counts before this step: the chunk counts its blocks' step
  int64_t block_size, numel;       // numel of the parameter (its last block may be partial)
  int64_t begin, end;              // compact slots of this chunk, whole blocks
  double lr, beta1, beta2, weight_decay, eps, grad_scale;
  bool amsgrad, maximize;
  // The step's per-block coefficients of steps first_step .. first_step + table_size - 1, computed
  // once for the whole call (table_size 0: none, the loop computes them).
  const adamw::BlockCoeffs<double>* table;
  int32_t first_step;
  int64_t table_size;
};

extern Stub<void (*)(const AdamwChunk&)> masked_adamw_chunk;

}  // namespace winnow::cpu

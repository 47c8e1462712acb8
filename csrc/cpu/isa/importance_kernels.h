#pragma once
// Per-instruction-set entry points (csrc/cpu/isa.h) of the elementwise importance loops: the
// AdaLoRA and ID3 statistics (importance_update), AdaLoRA's element score and its means
// (importance_score), and OBA's score epilogue (oba_score_accumulate). Each covers one range of
// one tensor; the launchers share the ranges of all tensors out among the threads.
#include <c10/core/ScalarType.h>

#include <cstdint>

#include "../isa.h"

namespace winnow::cpu {

// importance_update, AdaLoRA mode: n elements; returns how many were skipped as non-finite.
struct AdaloraRange {
  c10::ScalarType dtype;  // params and grads; the statistics are its op-math type
  const void *param, *grad;
  void *exp_avg_ipt, *exp_avg_unc;
  int64_t n;
  double beta1, beta2;
};

// importance_update, ID3 mode: n elements, `unmasked` (or null) marks the ones left alone.
struct Id3Range {
  c10::ScalarType dtype;
  const void *param, *grad;
  void* score;
  const bool* unmasked;
  int64_t n;
  double eps, exponent, beta;
};

// importance_score: element scores Ibar * Ubar of `n` elements (mean_dim -1), or outputs
// [begin, end) of their mean over dim `mean_dim` (0 or 1) of a rows x cols tensor.
struct ScoreRange {
  c10::ScalarType dtype;  // float or double
  const void *exp_avg_ipt, *exp_avg_unc;
  void* out;
  int64_t mean_dim, rows, cols, begin, end;
};

// oba_score_accumulate: score[i] += theta[i] * h_theta[i] in double, i in [begin, end).
struct ObaRange {
  c10::ScalarType dtype;
  const void *theta, *h_theta;
  double* score;
  int64_t begin, end;
};

extern Stub<int64_t (*)(const AdaloraRange&)> adalora_update_range;
extern Stub<int64_t (*)(const Id3Range&)> id3_update_range;
extern Stub<void (*)(const ScoreRange&)> importance_score_range;
extern Stub<void (*)(const ObaRange&)> oba_accumulate_range;

}  // namespace winnow::cpu

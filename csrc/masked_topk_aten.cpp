// masked_topk composed from ATen ops: the portable path for devices without a hand-written
// kernel (winnow.ops.masked_topk uses it there), registered as winnow::_masked_topk_aten on
// every backend so that the CPU tests check it too. Same contract as csrc/cpu/masked_topk.cpp
// and csrc/cuda/masked_topk.cu: every score becomes a signed 64-bit key with the order of
// winnow/order_key.h (-0 == +0, NaN below -inf), masked entries get a key below every other;
// the k-th best key v* comes from per-tensor top-k candidates (no dense concatenation); then
// every entry above v* is taken, plus the first entries equal to v* in (tensor, index) order.
// One host sync (the per-tensor counts).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <tuple>

#include "winnow/masked_topk.h"

namespace winnow::topk {
namespace {

constexpr int64_t kMaskedKey = std::numeric_limits<int64_t>::min();
constexpr int64_t kNanKey = kMaskedKey + 1;  // no number maps to it (only NaN bit patterns would)

// Signed keys with the numeric order: the integer view of a float, its magnitude bits flipped
// when negative (two's complement then orders negatives the right way round).
at::Tensor order_keys(const at::Tensor& scores, const at::Tensor& unmasked) {
  const at::Tensor s = scores.reshape({-1});
  const bool is_double = s.scalar_type() == at::kDouble;
  at::Tensor bits = is_double ? s.view(at::kLong) : s.view(at::kInt).to(at::kLong);
  const int64_t magnitude = is_double ? std::numeric_limits<int64_t>::max() : std::numeric_limits<int32_t>::max();
  at::Tensor key = at::where(bits.lt(0), bits.bitwise_xor(magnitude), bits);
  key.masked_fill_(key.eq(-1), 0);  // -0 (the only value whose key is -1) ranks as +0
  key.masked_fill_(at::isnan(s), kNanKey);
  if (unmasked.defined()) key.masked_fill_(unmasked.reshape({-1}), kMaskedKey);
  return key;
}

std::vector<at::Tensor> masked_topk_aten(at::TensorList scores, at::TensorList unmasked, int64_t k) {
  check_topk(scores, unmasked, k);
  if (k == 0) return nothing_selected(scores);
  const size_t n = scores.size();
  std::vector<at::Tensor> out(n);
  std::vector<at::Tensor> keys(n), candidates;
  for (size_t t = 0; t < n; ++t) {
    keys[t] = order_keys(scores[t], unmasked.empty() ? at::Tensor() : unmasked[t]);
    const int64_t kt = std::min<int64_t>(k, keys[t].numel());
    if (kt > 0) candidates.push_back(std::get<0>(at::topk(keys[t], kt)));
  }
  const at::Tensor cand = at::cat(candidates);
  // v*; when fewer than k entries are masked it is kMaskedKey, and every candidate is above it
  const at::Tensor kth = std::get<0>(at::topk(cand, k)).select(0, -1);
  std::vector<at::Tensor> above(n), equal(n), n_above, n_equal;
  for (size_t t = 0; t < n; ++t) {
    above[t] = keys[t].gt(kth);
    equal[t] = keys[t].eq(kth).logical_and(keys[t].ne(kMaskedKey));
    n_above.push_back(above[t].sum());
    n_equal.push_back(equal[t].sum());
  }
  const at::Tensor na = at::stack(n_above), ne = at::stack(n_equal);
  // Ties go to the lowest (tensor, index): tensor t may take `need - (ties in earlier tensors)`.
  const at::Tensor need = (k - na.sum()).clamp_min(0);
  const at::Tensor before = ne.cumsum(0) - ne;
  const at::Tensor take = at::minimum(ne, (need - before).clamp_min(0));
  const at::Tensor host = at::stack({na + take, take}).cpu();  // the one host synchronisation
  const int64_t* counts = host.const_data_ptr<int64_t>();
  const int64_t* take_cpu = counts + n;
  for (size_t t = 0; t < n; ++t) {
    const int64_t c = counts[t];
    if (c == 0) {
      out[t] = at::empty({0}, scores[t].options().dtype(at::kLong));
      continue;
    }
    const int64_t tk = take_cpu[t];
    at::Tensor pick = above[t];
    if (tk > 0) pick = pick.logical_or(equal[t].logical_and(equal[t].cumsum(0).le(tk)));
    out[t] = at::nonzero_static(pick, c).reshape({-1});
  }
  return out;
}

// _masked_topk_id3 off the CPU (whose kernel is fused, csrc/cpu/masked_topk.cpp): H by the
// backend's own importance_update_id3 (its math, winnow/importance_update.h) into zeroed scores,
// which a non-finite H leaves at 0, then the selection above.
std::vector<at::Tensor> masked_topk_id3_aten(at::TensorList params, at::TensorList grads, at::TensorList unmasked,
                                             int64_t k, double eps, double exponent) {
  check_topk_id3(params, grads, unmasked, k, eps, exponent);
  if (k == 0) return nothing_selected(params);
  static const auto update = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow("winnow::importance_update_id3", "")
                                 .typed<void(at::TensorList, at::TensorList, at::TensorList, at::TensorList, double,
                                             double, double, const at::Tensor&)>();
  std::vector<at::Tensor> scores, flat_scores, flat_masks;
  for (size_t i = 0; i < params.size(); ++i) {
    scores.push_back(at::zeros(params[i].sizes(), params[i].options().dtype(checks::stat_dtype(params[i].scalar_type()))));
    flat_scores.push_back(scores.back().view(-1));
    if (!unmasked.empty()) flat_masks.push_back(unmasked[i].reshape(-1));
  }
  const at::Tensor skipped = at::zeros({static_cast<int64_t>(params.size())}, params[0].options().dtype(at::kLong));
  update.call(params, grads, scores, unmasked, eps, exponent, 0.0, skipped);
  return masked_topk_aten(flat_scores, flat_masks, k);
}

// _masked_topk_id3_from off the CPU: the floor only spares the CPU scan work, so the selection
// above ignores it (same result) and reports no k-th best H (0: the next call has no floor).
std::tuple<std::vector<at::Tensor>, at::Tensor> masked_topk_id3_from_aten(at::TensorList params, at::TensorList grads,
                                                                         at::TensorList unmasked, int64_t k,
                                                                         double eps, double exponent,
                                                                         double at_least) {
  TORCH_CHECK_VALUE(std::isfinite(at_least), "_masked_topk_id3_from: at_least must be finite, got ", at_least);
  return {masked_topk_id3_aten(params, grads, unmasked, k, eps, exponent),
          at::zeros({}, params.empty() ? at::TensorOptions().dtype(at::kDouble)
                                       : params[0].options().dtype(at::kDouble))};
}

}  // namespace

TORCH_LIBRARY_IMPL(winnow, CompositeExplicitAutograd, m) {
  m.impl("_masked_topk_aten", &masked_topk_aten);
  m.impl("_masked_topk_id3", &masked_topk_id3_aten);
  m.impl("_masked_topk_id3_from", &masked_topk_id3_from_aten);
}

}  // namespace winnow::topk

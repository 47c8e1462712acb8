// masked_topk composed from ATen ops, for devices without a hand-written kernel (CUDA today).
// Same contract and tie-breaking as csrc/cpu/masked_topk.cpp: the k-th best value v* is found
// from per-tensor top-k candidates (no dense concatenation); then every masked entry above v*
// is taken, plus the first entries equal to v* in (tensor, index) order. One host sync (the
// per-tensor counts), everything else stays on the device. Also registered as
// winnow::_masked_topk_aten on every backend so that the CPU tests check this path too.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "winnow/masked_topk.h"

namespace winnow::topk {
namespace {

std::vector<at::Tensor> masked_topk_aten(at::TensorList scores, at::TensorList unmasked, int64_t k) {
  check_topk(scores, unmasked, k);
  const size_t n = scores.size();
  const double neg_inf = -std::numeric_limits<double>::infinity();
  std::vector<at::Tensor> flat(n);  // masked-out and NaN entries at -inf: never preferred
  std::vector<at::Tensor> candidates;
  for (size_t t = 0; t < n; ++t) {
    at::Tensor s = scores[t].reshape({-1});
    at::Tensor drop = at::isnan(s);
    if (!unmasked.empty()) drop = drop.logical_or(unmasked[t].reshape({-1}));
    flat[t] = s.masked_fill(drop, neg_inf);
    const int64_t kt = std::min<int64_t>(k, s.numel());
    if (kt > 0) candidates.push_back(std::get<0>(at::topk(flat[t], kt)));
  }
  std::vector<at::Tensor> out(n);
  if (k == 0 || candidates.empty()) {
    for (size_t t = 0; t < n; ++t) out[t] = at::empty({0}, scores[t].options().dtype(at::kLong));
    return out;
  }
  const at::Tensor cand = at::cat(candidates);
  const at::Tensor kth = std::get<0>(at::topk(cand, std::min<int64_t>(k, cand.numel()))).select(0, -1);  // v*
  // Per tensor: entries strictly above v*, and entries equal to v* (finite, i.e. real candidates).
  std::vector<at::Tensor> above(n), equal(n);
  std::vector<at::Tensor> n_above, n_equal;
  for (size_t t = 0; t < n; ++t) {
    above[t] = flat[t].gt(kth);
    equal[t] = flat[t].eq(kth).logical_and(flat[t].gt(neg_inf));
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

}  // namespace

TORCH_LIBRARY_IMPL(winnow, CompositeExplicitAutograd, m) { m.impl("_masked_topk_aten", &masked_topk_aten); }
TORCH_LIBRARY_IMPL(winnow, CUDA, m) { m.impl("masked_topk", &masked_topk_aten); }

}  // namespace winnow::topk

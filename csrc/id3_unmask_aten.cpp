// _id3_unmask: ID3's bookkeeping for one step's newly unmasked elements, for every parameter in
// one call (winnow.ID3.step, one element per unit, unsharded). Composed from ATen ops and
// registered for every backend: the Python loop it replaces cost ~11 ops and ~70 us of
// interpreter per parameter that grew, and a step grows dozens (the ops are the same here,
// without the interpreter between them).
//
// For each parameter t with indices chosen[t] (int64, still masked, into params[t] flattened),
// _id3_unmask returns
//   initial[t]     = params[t].flatten()[chosen[t]]   (the values before this step's update)
//   active_blocks  + chosen[t]; block_steps + 0; exp_avgs / exp_avg_sqs (/ max_exp_avg_sqs) + 0
// (MaskedAdamW's compact state with blocks of one element: the appended slots start fresh), and
// _id3_mark_unmasked sets unmasked[t] True at chosen[t] in place. Two ops, because
// functionalization (torch.compile) takes an op that mutates or one that returns, not both.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "winnow/id3_unmask.h"

namespace winnow::id3 {
namespace {

struct Aten {
  at::Tensor gather(const at::Tensor& p, const at::Tensor& idx) const {
    return p.reshape({-1}).index_select(0, idx);  // range-checked before anything is written
  }
  at::Tensor concat(const at::Tensor& blocks, const at::Tensor& idx) const { return at::cat({blocks, idx}); }
  at::Tensor zeros_after(const at::Tensor& t, int64_t n) const { return at::cat({t, at::zeros({n}, t.options())}); }
};

Lists id3_unmask(at::TensorList params, at::TensorList chosen, at::TensorList active_blocks, at::TensorList block_steps,
                 at::TensorList exp_avgs, at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs) {
  return unmask_with(Aten{}, params, chosen, active_blocks, block_steps, exp_avgs, exp_avg_sqs, max_exp_avg_sqs);
}

void id3_mark_unmasked(at::TensorList unmasked, at::TensorList chosen) {
  check_mark(unmasked, chosen);  // all checked before any is written
  // (index_fill_ checks the range; ID3 calls _id3_unmask first, whose index_select checks it on
  // tensors of the same sizes before anything is written, without a host sync)
  for (size_t t = 0; t < unmasked.size(); ++t) unmasked[t].view({-1}).index_fill_(0, chosen[t], true);
}

}  // namespace

TORCH_LIBRARY_IMPL(winnow, CompositeExplicitAutograd, m) {
  m.impl("_id3_unmask", &id3_unmask);
  m.impl("_id3_mark_unmasked", &id3_mark_unmasked);
}

}  // namespace winnow::id3

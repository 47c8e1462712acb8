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

namespace winnow::id3 {
namespace {

using Lists = std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>,
                         std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>>;

at::Tensor append_zeros(const at::Tensor& t, int64_t n) {
  return at::cat({t, at::zeros({n}, t.options())});
}

void check_chosen(const char* op, const at::Tensor& c, size_t t) {
  TORCH_CHECK_TYPE(c.scalar_type() == at::kLong && c.dim() == 1, op, ": chosen[", t, "] must be a 1-D int64 tensor");
}

Lists id3_unmask(at::TensorList params, at::TensorList chosen, at::TensorList active_blocks, at::TensorList block_steps,
                 at::TensorList exp_avgs, at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs) {
  const char* op = "_id3_unmask";
  const size_t n = params.size();
  for (const auto& [name, size] : {std::pair{"chosen", chosen.size()},
                                   {"active_blocks", active_blocks.size()}, {"block_steps", block_steps.size()},
                                   {"exp_avgs", exp_avgs.size()}, {"exp_avg_sqs", exp_avg_sqs.size()}}) {
    TORCH_CHECK_VALUE(size == n, op, ": ", name, " has ", size, " tensors but params has ", n);
  }
  const bool amsgrad = !max_exp_avg_sqs.empty();
  TORCH_CHECK_VALUE(!amsgrad || max_exp_avg_sqs.size() == n, op, ": max_exp_avg_sqs has ", max_exp_avg_sqs.size(),
                    " tensors but params has ", n, " (or pass none)");
  std::vector<at::Tensor> initial(n), blocks(n), steps(n), m(n), v(n), vmax(amsgrad ? n : 0);
  for (size_t t = 0; t < n; ++t) {
    const at::Tensor& c = chosen[t];
    check_chosen(op, c, t);
    const int64_t k = c.numel();
    initial[t] = params[t].reshape({-1}).index_select(0, c);  // range-checked
    blocks[t] = at::cat({active_blocks[t], c});
    steps[t] = append_zeros(block_steps[t], k);
    m[t] = append_zeros(exp_avgs[t], k);
    v[t] = append_zeros(exp_avg_sqs[t], k);
    if (amsgrad) vmax[t] = append_zeros(max_exp_avg_sqs[t], k);
  }
  return {initial, blocks, steps, m, v, vmax};
}

void id3_mark_unmasked(at::TensorList unmasked, at::TensorList chosen) {
  const char* op = "_id3_mark_unmasked";
  TORCH_CHECK_VALUE(chosen.size() == unmasked.size(), op, ": chosen has ", chosen.size(),
                    " tensors but unmasked has ", unmasked.size());
  for (size_t t = 0; t < unmasked.size(); ++t) {  // all checked before any is written
    check_chosen(op, chosen[t], t);
    TORCH_CHECK_TYPE(unmasked[t].scalar_type() == at::kBool, op, ": unmasked[", t, "] must be a bool tensor");
    TORCH_CHECK_VALUE(unmasked[t].is_contiguous(), op, ": unmasked[", t, "] must be contiguous");
  }
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

#pragma once
// _id3_unmask / _id3_mark_unmasked: ID3's per-step bookkeeping of the elements it unmasks (the
// contract: csrc/id3_unmask_aten.cpp). The list checks both backends run (the CPU kernel,
// csrc/cpu/id3_unmask.cpp, and the ATen composition).
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <tuple>
#include <utility>
#include <vector>

namespace winnow::id3 {

inline void check_chosen(const char* op, const at::Tensor& c, size_t t) {
  TORCH_CHECK_TYPE(c.scalar_type() == at::kLong && c.dim() == 1, op, ": chosen[", t, "] must be a 1-D int64 tensor");
}

inline void check_unmask(at::TensorList params, at::TensorList chosen, at::TensorList active_blocks,
                         at::TensorList block_steps, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                         at::TensorList max_exp_avg_sqs) {
  const char* op = "_id3_unmask";
  const size_t n = params.size();
  for (const auto& [name, size] : {std::pair{"chosen", chosen.size()}, {"active_blocks", active_blocks.size()},
                                   {"block_steps", block_steps.size()}, {"exp_avgs", exp_avgs.size()},
                                   {"exp_avg_sqs", exp_avg_sqs.size()}}) {
    TORCH_CHECK_VALUE(size == n, op, ": ", name, " has ", size, " tensors but params has ", n);
  }
  TORCH_CHECK_VALUE(max_exp_avg_sqs.empty() || max_exp_avg_sqs.size() == n, op, ": max_exp_avg_sqs has ",
                    max_exp_avg_sqs.size(), " tensors but params has ", n, " (or pass none)");
  for (size_t t = 0; t < n; ++t) {
    check_chosen(op, chosen[t], t);
    TORCH_CHECK_TYPE(active_blocks[t].scalar_type() == at::kLong, op, ": active_blocks[", t, "] must be int64");
  }
}

inline void check_mark(at::TensorList unmasked, at::TensorList chosen) {
  const char* op = "_id3_mark_unmasked";
  TORCH_CHECK_VALUE(chosen.size() == unmasked.size(), op, ": chosen has ", chosen.size(),
                    " tensors but unmasked has ", unmasked.size());
  for (size_t t = 0; t < unmasked.size(); ++t) {
    check_chosen(op, chosen[t], t);
    TORCH_CHECK_TYPE(unmasked[t].scalar_type() == at::kBool, op, ": unmasked[", t, "] must be a bool tensor");
    TORCH_CHECK_VALUE(unmasked[t].is_contiguous(), op, ": unmasked[", t, "] must be contiguous");
  }
}

using Lists = std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>,
                         std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>>;

// _id3_unmask on one backend's three primitives: gather(p, idx) = p.flatten()[idx],
// concat(blocks, idx) = blocks then idx, zeros_after(t, n) = t then n zeros.
template <typename Backend>
Lists unmask_with(const Backend& b, at::TensorList params, at::TensorList chosen, at::TensorList active_blocks,
                  at::TensorList block_steps, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                  at::TensorList max_exp_avg_sqs) {
  check_unmask(params, chosen, active_blocks, block_steps, exp_avgs, exp_avg_sqs, max_exp_avg_sqs);
  const size_t n = params.size();
  const bool amsgrad = !max_exp_avg_sqs.empty();
  std::vector<at::Tensor> initial(n), blocks(n), steps(n), m(n), v(n), vmax(amsgrad ? n : 0);
  for (size_t t = 0; t < n; ++t) {
    const int64_t k = chosen[t].numel();
    initial[t] = b.gather(params[t], chosen[t]);
    blocks[t] = b.concat(active_blocks[t], chosen[t]);
    steps[t] = b.zeros_after(block_steps[t], k);
    m[t] = b.zeros_after(exp_avgs[t], k);
    v[t] = b.zeros_after(exp_avg_sqs[t], k);
    if (amsgrad) vmax[t] = b.zeros_after(max_exp_avg_sqs[t], k);
  }
  return {initial, blocks, steps, m, v, vmax};
}

}  // namespace winnow::id3

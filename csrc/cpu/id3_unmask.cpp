// CPU kernels of _id3_unmask / _id3_mark_unmasked (the contract and the ATen composition that
// serves other devices: csrc/id3_unmask_aten.cpp). The composition costs ~9 ATen calls per grown
// parameter (~20 us); here each output is one allocation and a copy, which is what the step
// needs: ID3 grows dozens of parameters a step, a few entries each.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cstring>
#include <tuple>
#include <vector>

namespace winnow::id3 {
namespace {

using Lists = std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>,
                         std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>>;

// `t` (1-D, contiguous) followed by n zeros, in a new tensor.
at::Tensor append_zeros(const at::Tensor& t, int64_t n) {
  const at::Tensor src = t.contiguous();
  at::Tensor out = at::empty({src.numel() + n}, src.options());
  const size_t item = src.element_size(), old = static_cast<size_t>(src.numel()) * item;
  auto* dst = static_cast<char*>(out.data_ptr());
  if (old > 0) std::memcpy(dst, src.const_data_ptr(), old);
  std::memset(dst + old, 0, static_cast<size_t>(n) * item);  // all-zero bytes: 0 for every dtype here
  return out;
}

void check_lists(const char* op, at::TensorList params, at::TensorList chosen, at::TensorList active_blocks,
                 at::TensorList block_steps, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                 at::TensorList max_exp_avg_sqs) {
  const size_t n = params.size();
  for (const auto& [name, size] : {std::pair{"chosen", chosen.size()}, {"active_blocks", active_blocks.size()},
                                   {"block_steps", block_steps.size()}, {"exp_avgs", exp_avgs.size()},
                                   {"exp_avg_sqs", exp_avg_sqs.size()}}) {
    TORCH_CHECK_VALUE(size == n, op, ": ", name, " has ", size, " tensors but params has ", n);
  }
  TORCH_CHECK_VALUE(max_exp_avg_sqs.empty() || max_exp_avg_sqs.size() == n, op, ": max_exp_avg_sqs has ",
                    max_exp_avg_sqs.size(), " tensors but params has ", n, " (or pass none)");
  for (size_t t = 0; t < n; ++t) {
    const at::Tensor& c = chosen[t];
    TORCH_CHECK_TYPE(c.scalar_type() == at::kLong && c.dim() == 1, op, ": chosen[", t, "] must be a 1-D int64 tensor");
    TORCH_CHECK_TYPE(active_blocks[t].scalar_type() == at::kLong, op, ": active_blocks[", t, "] must be int64");
    const int64_t numel = params[t].numel();
    const at::Tensor idx = c.contiguous();
    const int64_t* ix = idx.const_data_ptr<int64_t>();
    for (int64_t j = 0; j < idx.numel(); ++j) {  // before anything is allocated or written
      TORCH_CHECK_INDEX(ix[j] >= 0 && ix[j] < numel, op, ": chosen[", t, "] holds ", ix[j],
                        ", outside params[", t, "]'s ", numel, " elements");
    }
  }
}

Lists id3_unmask_cpu(at::TensorList params, at::TensorList chosen, at::TensorList active_blocks,
                     at::TensorList block_steps, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                     at::TensorList max_exp_avg_sqs) {
  check_lists("_id3_unmask", params, chosen, active_blocks, block_steps, exp_avgs, exp_avg_sqs, max_exp_avg_sqs);
  const size_t n = params.size();
  const bool amsgrad = !max_exp_avg_sqs.empty();
  std::vector<at::Tensor> initial(n), blocks(n), steps(n), m(n), v(n), vmax(amsgrad ? n : 0);
  for (size_t t = 0; t < n; ++t) {
    const at::Tensor idx = chosen[t].contiguous(), p = params[t].contiguous();
    const int64_t k = idx.numel();
    const int64_t* ix = idx.const_data_ptr<int64_t>();
    initial[t] = at::empty({k}, p.options());
    const size_t item = p.element_size();
    const auto* src = static_cast<const char*>(p.const_data_ptr());
    auto* dst = static_cast<char*>(initial[t].data_ptr());
    for (int64_t j = 0; j < k; ++j) std::memcpy(dst + j * item, src + ix[j] * item, item);
    const at::Tensor old = active_blocks[t].contiguous();
    blocks[t] = at::empty({old.numel() + k}, old.options());
    int64_t* b = blocks[t].data_ptr<int64_t>();
    if (old.numel() > 0) std::memcpy(b, old.const_data_ptr<int64_t>(), old.numel() * sizeof(int64_t));
    std::memcpy(b + old.numel(), ix, k * sizeof(int64_t));
    steps[t] = append_zeros(block_steps[t], k);
    m[t] = append_zeros(exp_avgs[t], k);
    v[t] = append_zeros(exp_avg_sqs[t], k);
    if (amsgrad) vmax[t] = append_zeros(max_exp_avg_sqs[t], k);
  }
  return {initial, blocks, steps, m, v, vmax};
}

void id3_mark_unmasked_cpu(at::TensorList unmasked, at::TensorList chosen) {
  const char* op = "_id3_mark_unmasked";
  TORCH_CHECK_VALUE(chosen.size() == unmasked.size(), op, ": chosen has ", chosen.size(),
                    " tensors but unmasked has ", unmasked.size());
  for (size_t t = 0; t < unmasked.size(); ++t) {  // all checked before any is written
    TORCH_CHECK_TYPE(chosen[t].scalar_type() == at::kLong && chosen[t].dim() == 1, op, ": chosen[", t,
                     "] must be a 1-D int64 tensor");
    TORCH_CHECK_TYPE(unmasked[t].scalar_type() == at::kBool, op, ": unmasked[", t, "] must be a bool tensor");
    TORCH_CHECK_VALUE(unmasked[t].is_contiguous(), op, ": unmasked[", t, "] must be contiguous");
    const at::Tensor idx = chosen[t].contiguous();
    const int64_t* ix = idx.const_data_ptr<int64_t>();
    for (int64_t j = 0; j < idx.numel(); ++j) {
      TORCH_CHECK_INDEX(ix[j] >= 0 && ix[j] < unmasked[t].numel(), op, ": chosen[", t, "] holds ", ix[j],
                        ", outside unmasked[", t, "]'s ", unmasked[t].numel(), " elements");
    }
  }
  for (size_t t = 0; t < unmasked.size(); ++t) {
    const at::Tensor idx = chosen[t].contiguous();
    const int64_t* ix = idx.const_data_ptr<int64_t>();
    bool* mask = unmasked[t].data_ptr<bool>();
    for (int64_t j = 0; j < idx.numel(); ++j) mask[ix[j]] = true;
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(winnow, CPU, m) {
  m.impl("_id3_unmask", &id3_unmask_cpu);
  m.impl("_id3_mark_unmasked", &id3_mark_unmasked_cpu);
}

}  // namespace winnow::id3

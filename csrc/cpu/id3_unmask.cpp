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

#include "winnow/id3_unmask.h"

namespace winnow::id3 {
namespace {

// One allocation and a copy per output.
struct Cpu {
  at::Tensor gather(const at::Tensor& p_in, const at::Tensor& idx_in) const {
    const at::Tensor p = p_in.contiguous(), idx = idx_in.contiguous();
    at::Tensor out = at::empty({idx.numel()}, p.options());
    const size_t item = p.element_size();
    const auto* src = static_cast<const char*>(p.const_data_ptr());
    auto* dst = static_cast<char*>(out.data_ptr());
    const int64_t* ix = idx.const_data_ptr<int64_t>();
    for (int64_t j = 0; j < idx.numel(); ++j) std::memcpy(dst + j * item, src + ix[j] * item, item);
    return out;
  }
  at::Tensor concat(const at::Tensor& blocks, const at::Tensor& idx) const {
    at::Tensor out = zeros_after(blocks, idx.numel());
    const at::Tensor src = idx.contiguous();
    if (src.numel() > 0) {
      std::memcpy(out.data_ptr<int64_t>() + blocks.numel(), src.const_data_ptr<int64_t>(),
                  src.numel() * sizeof(int64_t));
    }
    return out;
  }
  at::Tensor zeros_after(const at::Tensor& t, int64_t n) const {
    const at::Tensor src = t.contiguous();
    at::Tensor out = at::empty({src.numel() + n}, src.options());
    const size_t item = src.element_size(), old = static_cast<size_t>(src.numel()) * item;
    auto* dst = static_cast<char*>(out.data_ptr());
    if (old > 0) std::memcpy(dst, src.const_data_ptr(), old);
    std::memset(dst + old, 0, static_cast<size_t>(n) * item);  // all-zero bytes: 0 for every dtype here
    return out;
  }
};

// Every chosen index in range, before anything is allocated or written (the composition's
// index_select / index_fill_ check it on their own).
void check_indices(const char* op, at::TensorList chosen, at::TensorList like) {
  for (size_t t = 0; t < chosen.size(); ++t) {
    const at::Tensor idx = chosen[t].contiguous();
    const int64_t* ix = idx.const_data_ptr<int64_t>();
    const int64_t numel = like[t].numel();
    for (int64_t j = 0; j < idx.numel(); ++j) {
      TORCH_CHECK_INDEX(ix[j] >= 0 && ix[j] < numel, op, ": chosen[", t, "] holds ", ix[j], ", outside the ", numel,
                        " elements of its tensor");
    }
  }
}

Lists id3_unmask_cpu(at::TensorList params, at::TensorList chosen, at::TensorList active_blocks,
                     at::TensorList block_steps, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                     at::TensorList max_exp_avg_sqs) {
  TORCH_CHECK_VALUE(chosen.size() == params.size(), "_id3_unmask: chosen has ", chosen.size(),
                    " tensors but params has ", params.size());
  for (size_t t = 0; t < chosen.size(); ++t) check_chosen("_id3_unmask", chosen[t], t);
  check_indices("_id3_unmask", chosen, params);
  return unmask_with(Cpu{}, params, chosen, active_blocks, block_steps, exp_avgs, exp_avg_sqs, max_exp_avg_sqs);
}

void id3_mark_unmasked_cpu(at::TensorList unmasked, at::TensorList chosen) {
  check_mark(unmasked, chosen);
  check_indices("_id3_mark_unmasked", chosen, unmasked);
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

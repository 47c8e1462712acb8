// The one place where winnow's ops are declared (TORCH_LIBRARY schemas) and where the Python
// module winnow._C is bound. Each backend registers its kernels next to them
// (csrc/cpu/<op>.cpp: TORCH_LIBRARY_IMPL(winnow, CPU); csrc/cuda/<op>.cu: ...CUDA), so a
// CPU-only build needs no #ifdef; the fake (meta) kernels live in python/winnow/ops.py.
#include <pybind11/pybind11.h>
#include <torch/library.h>

#include "cpu/isa.h"
#include "masked_adamw_plan.h"
#include "state_watch.h"

#ifndef WINNOW_TORCH_VERSION
#error "WINNOW_TORCH_VERSION must be defined by the build"
#endif

TORCH_LIBRARY(winnow, m) {
  // importance_update (csrc/include/winnow/importance_update.h), importance_score (importance_score.h)
  m.def(
      "importance_update_adalora(Tensor[] params, Tensor[] grads, Tensor(a!)[] exp_avg_ipt, "
      "Tensor(b!)[] exp_avg_unc, float beta1, float beta2, Tensor(c!) nonfinite) -> ()");
  m.def(
      "importance_update_id3(Tensor[] params, Tensor[] grads, Tensor(a!)[] scores, Tensor[] unmasked, "
      "float eps, float exponent, float beta, Tensor(b!) nonfinite) -> ()");
  m.def("importance_score(Tensor[] exp_avg_ipt, Tensor[] exp_avg_unc, int[] mean_dims) -> Tensor[]");
  // masked_topk (csrc/include/winnow/masked_topk.h)
  m.def("masked_topk(Tensor[] scores, Tensor[] unmasked, int k) -> Tensor[]");
  m.def("_masked_topk_aten(Tensor[] scores, Tensor[] unmasked, int k) -> Tensor[]");  // masked_topk_aten.cpp
  // ID3's selection from (param, grad) in one pass, CPU only (csrc/cpu/masked_topk.cpp)
  m.def("_masked_topk_id3(Tensor[] params, Tensor[] grads, Tensor[] unmasked, int k, float eps, float exponent) "
        "-> Tensor[]");
  // the same, leaving out H below `at_least` while it can (ID3 passes the last step's k-th best H;
  // same result), and returning this selection's k-th best H
  m.def("_masked_topk_id3_from(Tensor[] params, Tensor[] grads, Tensor[] unmasked, int k, float eps, float exponent, "
        "float at_least) -> (Tensor[] chosen, Tensor kth)");
  // ID3's per-step bookkeeping of the elements it unmasks, all parameters in one call (id3_unmask_aten.cpp)
  m.def(
      "_id3_unmask(Tensor[] params, Tensor[] chosen, Tensor[] active_blocks, Tensor[] block_steps, "
      "Tensor[] exp_avgs, Tensor[] exp_avg_sqs, Tensor[] max_exp_avg_sqs) -> (Tensor[] initial, "
      "Tensor[] active_blocks, Tensor[] block_steps, Tensor[] exp_avgs, Tensor[] exp_avg_sqs, Tensor[] max_exp_avg_sqs)");
  m.def("_id3_mark_unmasked(Tensor(a!)[] unmasked, Tensor[] chosen) -> ()");
  // rank_prune (csrc/include/winnow/rank_prune.h)
  m.def(
      "rank_prune(Tensor(a!)[] lora_E, Tensor[] ipt_E, Tensor[] unc_E, Tensor[] ipt_A, Tensor[] unc_A, "
      "Tensor[] ipt_B, Tensor[] unc_B, int num_masked) -> (Tensor scores, Tensor keep)");
  // masked_adamw_step (csrc/include/winnow/masked_adamw_step.h)
  m.def(
      "masked_adamw_step(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
      "Tensor(d!)[] max_exp_avg_sqs, Tensor[] active_blocks, Tensor(e!)[] block_steps, int[] block_sizes, "
      "float lr, float beta1, float beta2, float weight_decay, float eps, bool amsgrad, bool maximize, "
      "Tensor? grad_scale=None, Tensor? found_inf=None) -> ()");
  // act_tangent family, for the fast H-theta path (csrc/include/winnow/act_tangent.h)
  m.def("act_tangent(Tensor z, Tensor dz, int kind) -> (Tensor y, Tensor dy)");
  m.def("act_tangent_backward(Tensor z, Tensor dz, Tensor gy, Tensor gdy, int kind) -> (Tensor gz, Tensor gdz)");
  // OBA's score epilogue (csrc/include/winnow/oba_score_accumulate.h, oba_channel_sums.h)
  m.def("oba_score_accumulate(Tensor[] thetas, Tensor[] h_thetas, Tensor(a!)[] scores) -> ()");
  m.def("oba_channel_sums(Tensor scores, int groups) -> (Tensor rows, Tensor cols)");
  // softmax_tangent family, attention in the fast H-theta path (csrc/include/winnow/softmax_tangent.h)
  m.def("softmax_tangent(Tensor p, Tensor ds) -> Tensor");
  m.def("softmax_tangent_backward(Tensor p, Tensor ds, Tensor g) -> (Tensor gp, Tensor gds)");
}

// The optimizer's and the selections' ops have no derivative: they update statistics, state and
// parameters in place, or return indices and copies for bookkeeping. Autograd skips them (what
// torch's fallback for ops without an autograd kernel asks of non-differentiable ones), instead
// of running that boxed fallback, which visits every tensor of every list on each call: ~80 us
// of a MaskedAdamW step on 16 tensors just after a dense step had evicted their metadata.
TORCH_LIBRARY_IMPL(winnow, Autograd, m) {
  for (const char* op : {"importance_update_adalora", "importance_update_id3", "masked_topk", "_masked_topk_id3",
                         "_masked_topk_id3_from", "_id3_unmask", "_id3_mark_unmasked", "rank_prune",
                         "masked_adamw_step", "oba_score_accumulate"}) {
    m.impl(op, torch::CppFunction::makeFallthrough());
  }
}

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "winnow's compiled kernels; the ops are torch.ops.winnow.*";
  m.def("build_info", [] {
    py::dict info;
    info["torch_version"] = WINNOW_TORCH_VERSION;
#ifdef WINNOW_WITH_CUDA
    info["cuda_kernels"] = true;
    info["cuda_archs"] = WINNOW_CUDA_ARCHS;
#else
    info["cuda_kernels"] = false;
    info["cuda_archs"] = "";
#endif
    info["cpu_isas"] = winnow::cpu::built_isas();
    return info;
  });
  // The instruction set the CPU kernels run with (csrc/cpu/isa.h); ValueError for a bad
  // WINNOW_CPU_CAPABILITY.
  m.def("cpu_capability", [] { return std::string(winnow::cpu::isa_name(winnow::cpu::active_isa())); });
  winnow::bind_masked_adamw_plan(m);
  winnow::bind_state_watch(m);
}

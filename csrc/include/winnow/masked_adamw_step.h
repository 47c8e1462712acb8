#pragma once
// masked_adamw_step: per-element AdamW math of the block-sparse masked optimizer, shared by
// csrc/cpu/masked_adamw_step.cpp and csrc/cuda/masked_adamw_step.cu, and the host-side
// validation both call.
//
// Layout of one parameter: it is cut into blocks of `block_size` elements (the last one may be
// partial). Only the blocks listed in `active_blocks` (int64, A entries) are touched. The state
// is compact: exp_avg / exp_avg_sq (/ max_exp_avg_sq) hold A * block_size values, slot j for
// block active_blocks[j]; block_steps (int32, A entries) counts the steps of each block, so a
// block activated late gets its own bias correction.
#include <cmath>
#include <cstdint>

#include "winnow/macros.h"
#include "winnow/numeric.h"

namespace winnow::adamw {

// Hyperparameters of one call. Scalars derived from them are computed once in double and
// rounded to acc_t, the rounding PyTorch's eager AdamW gets for its Python-float scalars.
template <typename acc_t>
struct Hyper {
  acc_t decay;            // 1 - lr * weight_decay (decoupled weight decay)
  acc_t one_minus_beta1;  // lerp weight of exp_avg
  acc_t beta2, one_minus_beta2;
  acc_t eps;
  acc_t grad_scale;       // gradients are divided by it (AMP) when `unscale`
  bool unscale;
  double lr, beta1_d, beta2_d;
};

template <typename acc_t>
WINNOW_HD Hyper<acc_t> hyper(double lr, double beta1, double beta2, double weight_decay, double eps, double grad_scale) {
  return {acc_t(1.0 - lr * weight_decay), acc_t(1.0 - beta1), acc_t(beta2), acc_t(1.0 - beta2), acc_t(eps),
          acc_t(grad_scale), grad_scale != 1.0, lr, beta1, beta2};
}

// Per-block scalars from the block's step count (bias corrections, in double like torch).
template <typename acc_t>
struct BlockCoeffs {
  acc_t neg_step_size;          // -lr / (1 - beta1^step)
  acc_t bias_correction2_sqrt;  // sqrt(1 - beta2^step)
};

template <typename acc_t>
WINNOW_HD BlockCoeffs<acc_t> block_coeffs(const Hyper<acc_t>& h, int32_t step) {
  const double s = static_cast<double>(step);
  const double bc1 = 1.0 - pow(h.beta1_d, s);
  const double bc2 = 1.0 - pow(h.beta2_d, s);
  return {static_cast<acc_t>(-(h.lr / bc1)), static_cast<acc_t>(square_root(bc2))};
}

// torch.lerp's formula (exact at both ends).
template <typename acc_t>
WINNOW_HD acc_t lerp(acc_t from, acc_t to, acc_t w) {
  return abs_value(w) < acc_t(0.5) ? from + w * (to - from) : to - (to - from) * (acc_t(1) - w);
}

template <typename acc_t>
WINNOW_HD acc_t max_value(acc_t a, acc_t b) {
  return (a < b || b != b) ? b : a;  // a NaN on either side propagates, as in torch.maximum
}

// One element of one step. Operation order follows torch.optim.AdamW's single-tensor path so
// that float32 results agree with it to rounding:
//   p *= 1 - lr wd;  m = lerp(m, g, 1 - b1);  v = v b2 + ((1 - b2) g) g;
//   vmax = max(vmax, v);  p += (-step_size m) / (sqrt(v or vmax) / sqrt(bc2) + eps)
template <bool kAmsgrad, bool kMaximize, typename acc_t>
WINNOW_HD void update(acc_t& p, acc_t g, acc_t& m, acc_t& v, acc_t& vmax, const Hyper<acc_t>& h,
                      const BlockCoeffs<acc_t>& c) {
  if (h.unscale) g = g / h.grad_scale;
  if constexpr (kMaximize) g = -g;
  p = p * h.decay;
  m = lerp(m, g, h.one_minus_beta1);
  v = v * h.beta2 + h.one_minus_beta2 * g * g;
  acc_t second = v;
  if constexpr (kAmsgrad) {
    vmax = max_value(vmax, v);
    second = vmax;
  }
  const acc_t denom = square_root(second) / c.bias_correction2_sqrt + h.eps;
  p = p + c.neg_step_size * m / denom;
}

// A block index outside [0, num_blocks) is the optimizer's bookkeeping gone wrong: both backends
// refuse it before anything is written, with this message (the CUDA kernel prints it on the
// device, then asserts; the CPU raises it as a ValueError).
#define WINNOW_BLOCK_RANGE_FORMAT \
  "masked_adamw_step: active_blocks[%lld] holds block %lld but params[%lld] has %lld blocks of %lld"

WINNOW_HD bool block_in_range(int64_t block, int64_t num_blocks) { return block >= 0 && block < num_blocks; }

template <typename F>
inline void dispatch_flags(bool amsgrad, bool maximize, F&& f) {
  using T = std::true_type;
  using N = std::false_type;
  if (amsgrad) {
    maximize ? f(T{}, T{}) : f(T{}, N{});
  } else {
    maximize ? f(N{}, T{}) : f(N{}, N{});
  }
}

}  // namespace winnow::adamw

// ---- host side: validation shared by both backends ----
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "winnow/checks.h"

namespace winnow::adamw {

struct StepInputs {
  std::vector<at::Tensor> grads;  // contiguous
};

// Number of blocks of a tensor of n elements.
inline int64_t num_blocks(int64_t n, int64_t block_size) { return (n + block_size - 1) / block_size; }

inline std::string block_range_message(int64_t tensor, int64_t block, int64_t blocks, int64_t block_size) {
  char buf[256];
  std::snprintf(buf, sizeof(buf), WINNOW_BLOCK_RANGE_FORMAT, static_cast<long long>(tensor),
                static_cast<long long>(block), static_cast<long long>(tensor), static_cast<long long>(blocks),
                static_cast<long long>(block_size));
  return buf;
}

inline StepInputs check_step(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                             at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
                             at::TensorList active_blocks, at::TensorList block_steps, at::IntArrayRef block_sizes,
                             double lr, double beta1, double beta2, double weight_decay, double eps, bool amsgrad,
                             const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf) {
  const char* op = "masked_adamw_step";
  checks::nonempty(op, "params", params.size());
  const size_t n = params.size();
  checks::same_length(op, "grads", grads.size(), "params", n);
  checks::same_length(op, "exp_avgs", exp_avgs.size(), "params", n);
  checks::same_length(op, "exp_avg_sqs", exp_avg_sqs.size(), "params", n);
  checks::same_length(op, "max_exp_avg_sqs", max_exp_avg_sqs.size(), "params", amsgrad ? n : 0);
  checks::same_length(op, "active_blocks", active_blocks.size(), "params", n);
  checks::same_length(op, "block_steps", block_steps.size(), "params", n);
  checks::same_length(op, "block_sizes", block_sizes.size(), "params", n);
  TORCH_CHECK_VALUE(std::isfinite(lr) && lr >= 0.0, op, ": lr must be finite and >= 0, got ", lr);
  checks::beta(op, "beta1", beta1);
  checks::beta(op, "beta2", beta2);
  TORCH_CHECK_VALUE(std::isfinite(weight_decay) && weight_decay >= 0.0, op,
                    ": weight_decay must be finite and >= 0, got ", weight_decay);
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0.0, op, ": eps must be finite and >= 0, got ", eps);
  const at::Device device = params[0].device();
  StepInputs in;
  in.grads.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    checks::float_input(op, "params", i, params[i]);
    checks::float_input(op, "grads", i, grads[i]);
    checks::same_device(op, "params", i, params[i], device);
    TORCH_CHECK_VALUE(params[i].is_contiguous(), op, ": params[", i, "] must be contiguous (it is updated in place)");
    checks::matches(op, "grads", i, grads[i], "params", params[i]);
    TORCH_CHECK_TYPE(grads[i].scalar_type() == params[i].scalar_type(), op, ": grads[", i, "] has dtype ",
                     grads[i].scalar_type(), " but params[", i, "] has dtype ", params[i].scalar_type());
    const int64_t bs = block_sizes[i];
    TORCH_CHECK_VALUE(bs >= 1, op, ": block_sizes[", i, "] must be >= 1, got ", bs);
    const at::Tensor& blocks = active_blocks[i];
    TORCH_CHECK_TYPE(blocks.defined() && blocks.scalar_type() == at::kLong, op, ": active_blocks[", i,
                     "] must be an int64 tensor");
    TORCH_CHECK_VALUE(blocks.dim() == 1 && blocks.is_contiguous() && blocks.device() == device, op,
                      ": active_blocks[", i, "] must be a contiguous 1-D tensor on ", device);
    const int64_t a = blocks.numel();
    const at::Tensor& steps = block_steps[i];
    TORCH_CHECK_TYPE(steps.defined() && steps.scalar_type() == at::kInt, op, ": block_steps[", i,
                     "] must be an int32 tensor");
    TORCH_CHECK_VALUE(steps.dim() == 1 && steps.numel() == a && steps.is_contiguous() && steps.device() == device,
                      op, ": block_steps[", i, "] must be a contiguous 1-D tensor with one entry per active block (",
                      a, ") on ", device);
    auto state = [&](const char* name, const at::Tensor& t) {
      TORCH_CHECK_VALUE(t.defined(), op, ": ", name, "[", i, "] is undefined (None)");
      TORCH_CHECK_TYPE(t.scalar_type() == checks::stat_dtype(params[i].scalar_type()), op, ": ", name, "[", i,
                       "] must be ", checks::stat_dtype(params[i].scalar_type()), " for params[", i, "] of dtype ",
                       params[i].scalar_type(), ", got ", t.scalar_type());
      TORCH_CHECK_VALUE(t.is_contiguous() && t.numel() == a * bs && t.device() == device, op, ": ", name, "[", i,
                        "] must be a contiguous tensor of active_blocks[", i, "].numel() * block_sizes[", i,
                        "] = ", a * bs, " elements on ", device, ", got ", t.numel(), " on ", t.device());
    };
    state("exp_avgs", exp_avgs[i]);
    state("exp_avg_sqs", exp_avg_sqs[i]);
    if (amsgrad) state("max_exp_avg_sqs", max_exp_avg_sqs[i]);
    in.grads.push_back(grads[i].contiguous());
  }
  for (const auto* opt : {&grad_scale, &found_inf}) {
    if (opt->has_value()) {
      const at::Tensor& t = **opt;
      const char* name = opt == &grad_scale ? "grad_scale" : "found_inf";
      TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat, op, ": ", name, " must be a float32 tensor, got ",
                       t.scalar_type());
      TORCH_CHECK_VALUE(t.numel() == 1 && t.device() == device, op, ": ", name, " must hold one element on ", device);
    }
  }
  return in;
}

}  // namespace winnow::adamw

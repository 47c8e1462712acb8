#pragma once
// importance_update: per-element math of the fused importance accumulation (AdaLoRA and ID3
// modes), shared by csrc/cpu/importance_update.cpp and csrc/cuda/importance_update.cu; plus the
// host-side validation both backends call. (The AdaLoRA score is winnow/importance_score.h.)
#include <type_traits>

#include "winnow/macros.h"
#include "winnow/numeric.h"

namespace winnow::importance {

// ---- AdaLoRA: I = |p g|; Ibar = b1 Ibar + (1-b1) I; Ubar = b2 Ubar + (1-b2) |I - Ibar_new| ----
// The (1 - b) factors are computed once in double on the host and rounded to acc_t, the same
// rounding peft's `beta * t + (1 - beta) * u` gets from PyTorch's scalar handling.
template <typename acc_t>
struct AdaloraCoeffs {
  acc_t beta1, one_minus_beta1, beta2, one_minus_beta2;
};

template <typename acc_t>
WINNOW_HD AdaloraCoeffs<acc_t> adalora_coeffs(double beta1, double beta2) {
  return {acc_t(beta1), acc_t(1.0 - beta1), acc_t(beta2), acc_t(1.0 - beta2)};
}

// Returns false, leaving both statistics untouched, when |p g| is not finite.
// Written branch-free (selects) so the CPU loop vectorises.
template <typename acc_t>
WINNOW_HD bool adalora_update(acc_t p, acc_t g, acc_t& ibar, acc_t& ubar, const AdaloraCoeffs<acc_t>& c) {
  const acc_t ipt = abs_value(p * g);
  const bool ok = is_finite(ipt);
  const acc_t new_ibar = c.beta1 * ibar + c.one_minus_beta1 * ipt;
  const acc_t new_ubar = c.beta2 * ubar + c.one_minus_beta2 * abs_value(ipt - new_ibar);
  ibar = ok ? new_ibar : ibar;
  ubar = ok ? new_ubar : ubar;
  return ok;
}

// ---- ID3: H = |g| / (|p| + eps)^exp, optionally smoothed: S = beta S + (1-beta) H ----
// The exponent is a template parameter for the two common cases (0: README example, 1: the
// authors' default) so that their loops carry no pow() call.
enum class Exponent { Zero, One, General };

template <typename acc_t>
struct Id3Coeffs {
  acc_t eps, exponent, beta, one_minus_beta;
};

template <typename acc_t>
WINNOW_HD Id3Coeffs<acc_t> id3_coeffs(double eps, double exponent, double beta) {
  return {acc_t(eps), acc_t(exponent), acc_t(beta), acc_t(1.0 - beta)};
}

template <Exponent E, typename acc_t>
WINNOW_HD acc_t id3_importance(acc_t p, acc_t g, const Id3Coeffs<acc_t>& c) {
  if constexpr (E == Exponent::Zero) {
    return abs_value(g);
  } else if constexpr (E == Exponent::One) {
    return abs_value(g) / (abs_value(p) + c.eps);
  } else {
    return abs_value(g) / power(abs_value(p) + c.eps, c.exponent);
  }
}

// Returns false, leaving the score untouched, when H is not finite. beta = 0 is no smoothing:
// 0 * S + 1 * H == H exactly because S is always finite.
template <Exponent E, typename acc_t>
WINNOW_HD bool id3_update(acc_t p, acc_t g, acc_t& score, const Id3Coeffs<acc_t>& c) {
  const acc_t h = id3_importance<E>(p, g, c);
  const bool ok = is_finite(h);
  const acc_t updated = c.beta * score + c.one_minus_beta * h;
  score = ok ? updated : score;
  return ok;
}

template <typename F>
inline void dispatch_exponent(double exponent, F&& f) {
  if (exponent == 0.0) {
    f(std::integral_constant<Exponent, Exponent::Zero>{});
  } else if (exponent == 1.0) {
    f(std::integral_constant<Exponent, Exponent::One>{});
  } else {
    f(std::integral_constant<Exponent, Exponent::General>{});
  }
}

}  // namespace winnow::importance

// ---- host side: validation shared by both backends ----
#include <vector>

#include "winnow/checks.h"

namespace winnow::importance {

// Validated inputs of an update: params and grads as contiguous tensors (a non-contiguous
// input is copied once; statistics, written in place, must already be contiguous).
struct UpdateInputs {
  std::vector<at::Tensor> params;
  std::vector<at::Tensor> grads;
};

inline UpdateInputs check_update(const char* op, at::TensorList params, at::TensorList grads,
                                 at::TensorList stat_a, const char* stat_a_name, at::TensorList stat_b,
                                 const char* stat_b_name, const at::Tensor& nonfinite) {
  checks::nonempty(op, "params", params.size());
  checks::same_length(op, "grads", grads.size(), "params", params.size());
  checks::same_length(op, stat_a_name, stat_a.size(), "params", params.size());
  if (stat_b_name != nullptr) {
    checks::same_length(op, stat_b_name, stat_b.size(), "params", params.size());
  }
  UpdateInputs in;
  const size_t n = params.size();
  in.params.reserve(n);
  in.grads.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    checks::float_input(op, "params", i, params[i]);
    checks::float_input(op, "grads", i, grads[i]);
    const at::Device device = params[0].device();
    checks::same_device(op, "params", i, params[i], device);
    checks::matches(op, "grads", i, grads[i], "params", params[i]);
    TORCH_CHECK_TYPE(grads[i].scalar_type() == params[i].scalar_type(), op, ": grads[", i, "] has dtype ",
                     grads[i].scalar_type(), " but params[", i, "] has dtype ", params[i].scalar_type());
    checks::state_of(op, stat_a_name, i, stat_a[i], "params", params[i]);
    if (stat_b_name != nullptr) {
      checks::state_of(op, stat_b_name, i, stat_b[i], "params", params[i]);
    }
    in.params.push_back(params[i].contiguous());
    in.grads.push_back(grads[i].contiguous());
  }
  checks::counter(op, "nonfinite", nonfinite, n, params[0].device());
  return in;
}

inline UpdateInputs check_adalora(at::TensorList params, at::TensorList grads, at::TensorList exp_avg_ipt,
                                  at::TensorList exp_avg_unc, double beta1, double beta2,
                                  const at::Tensor& nonfinite) {
  const char* op = "importance_update_adalora";
  checks::beta(op, "beta1", beta1);
  checks::beta(op, "beta2", beta2);
  return check_update(op, params, grads, exp_avg_ipt, "exp_avg_ipt", exp_avg_unc, "exp_avg_unc", nonfinite);
}

// `unmasked` is empty (score everything) or one bool tensor per param, True where the entry is
// already unmasked and so is neither read nor scored.
inline UpdateInputs check_id3(at::TensorList params, at::TensorList grads, at::TensorList scores,
                              at::TensorList unmasked, double eps, double exponent, double beta,
                              const at::Tensor& nonfinite) {
  const char* op = "importance_update_id3";
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0.0, op, ": eps must be finite and >= 0, got ", eps);
  TORCH_CHECK_VALUE(std::isfinite(exponent), op, ": exponent must be finite, got ", exponent);
  checks::beta(op, "beta", beta);
  UpdateInputs in = check_update(op, params, grads, scores, "scores", {}, nullptr, nonfinite);
  checks::optional_masks(op, "unmasked", unmasked, "params", params);
  return in;
}

}  // namespace winnow::importance

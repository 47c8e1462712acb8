// CPU launcher of importance_update (math in winnow/importance_update.h).
#include "winnow/importance_update.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "multi_tensor.h"

namespace winnow::importance {
namespace {

// Plain loops over raw pointers: with the branch-free math GCC vectorises them. The counter is
// 32-bit (a chunk has at most 2^15 elements) so its lanes match the float lanes.
template <typename scalar_t, typename acc_t>
WINNOW_CPU_CLONES int64_t adalora_range(const scalar_t* __restrict p, const scalar_t* __restrict g, acc_t* __restrict ibar,
                      acc_t* __restrict ubar, int64_t n, const AdaloraCoeffs<acc_t> c) {
  int32_t skipped = 0;
  for (int64_t i = 0; i < n; ++i) {
    acc_t ib = ibar[i], ub = ubar[i];
    skipped += !adalora_update(static_cast<acc_t>(p[i]), static_cast<acc_t>(g[i]), ib, ub, c);
    ibar[i] = ib;
    ubar[i] = ub;
  }
  return skipped;
}

template <Exponent E, typename scalar_t, typename acc_t>
WINNOW_CPU_CLONES int64_t id3_range(const scalar_t* __restrict p, const scalar_t* __restrict g, acc_t* __restrict score,
                  const bool* __restrict unmasked, int64_t n, const Id3Coeffs<acc_t> c) {
  int32_t skipped = 0;
  if (unmasked == nullptr) {
    for (int64_t i = 0; i < n; ++i) {
      acc_t s = score[i];
      skipped += !id3_update<E>(static_cast<acc_t>(p[i]), static_cast<acc_t>(g[i]), s, c);
      score[i] = s;
    }
  } else {
    // Branch-free (the unmasked entries compute and discard) so that the loop vectorises.
    const auto* skip = reinterpret_cast<const uint8_t*>(unmasked);
    for (int64_t i = 0; i < n; ++i) {
      const acc_t old = score[i];
      acc_t s = old;
      const bool ok = id3_update<E>(static_cast<acc_t>(p[i]), static_cast<acc_t>(g[i]), s, c);
      score[i] = skip[i] ? old : s;
      skipped += static_cast<int32_t>(!ok) & static_cast<int32_t>(skip[i] == 0);
    }
  }
  return skipped;
}

void importance_update_adalora_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avg_ipt,
                                   at::TensorList exp_avg_unc, double beta1, double beta2,
                                   const at::Tensor& nonfinite) {
  const UpdateInputs in = check_adalora(params, grads, exp_avg_ipt, exp_avg_unc, beta1, beta2, nonfinite);
  const auto skipped = cpu::for_each_chunk(cpu::numels_of(in.params), [&](const cpu::Chunk& ch) {
    int64_t bad = 0;
    const size_t t = ch.tensor;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.params[t].scalar_type(), "importance_update_adalora",
                                    [&] {
                                      using acc_t = at::opmath_type<scalar_t>;
                                      bad = adalora_range<scalar_t, acc_t>(
                                          in.params[t].const_data_ptr<scalar_t>() + ch.begin,
                                          in.grads[t].const_data_ptr<scalar_t>() + ch.begin,
                                          exp_avg_ipt[t].data_ptr<acc_t>() + ch.begin,
                                          exp_avg_unc[t].data_ptr<acc_t>() + ch.begin, ch.end - ch.begin,
                                          adalora_coeffs<acc_t>(beta1, beta2));
                                    });
    return bad;
  });
  cpu::add_counts(nonfinite, skipped);
}

void importance_update_id3_cpu(at::TensorList params, at::TensorList grads, at::TensorList scores,
                               at::TensorList unmasked, double eps, double exponent, double beta,
                               const at::Tensor& nonfinite) {
  const UpdateInputs in = check_id3(params, grads, scores, unmasked, eps, exponent, beta, nonfinite);
  std::vector<int64_t> skipped;
  dispatch_exponent(exponent, [&](auto kind) {
    skipped = cpu::for_each_chunk(cpu::numels_of(in.params), [&](const cpu::Chunk& ch) {
      int64_t bad = 0;
      const size_t t = ch.tensor;
      const bool* mask = unmasked.empty() ? nullptr : unmasked[t].const_data_ptr<bool>() + ch.begin;
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.params[t].scalar_type(), "importance_update_id3",
                                      [&] {
                                        using acc_t = at::opmath_type<scalar_t>;
                                        bad = id3_range<decltype(kind)::value, scalar_t, acc_t>(
                                            in.params[t].const_data_ptr<scalar_t>() + ch.begin,
                                            in.grads[t].const_data_ptr<scalar_t>() + ch.begin,
                                            scores[t].data_ptr<acc_t>() + ch.begin, mask, ch.end - ch.begin,
                                            id3_coeffs<acc_t>(eps, exponent, beta));
                                      });
      return bad;
    });
  });
  cpu::add_counts(nonfinite, skipped);
}

}  // namespace

TORCH_LIBRARY_IMPL(winnow, CPU, m) {
  m.impl("importance_update_adalora", &importance_update_adalora_cpu);
  m.impl("importance_update_id3", &importance_update_id3_cpu);
}

}  // namespace winnow::importance

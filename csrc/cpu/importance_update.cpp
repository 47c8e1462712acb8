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

// Element scores, or their mean along one dim accumulated in double.
std::vector<at::Tensor> importance_score_cpu(at::TensorList exp_avg_ipt, at::TensorList exp_avg_unc,
                                             at::IntArrayRef mean_dims) {
  check_score(exp_avg_ipt, exp_avg_unc, mean_dims);
  std::vector<at::Tensor> out = score_outputs(exp_avg_ipt, mean_dims);
  at::parallel_for(0, static_cast<int64_t>(out.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      AT_DISPATCH_FLOATING_TYPES(exp_avg_ipt[i].scalar_type(), "importance_score", [&] {
        const scalar_t* a = exp_avg_ipt[i].const_data_ptr<scalar_t>();
        const scalar_t* u = exp_avg_unc[i].const_data_ptr<scalar_t>();
        scalar_t* o = out[i].data_ptr<scalar_t>();
        const int64_t dim = mean_dims[i];
        if (dim == -1) {
          const int64_t n = exp_avg_ipt[i].numel();
          for (int64_t k = 0; k < n; ++k) o[k] = adalora_score(a[k], u[k]);
          return;
        }
        const int64_t rows = exp_avg_ipt[i].size(0), cols = exp_avg_ipt[i].size(1);
        const int64_t outer = dim == 1 ? rows : cols, inner = dim == 1 ? cols : rows;
        const int64_t outer_stride = dim == 1 ? cols : 1, inner_stride = dim == 1 ? 1 : cols;
        for (int64_t r = 0; r < outer; ++r) {
          double sum = 0.0;
          for (int64_t k = 0; k < inner; ++k) {
            const int64_t idx = r * outer_stride + k * inner_stride;
            sum += static_cast<double>(adalora_score(a[idx], u[idx]));
          }
          o[r] = static_cast<scalar_t>(inner > 0 ? sum / static_cast<double>(inner) : NAN);
        }
      });
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(winnow, CPU, m) {
  m.impl("importance_update_adalora", &importance_update_adalora_cpu);
  m.impl("importance_update_id3", &importance_update_id3_cpu);
  m.impl("importance_score", &importance_score_cpu);
}

}  // namespace winnow::importance

// The elementwise importance loops, compiled once per instruction set (csrc/cpu/isa.h); the math
// is winnow/importance_update.h, importance_score.h and oba_score_accumulate.h. Plain loops over
// raw pointers: with the branch-free math GCC vectorises them for each set.
#include "importance_kernels.h"

#include <ATen/OpMathType.h>

#include <algorithm>
#include <cmath>

#include "winnow/importance_score.h"
#include "winnow/importance_update.h"
#include "winnow/oba_score_accumulate.h"

namespace winnow::cpu {
namespace {

// The skip counter is 32-bit (a range has at most 2^15 elements) so its lanes match the floats'.
template <typename scalar_t, typename acc_t>
int64_t adalora_loop(const scalar_t* __restrict p, const scalar_t* __restrict g, acc_t* __restrict ibar,
                     acc_t* __restrict ubar, int64_t n, const importance::AdaloraCoeffs<acc_t> c) {
  int32_t skipped = 0;
  for (int64_t i = 0; i < n; ++i) {
    acc_t ib = ibar[i], ub = ubar[i];
    skipped += !importance::adalora_update(static_cast<acc_t>(p[i]), static_cast<acc_t>(g[i]), ib, ub, c);
    ibar[i] = ib;
    ubar[i] = ub;
  }
  return skipped;
}

int64_t adalora(const AdaloraRange& a) {
  int64_t skipped = 0;
  WINNOW_ISA_DISPATCH_FLOATING_WITH_HALF(a.dtype, [&] {
    using acc_t = at::opmath_type<scalar_t>;
    skipped = adalora_loop(static_cast<const scalar_t*>(a.param), static_cast<const scalar_t*>(a.grad),
                           static_cast<acc_t*>(a.exp_avg_ipt), static_cast<acc_t*>(a.exp_avg_unc), a.n,
                           importance::adalora_coeffs<acc_t>(a.beta1, a.beta2));
  });
  return skipped;
}

template <importance::Exponent E, typename scalar_t, typename acc_t>
int64_t id3_loop(const scalar_t* __restrict p, const scalar_t* __restrict g, acc_t* __restrict score,
                 const bool* __restrict unmasked, int64_t n, const importance::Id3Coeffs<acc_t> c) {
  int32_t skipped = 0;
  if (unmasked == nullptr) {
    for (int64_t i = 0; i < n; ++i) {
      acc_t s = score[i];
      skipped += !importance::id3_update<E>(static_cast<acc_t>(p[i]), static_cast<acc_t>(g[i]), s, c);
      score[i] = s;
    }
  } else {
    // Branch-free (the unmasked entries compute and discard) so that the loop vectorises.
    const auto* skip = reinterpret_cast<const uint8_t*>(unmasked);
    for (int64_t i = 0; i < n; ++i) {
      const acc_t old = score[i];
      acc_t s = old;
      const bool ok = importance::id3_update<E>(static_cast<acc_t>(p[i]), static_cast<acc_t>(g[i]), s, c);
      score[i] = skip[i] ? old : s;
      skipped += static_cast<int32_t>(!ok) & static_cast<int32_t>(skip[i] == 0);
    }
  }
  return skipped;
}

int64_t id3(const Id3Range& a) {
  int64_t skipped = 0;
  importance::dispatch_exponent(a.exponent, [&](auto kind) {
    WINNOW_ISA_DISPATCH_FLOATING_WITH_HALF(a.dtype, [&] {
      using acc_t = at::opmath_type<scalar_t>;
      skipped = id3_loop<decltype(kind)::value>(static_cast<const scalar_t*>(a.param),
                                                static_cast<const scalar_t*>(a.grad), static_cast<acc_t*>(a.score),
                                                a.unmasked, a.n, importance::id3_coeffs<acc_t>(a.eps, a.exponent, a.beta));
    });
  });
  return skipped;
}

void score(const ScoreRange& a) {
  WINNOW_ISA_DISPATCH_FLOATING(a.dtype, [&] {
    const auto* ipt = static_cast<const scalar_t*>(a.exp_avg_ipt);
    const auto* unc = static_cast<const scalar_t*>(a.exp_avg_unc);
    auto* o = static_cast<scalar_t*>(a.out);
    if (a.mean_dim == -1) {
      for (int64_t k = a.begin; k < a.end; ++k) o[k] = importance::adalora_score(ipt[k], unc[k]);
    } else if (a.mean_dim == 1) {  // one mean per row: rows [begin, end)
      for (int64_t r = a.begin; r < a.end; ++r) {
        double sum = 0.0;
        const scalar_t *ir = ipt + r * a.cols, *ur = unc + r * a.cols;
        for (int64_t k = 0; k < a.cols; ++k) sum += static_cast<double>(importance::adalora_score(ir[k], ur[k]));
        o[r] = static_cast<scalar_t>(a.cols > 0 ? sum / static_cast<double>(a.cols) : NAN);
      }
    } else {  // one mean per column: columns [begin, end) in tiles, summed row by row (rows stream)
      constexpr int64_t kTile = 256;
      for (int64_t c0 = a.begin; c0 < a.end; c0 += kTile) {
        const int64_t len = std::min(kTile, a.end - c0);
        double sum[kTile] = {};
        for (int64_t r = 0; r < a.rows; ++r) {
          const scalar_t* ir = ipt + r * a.cols + c0;
          const scalar_t* ur = unc + r * a.cols + c0;
          for (int64_t c = 0; c < len; ++c) sum[c] += static_cast<double>(importance::adalora_score(ir[c], ur[c]));
        }
        for (int64_t c = 0; c < len; ++c) {
          o[c0 + c] = static_cast<scalar_t>(a.rows > 0 ? sum[c] / static_cast<double>(a.rows) : NAN);
        }
      }
    }
  });
}

void oba(const ObaRange& a) {
  WINNOW_ISA_DISPATCH_FLOATING_WITH_HALF(a.dtype, [&] {
    const auto* __restrict theta = static_cast<const scalar_t*>(a.theta);
    const auto* __restrict h = static_cast<const scalar_t*>(a.h_theta);
    double* __restrict s = a.score;
    for (int64_t i = a.begin; i < a.end; ++i) oba::accumulate(s[i], theta[i], h[i]);
  });
}

WINNOW_REGISTER_ISA_KERNEL(adalora_update_range, &adalora);
WINNOW_REGISTER_ISA_KERNEL(id3_update_range, &id3);
WINNOW_REGISTER_ISA_KERNEL(importance_score_range, &score);
WINNOW_REGISTER_ISA_KERNEL(oba_accumulate_range, &oba);

}  // namespace
}  // namespace winnow::cpu

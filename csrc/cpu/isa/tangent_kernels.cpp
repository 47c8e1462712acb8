// act_tangent and softmax_tangent loops, compiled once per instruction set (csrc/cpu/isa.h); the
// math is winnow/act_tangent.h and winnow/softmax_tangent.h.
#include "tangent_kernels.h"

#include "vec_math.h"  // first: the Lanes overloads the shared math calls

#include <ATen/OpMathType.h>

#include <algorithm>
#include <type_traits>

#include "winnow/act_tangent.h"
#include "winnow/softmax_tangent.h"

namespace winnow::cpu {
namespace {

// Up to V::size() elements as one vector in op-math precision (half types convert lane by lane;
// a short tail loads zeros into the rest).
template <typename V, typename scalar_t>
V load(const scalar_t* p, int64_t len) {
  using T = typename V::value_type;
  if constexpr (std::is_same_v<scalar_t, T>) {
    return V::loadu(p, len);
  } else {
    T buf[V::size()];
    for (int64_t l = 0; l < len; ++l) buf[l] = static_cast<T>(p[l]);
    return V::loadu(buf, len);
  }
}

template <typename V, typename scalar_t>
void store(const V& x, scalar_t* p, int64_t len) {
  using T = typename V::value_type;
  if constexpr (std::is_same_v<scalar_t, T>) {
    x.store(p, len);
  } else {
    T buf[V::size()];
    x.store(buf);
    for (int64_t l = 0; l < len; ++l) p[l] = static_cast<scalar_t>(buf[l]);
  }
}

// The activation's math on whole vectors: Op<K>::apply is the same template the scalar backends run.
template <template <int> class Op, int K, typename scalar_t>
void act_loop(const ActRange& a) {
  using V = Lanes<at::opmath_type<scalar_t>>;
  constexpr int N = Op<K>::kInputs;
  constexpr int64_t W = V::size();
  const scalar_t* in[N];
  for (int j = 0; j < N; ++j) in[j] = static_cast<const scalar_t*>(a.in[j]);
  scalar_t* out[2] = {static_cast<scalar_t*>(a.out[0]), static_cast<scalar_t*>(a.out[1])};
  for (int64_t i = a.begin; i < a.end; i += W) {
    const int64_t len = std::min(W, a.end - i);
    V x[N], y[2];
    for (int j = 0; j < N; ++j) x[j] = load<V>(in[j] + i, len);
    Op<K>::apply(x, y);
    for (int j = 0; j < 2; ++j) store(y[j], out[j] + i, len);
  }
}

void act(const ActRange& a) {
  WINNOW_ISA_DISPATCH_FLOATING_WITH_HALF(a.dtype, [&] {
    WINNOW_DISPATCH_ACT(a.kind, [&] {
      if (a.backward) {
        act_loop<act::Backward, K, scalar_t>(a);
      } else {
        act_loop<act::Forward, K, scalar_t>(a);
      }
    });
  });
}

// sum_i x[i] y[i] over a row in kLanes partial sums, lane l taking the terms i = l mod kLanes in
// order, added up in lane order at the end. A single running sum is a dependency chain the
// compiler may not reorder (no -ffast-math): it neither vectorises nor pipelines. Written on
// whole vectors (kLanes / V::size() of them, whatever the instruction set's width), so the
// rounding is the same on every instruction set; GCC had turned scalar partial sums into
// per-lane extracts and scalar adds (1 ns an element, 4x the row's other pass).
constexpr int64_t kLanes = 16;

template <typename T, typename scalar_t>
T row_dot(const scalar_t* x, const scalar_t* y, int64_t n) {
  using V = Lanes<T>;
  constexpr int64_t W = V::size();
  static_assert(kLanes % W == 0, "a whole number of vectors per kLanes");
  constexpr int64_t kVectors = kLanes / W;
  V acc[kVectors];
  for (auto& v : acc) v = V(T(0));
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int64_t v = 0; v < kVectors; ++v) {
      acc[v] = acc[v] + softmax::dot_term(load<V>(x + i + v * W, W), load<V>(y + i + v * W, W));
    }
  }
  for (int64_t v = 0; v < kVectors && i + v * W < n; ++v) {  // the tail: zeros past the row add +0
    const int64_t len = std::min<int64_t>(W, n - i - v * W);
    acc[v] = acc[v] + softmax::dot_term(load<V>(x + i + v * W, len), load<V>(y + i + v * W, len));
  }
  T lanes[kLanes];
  for (int64_t v = 0; v < kVectors; ++v) acc[v].store(lanes + v * W);
  T total = 0;
  for (int64_t l = 0; l < kLanes; ++l) total += lanes[l];
  return total;
}

void softmax(const SoftmaxRows& a) {
  WINNOW_ISA_DISPATCH_FLOATING_WITH_HALF(a.dtype, [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const int64_t n = a.n;
    const auto* pp = static_cast<const scalar_t*>(a.p);
    const auto* dd = static_cast<const scalar_t*>(a.ds);
    auto* out0 = static_cast<scalar_t*>(a.out[0]);
    if (!a.backward) {
      for (int64_t r = a.begin; r < a.end; ++r) {
        const scalar_t *pr = pp + r * n, *dr = dd + r * n;
        const opmath_t c = row_dot<opmath_t>(pr, dr, n);
        for (int64_t i = 0; i < n; ++i) out0[r * n + i] = static_cast<scalar_t>(softmax::forward_at<opmath_t>(pr[i], dr[i], c));
      }
      return;
    }
    const auto* gg = static_cast<const scalar_t*>(a.g);
    auto* out1 = static_cast<scalar_t*>(a.out[1]);
    for (int64_t r = a.begin; r < a.end; ++r) {
      const int64_t o = r * n;
      // Two passes over the row (it is in cache for the second): one pass with both sums in
      // 2 x kLanes accumulators measured 1.5x slower (0.57 vs 0.38 ms at 1M elements).
      const opmath_t c = row_dot<opmath_t>(pp + o, dd + o, n);
      const opmath_t s = row_dot<opmath_t>(gg + o, pp + o, n);
      for (int64_t i = 0; i < n; ++i) {
        opmath_t x, y;
        softmax::backward_at<opmath_t>(pp[o + i], dd[o + i], gg[o + i], c, s, x, y);
        out0[o + i] = static_cast<scalar_t>(x);
        out1[o + i] = static_cast<scalar_t>(y);
      }
    }
  });
}

WINNOW_REGISTER_ISA_KERNEL(act_tangent_range, &act);
WINNOW_REGISTER_ISA_KERNEL(softmax_tangent_rows, &softmax);

}  // namespace
}  // namespace winnow::cpu

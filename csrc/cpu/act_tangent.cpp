// CPU launcher of act_tangent / act_tangent_backward (math in winnow/act_tangent.h): one
// parallel pass over contiguous copies, in the dtype's op-math type (float for half/bfloat16).
#include "winnow/act_tangent.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <tuple>

namespace winnow::act {
namespace {

constexpr int64_t kGrain = 16384;

std::tuple<at::Tensor, at::Tensor> act_tangent_cpu(const at::Tensor& z, const at::Tensor& dz, int64_t kind) {
  check("act_tangent", kind, {{"z", &z}, {"dz", &dz}});
  const at::Tensor zc = z.contiguous(), dzc = dz.contiguous();
  at::Tensor y = at::empty_like(zc), dy = at::empty_like(zc);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "act_tangent", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* zp = zc.const_data_ptr<scalar_t>();
    const scalar_t* dzp = dzc.const_data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    scalar_t* dyp = dy.data_ptr<scalar_t>();
    WINNOW_DISPATCH_ACT(static_cast<int>(kind), [&] {
      at::parallel_for(0, zc.numel(), kGrain, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          opmath_t yv, dyv;
          forward<K>(static_cast<opmath_t>(zp[i]), static_cast<opmath_t>(dzp[i]), yv, dyv);
          yp[i] = static_cast<scalar_t>(yv);
          dyp[i] = static_cast<scalar_t>(dyv);
        }
      });
    });
  });
  return {y, dy};
}

std::tuple<at::Tensor, at::Tensor> act_tangent_backward_cpu(const at::Tensor& z, const at::Tensor& dz,
                                                            const at::Tensor& gy, const at::Tensor& gdy,
                                                            int64_t kind) {
  check("act_tangent_backward", kind, {{"z", &z}, {"dz", &dz}, {"gy", &gy}, {"gdy", &gdy}});
  const at::Tensor zc = z.contiguous(), dzc = dz.contiguous(), gyc = gy.contiguous(), gdyc = gdy.contiguous();
  at::Tensor gz = at::empty_like(zc), gdz = at::empty_like(zc);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "act_tangent_backward", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* zp = zc.const_data_ptr<scalar_t>();
    const scalar_t* dzp = dzc.const_data_ptr<scalar_t>();
    const scalar_t* gyp = gyc.const_data_ptr<scalar_t>();
    const scalar_t* gdyp = gdyc.const_data_ptr<scalar_t>();
    scalar_t* gzp = gz.data_ptr<scalar_t>();
    scalar_t* gdzp = gdz.data_ptr<scalar_t>();
    WINNOW_DISPATCH_ACT(static_cast<int>(kind), [&] {
      at::parallel_for(0, zc.numel(), kGrain, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          opmath_t gzv, gdzv;
          backward<K>(static_cast<opmath_t>(zp[i]), static_cast<opmath_t>(dzp[i]), static_cast<opmath_t>(gyp[i]),
                      static_cast<opmath_t>(gdyp[i]), gzv, gdzv);
          gzp[i] = static_cast<scalar_t>(gzv);
          gdzp[i] = static_cast<scalar_t>(gdzv);
        }
      });
    });
  });
  return {gz, gdz};
}

}  // namespace

TORCH_LIBRARY_IMPL(winnow, CPU, m) {
  m.impl("act_tangent", &act_tangent_cpu);
  m.impl("act_tangent_backward", &act_tangent_backward_cpu);
}

}  // namespace winnow::act

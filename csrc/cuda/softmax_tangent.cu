// CUDA launcher of softmax_tangent / softmax_tangent_backward (math in winnow/softmax_tangent.h):
// one warp per row of the last dim (attention rows are short to moderate); the row's dot products
// are reduced with warp shuffles in op-math precision, then the warp writes the row.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "multi_tensor.cuh"
#include "winnow/softmax_tangent.h"

namespace winnow::softmax {
namespace {

using cuda::kWarp;
using cuda::warp_sum;
constexpr int kWarpsPerBlock = 8;

int blocks_for(int64_t rows) { return cuda::grid_for(rows, kWarpsPerBlock, 16); }

template <typename scalar_t>
__global__ void forward_kernel(const scalar_t* __restrict__ p, const scalar_t* __restrict__ ds,
                               scalar_t* __restrict__ out, int64_t rows, int64_t n) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t r = blockIdx.x * static_cast<int64_t>(kWarpsPerBlock) + threadIdx.x / kWarp; r < rows; r += warps) {
    const int64_t o = r * n;
    opmath_t c = 0;
    for (int64_t i = lane; i < n; i += kWarp) c += dot_term<opmath_t>(p[o + i], ds[o + i]);
    c = warp_sum(c);
    for (int64_t i = lane; i < n; i += kWarp) out[o + i] = static_cast<scalar_t>(forward_at<opmath_t>(p[o + i], ds[o + i], c));
  }
}

template <typename scalar_t>
__global__ void backward_kernel(const scalar_t* __restrict__ p, const scalar_t* __restrict__ ds,
                                const scalar_t* __restrict__ g, scalar_t* __restrict__ gp,
                                scalar_t* __restrict__ gds, int64_t rows, int64_t n) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t r = blockIdx.x * static_cast<int64_t>(kWarpsPerBlock) + threadIdx.x / kWarp; r < rows; r += warps) {
    const int64_t o = r * n;
    opmath_t c = 0, a = 0;
    for (int64_t i = lane; i < n; i += kWarp) {
      c += dot_term<opmath_t>(p[o + i], ds[o + i]);
      a += dot_term<opmath_t>(g[o + i], p[o + i]);
    }
    c = warp_sum(c);
    a = warp_sum(a);
    for (int64_t i = lane; i < n; i += kWarp) {
      opmath_t x, y;
      backward_at<opmath_t>(p[o + i], ds[o + i], g[o + i], c, a, x, y);
      gp[o + i] = static_cast<scalar_t>(x);
      gds[o + i] = static_cast<scalar_t>(y);
    }
  }
}

at::Tensor softmax_tangent_cuda(const at::Tensor& p_in, const at::Tensor& ds_in) {
  check("softmax_tangent", {{"p", &p_in}, {"ds", &ds_in}});
  const c10::cuda::CUDAGuard guard(p_in.device());
  const at::Tensor p = p_in.contiguous(), ds = ds_in.contiguous();
  at::Tensor dp = at::empty_like(p);
  if (p.numel() == 0) return dp;
  const int64_t n = p.size(-1), rows = p.numel() / n;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "softmax_tangent", [&] {
    forward_kernel<scalar_t><<<blocks_for(rows), kWarp * kWarpsPerBlock, 0, stream>>>(
        p.const_data_ptr<scalar_t>(), ds.const_data_ptr<scalar_t>(), dp.data_ptr<scalar_t>(), rows, n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dp;
}

std::tuple<at::Tensor, at::Tensor> softmax_tangent_backward_cuda(const at::Tensor& p_in, const at::Tensor& ds_in,
                                                                 const at::Tensor& g_in) {
  check("softmax_tangent_backward", {{"p", &p_in}, {"ds", &ds_in}, {"g", &g_in}});
  const c10::cuda::CUDAGuard guard(p_in.device());
  const at::Tensor p = p_in.contiguous(), ds = ds_in.contiguous(), g = g_in.contiguous();
  at::Tensor gp = at::empty_like(p), gds = at::empty_like(p);
  if (p.numel() == 0) return {gp, gds};
  const int64_t n = p.size(-1), rows = p.numel() / n;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "softmax_tangent_backward", [&] {
    backward_kernel<scalar_t><<<blocks_for(rows), kWarp * kWarpsPerBlock, 0, stream>>>(
        p.const_data_ptr<scalar_t>(), ds.const_data_ptr<scalar_t>(), g.const_data_ptr<scalar_t>(),
        gp.data_ptr<scalar_t>(), gds.data_ptr<scalar_t>(), rows, n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {gp, gds};
}

}  // namespace

TORCH_LIBRARY_IMPL(winnow, CUDA, m) {
  m.impl("softmax_tangent", &softmax_tangent_cuda);
  m.impl("softmax_tangent_backward", &softmax_tangent_backward_cuda);
}

}  // namespace winnow::softmax

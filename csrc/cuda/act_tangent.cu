// CUDA launcher of act_tangent / act_tangent_backward (math in winnow/act_tangent.h): one
// grid-stride elementwise kernel each, on contiguous copies, in the dtype's op-math type.
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

#include "winnow/act_tangent.h"

namespace winnow::act {
namespace {

constexpr int kThreads = 256;

inline int blocks_for(int64_t n) {
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, c10::cuda::current_device()));
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t(sms) * 8)));
}

template <int K, typename scalar_t>
__global__ void forward_kernel(const scalar_t* __restrict__ z, const scalar_t* __restrict__ dz,
                               scalar_t* __restrict__ y, scalar_t* __restrict__ dy, int64_t n) {
  using opmath_t = at::opmath_type<scalar_t>;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    opmath_t yv, dyv;
    forward<K>(static_cast<opmath_t>(z[i]), static_cast<opmath_t>(dz[i]), yv, dyv);
    y[i] = static_cast<scalar_t>(yv);
    dy[i] = static_cast<scalar_t>(dyv);
  }
}

template <int K, typename scalar_t>
__global__ void backward_kernel(const scalar_t* __restrict__ z, const scalar_t* __restrict__ dz,
                                const scalar_t* __restrict__ gy, const scalar_t* __restrict__ gdy,
                                scalar_t* __restrict__ gz, scalar_t* __restrict__ gdz, int64_t n) {
  using opmath_t = at::opmath_type<scalar_t>;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    opmath_t gzv, gdzv;
    backward<K>(static_cast<opmath_t>(z[i]), static_cast<opmath_t>(dz[i]), static_cast<opmath_t>(gy[i]),
                static_cast<opmath_t>(gdy[i]), gzv, gdzv);
    gz[i] = static_cast<scalar_t>(gzv);
    gdz[i] = static_cast<scalar_t>(gdzv);
  }
}

std::tuple<at::Tensor, at::Tensor> act_tangent_cuda(const at::Tensor& z, const at::Tensor& dz, int64_t kind) {
  check("act_tangent", kind, {{"z", &z}, {"dz", &dz}});
  const c10::cuda::CUDAGuard guard(z.device());
  const at::Tensor zc = z.contiguous(), dzc = dz.contiguous();
  at::Tensor y = at::empty_like(zc), dy = at::empty_like(zc);
  const int64_t n = zc.numel();
  if (n == 0) return {y, dy};
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "act_tangent", [&] {
    WINNOW_DISPATCH_ACT(static_cast<int>(kind), [&] {
      forward_kernel<K, scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
          zc.const_data_ptr<scalar_t>(), dzc.const_data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
          dy.data_ptr<scalar_t>(), n);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {y, dy};
}

std::tuple<at::Tensor, at::Tensor> act_tangent_backward_cuda(const at::Tensor& z, const at::Tensor& dz,
                                                             const at::Tensor& gy, const at::Tensor& gdy,
                                                             int64_t kind) {
  check("act_tangent_backward", kind, {{"z", &z}, {"dz", &dz}, {"gy", &gy}, {"gdy", &gdy}});
  const c10::cuda::CUDAGuard guard(z.device());
  const at::Tensor zc = z.contiguous(), dzc = dz.contiguous(), gyc = gy.contiguous(), gdyc = gdy.contiguous();
  at::Tensor gz = at::empty_like(zc), gdz = at::empty_like(zc);
  const int64_t n = zc.numel();
  if (n == 0) return {gz, gdz};
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "act_tangent_backward", [&] {
    WINNOW_DISPATCH_ACT(static_cast<int>(kind), [&] {
      backward_kernel<K, scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
          zc.const_data_ptr<scalar_t>(), dzc.const_data_ptr<scalar_t>(), gyc.const_data_ptr<scalar_t>(),
          gdyc.const_data_ptr<scalar_t>(), gz.data_ptr<scalar_t>(), gdz.data_ptr<scalar_t>(), n);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {gz, gdz};
}

}  // namespace

TORCH_LIBRARY_IMPL(winnow, CUDA, m) {
  m.impl("act_tangent", &act_tangent_cuda);
  m.impl("act_tangent_backward", &act_tangent_backward_cuda);
}

}  // namespace winnow::act

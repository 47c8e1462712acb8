// CUDA launcher of importance_update (math in winnow/importance_update.h).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "multi_tensor.cuh"
#include "winnow/importance_update.h"

namespace winnow::importance {
namespace {

using cuda::for_chunk;
using cuda::load;
using cuda::ptr;
using cuda::store;
using cuda::TensorListMeta;

// The multi-tensor launches of one update: every parameter dtype gets its kernel instantiation,
// and launch<scalar_t, acc_t>(ptrs, numels) runs it over that dtype's tensors.
template <typename Slots, typename Launch>
void per_param_dtype(const std::vector<at::Tensor>& params, Slots&& slots, Launch&& launch) {
  cuda::per_dtype(params, [&](at::ScalarType dtype, const std::vector<size_t>& idx) {
    std::vector<std::array<void*, 5>> ptrs;
    std::vector<int64_t> numels;
    for (size_t i : idx) {
      ptrs.push_back(slots(i));
      numels.push_back(params[i].numel());
    }
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "importance_update", [&] {
      launch.template operator()<scalar_t, at::opmath_type<scalar_t>>(ptrs, numels);
    });
  });
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(cuda::kBlockThreads)
    adalora_kernel(const TensorListMeta<5> meta, const AdaloraCoeffs<acc_t> c) {
  const int t = cuda::tensor_of_block(meta, blockIdx.x);
  const auto* p = static_cast<const scalar_t*>(meta.ptr[0][t]);
  const auto* g = static_cast<const scalar_t*>(meta.ptr[1][t]);
  auto* ibar = static_cast<acc_t*>(meta.ptr[2][t]);
  auto* ubar = static_cast<acc_t*>(meta.ptr[3][t]);
  int skipped = 0;
  for_chunk(meta, t, [&](auto width, int64_t i) {
    constexpr int W = decltype(width)::value;
    const auto pv = load<W>(p + i);
    const auto gv = load<W>(g + i);
    auto ib = load<W>(ibar + i);
    auto ub = load<W>(ubar + i);
#pragma unroll
    for (int k = 0; k < W; ++k) {
      skipped += !adalora_update(static_cast<acc_t>(pv.v[k]), static_cast<acc_t>(gv.v[k]), ib.v[k], ub.v[k], c);
    }
    store<W>(ibar + i, ib);
    store<W>(ubar + i, ub);
  });
  cuda::add_skipped(static_cast<int64_t*>(meta.ptr[4][t]), skipped);
}

template <Exponent E, typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(cuda::kBlockThreads)
    id3_kernel(const TensorListMeta<5> meta, const Id3Coeffs<acc_t> c) {
  const int t = cuda::tensor_of_block(meta, blockIdx.x);
  const auto* p = static_cast<const scalar_t*>(meta.ptr[0][t]);
  const auto* g = static_cast<const scalar_t*>(meta.ptr[1][t]);
  auto* score = static_cast<acc_t*>(meta.ptr[2][t]);
  const auto* unmasked = static_cast<const bool*>(meta.ptr[3][t]);  // may be null
  int skipped = 0;
  for_chunk(meta, t, [&](auto width, int64_t i) {
    constexpr int W = decltype(width)::value;
    const auto pv = load<W>(p + i);
    const auto gv = load<W>(g + i);
    auto sv = load<W>(score + i);
    cuda::Vec<bool, W> skip{};
    if (unmasked != nullptr) skip = load<W>(unmasked + i);
#pragma unroll
    for (int k = 0; k < W; ++k) {
      if (!skip.v[k]) skipped += !id3_update<E>(static_cast<acc_t>(pv.v[k]), static_cast<acc_t>(gv.v[k]), sv.v[k], c);
    }
    store<W>(score + i, sv);
  });
  cuda::add_skipped(static_cast<int64_t*>(meta.ptr[4][t]), skipped);
}

void importance_update_adalora_cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avg_ipt,
                                    at::TensorList exp_avg_unc, double beta1, double beta2,
                                    const at::Tensor& nonfinite) {
  const UpdateInputs in = check_adalora(params, grads, exp_avg_ipt, exp_avg_unc, beta1, beta2, nonfinite);
  const c10::cuda::CUDAGuard guard(in.params[0].device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  auto slots = [&](size_t i) -> std::array<void*, 5> {
    return {ptr(in.params[i]), ptr(in.grads[i]), ptr(exp_avg_ipt[i]), ptr(exp_avg_unc[i]),
            nonfinite.data_ptr<int64_t>() + i};
  };
  per_param_dtype(in.params, slots, [&]<typename scalar_t, typename acc_t>(const auto& ptrs, const auto& numels) {
    const int s = sizeof(scalar_t), a = sizeof(acc_t);
    const auto coeffs = adalora_coeffs<acc_t>(beta1, beta2);
    cuda::launch_over<TensorListMeta<5>>(ptrs, numels, {s, s, a, a, 0}, [&](const TensorListMeta<5>& meta, int64_t blocks) {
      adalora_kernel<scalar_t, acc_t><<<blocks, cuda::kBlockThreads, 0, stream>>>(meta, coeffs);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

void importance_update_id3_cuda(at::TensorList params, at::TensorList grads, at::TensorList scores,
                                at::TensorList unmasked, double eps, double exponent, double beta,
                                const at::Tensor& nonfinite) {
  const UpdateInputs in = check_id3(params, grads, scores, unmasked, eps, exponent, beta, nonfinite);
  const c10::cuda::CUDAGuard guard(in.params[0].device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  auto slots = [&](size_t i) -> std::array<void*, 5> {
    return {ptr(in.params[i]), ptr(in.grads[i]), ptr(scores[i]), unmasked.empty() ? nullptr : ptr(unmasked[i]),
            nonfinite.data_ptr<int64_t>() + i};
  };
  per_param_dtype(in.params, slots, [&]<typename scalar_t, typename acc_t>(const auto& ptrs, const auto& numels) {
    const int s = sizeof(scalar_t), a = sizeof(acc_t);
    const auto coeffs = id3_coeffs<acc_t>(eps, exponent, beta);
    dispatch_exponent(exponent, [&](auto kind) {
      cuda::launch_over<TensorListMeta<5>>(ptrs, numels, {s, s, a, 1, 0}, [&](const TensorListMeta<5>& meta, int64_t blocks) {
        id3_kernel<decltype(kind)::value, scalar_t, acc_t><<<blocks, cuda::kBlockThreads, 0, stream>>>(meta, coeffs);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(winnow, CUDA, m) {
  m.impl("importance_update_adalora", &importance_update_adalora_cuda);
  m.impl("importance_update_id3", &importance_update_id3_cuda);
}

}  // namespace winnow::importance

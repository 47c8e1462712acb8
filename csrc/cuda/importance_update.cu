// CUDA launcher of importance_update (math in winnow/importance_update.h).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "multi_tensor.cuh"
#include "winnow/importance_update.h"

namespace winnow::importance {
namespace {

using cuda::for_chunk;
using cuda::load;
using cuda::store;
using cuda::TensorListMeta;

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

inline void* ptr(const at::Tensor& t) { return const_cast<void*>(t.const_data_ptr()); }

// Groups the tensors by parameter dtype (one kernel instantiation each) and hands every group
// to launch(dtype, ptrs, numels), with slots(i) the N kernel pointers of tensor i.
template <int N, typename Slots, typename Launch>
void per_dtype(const std::vector<at::Tensor>& params, Slots&& slots, Launch&& launch) {
  for (auto dtype : {at::kFloat, at::kBFloat16, at::kHalf, at::kDouble}) {
    std::vector<std::array<void*, N>> ptrs;
    std::vector<int64_t> numels;
    for (size_t i = 0; i < params.size(); ++i) {
      if (params[i].scalar_type() != dtype) continue;
      ptrs.push_back(slots(i));
      numels.push_back(params[i].numel());
    }
    if (!ptrs.empty()) launch(dtype, ptrs, numels);
  }
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
  per_dtype<5>(in.params, slots, [&](at::ScalarType dtype, const auto& ptrs, const auto& numels) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "importance_update_adalora", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const int s = sizeof(scalar_t), a = sizeof(acc_t);
      const auto coeffs = adalora_coeffs<acc_t>(beta1, beta2);
      cuda::launch_over<TensorListMeta<5>>(ptrs, numels, {s, s, a, a, 0}, [&](const TensorListMeta<5>& meta, int64_t blocks) {
        adalora_kernel<scalar_t, acc_t><<<blocks, cuda::kBlockThreads, 0, stream>>>(meta, coeffs);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
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
  per_dtype<5>(in.params, slots, [&](at::ScalarType dtype, const auto& ptrs, const auto& numels) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "importance_update_id3", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const int s = sizeof(scalar_t), a = sizeof(acc_t);
      const auto coeffs = id3_coeffs<acc_t>(eps, exponent, beta);
      dispatch_exponent(exponent, [&](auto kind) {
        cuda::launch_over<TensorListMeta<5>>(ptrs, numels, {s, s, a, 1, 0}, [&](const TensorListMeta<5>& meta, int64_t blocks) {
          id3_kernel<decltype(kind)::value, scalar_t, acc_t><<<blocks, cuda::kBlockThreads, 0, stream>>>(meta, coeffs);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
    });
  });
}

// ---- importance_score ----

template <typename acc_t>
__global__ void __launch_bounds__(cuda::kBlockThreads) score_kernel(const TensorListMeta<3> meta) {
  const int t = cuda::tensor_of_block(meta, blockIdx.x);
  const auto* a = static_cast<const acc_t*>(meta.ptr[0][t]);
  const auto* u = static_cast<const acc_t*>(meta.ptr[1][t]);
  auto* out = static_cast<acc_t*>(meta.ptr[2][t]);
  for_chunk(meta, t, [&](auto width, int64_t i) {
    constexpr int W = decltype(width)::value;
    const auto av = load<W>(a + i);
    const auto uv = load<W>(u + i);
    cuda::Vec<acc_t, W> o;
#pragma unroll
    for (int k = 0; k < W; ++k) o.v[k] = adalora_score(av.v[k], uv.v[k]);
    store<W>(out + i, o);
  });
}

// One block per output entry: the mean over `inner` scores at a + o*outer_stride + k*inner_stride,
// summed in double.
constexpr int kMaxMeanTensors = 64;
struct MeanMeta {
  const void* ipt[kMaxMeanTensors];
  const void* unc[kMaxMeanTensors];
  void* out[kMaxMeanTensors];
  int64_t inner[kMaxMeanTensors], outer_stride[kMaxMeanTensors], inner_stride[kMaxMeanTensors];
  int64_t first_block[kMaxMeanTensors + 1];
  int num_tensors;
};
static_assert(sizeof(MeanMeta) < 4000, "kernel argument too large");

template <typename acc_t>
__global__ void __launch_bounds__(cuda::kBlockThreads) score_mean_kernel(const MeanMeta meta) {
  int t = 0;
  while (t + 1 < meta.num_tensors && meta.first_block[t + 1] <= blockIdx.x) ++t;
  const int64_t o = blockIdx.x - meta.first_block[t];
  const auto* a = static_cast<const acc_t*>(meta.ipt[t]) + o * meta.outer_stride[t];
  const auto* u = static_cast<const acc_t*>(meta.unc[t]) + o * meta.outer_stride[t];
  double sum = 0.0;
  for (int64_t k = threadIdx.x; k < meta.inner[t]; k += blockDim.x) {
    const int64_t idx = k * meta.inner_stride[t];
    sum += static_cast<double>(adalora_score(a[idx], u[idx]));
  }
  __shared__ double partial[cuda::kBlockThreads];
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    static_cast<acc_t*>(meta.out[t])[o] =
        static_cast<acc_t>(meta.inner[t] > 0 ? partial[0] / static_cast<double>(meta.inner[t]) : NAN);
  }
}

std::vector<at::Tensor> importance_score_cuda(at::TensorList exp_avg_ipt, at::TensorList exp_avg_unc,
                                              at::IntArrayRef mean_dims) {
  check_score(exp_avg_ipt, exp_avg_unc, mean_dims);
  const c10::cuda::CUDAGuard guard(exp_avg_ipt[0].device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  std::vector<at::Tensor> out = score_outputs(exp_avg_ipt, mean_dims);
  for (auto dtype : {at::kFloat, at::kDouble}) {
    std::vector<size_t> idx;
    for (size_t i = 0; i < exp_avg_ipt.size(); ++i) {
      if (exp_avg_ipt[i].scalar_type() == dtype) idx.push_back(i);
    }
    if (idx.empty()) continue;
    AT_DISPATCH_FLOATING_TYPES(dtype, "importance_score", [&] {
      std::vector<std::array<void*, 3>> ptrs;
      std::vector<int64_t> numels;
      MeanMeta mean{};
      int64_t mean_blocks = 0;
      auto flush_mean = [&] {
        if (mean.num_tensors == 0) return;
        mean.first_block[mean.num_tensors] = mean_blocks;
        score_mean_kernel<scalar_t><<<mean_blocks, cuda::kBlockThreads, 0, stream>>>(mean);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        mean = MeanMeta{};
        mean_blocks = 0;
      };
      for (size_t i : idx) {
        const auto& a = exp_avg_ipt[i];
        if (mean_dims[i] == -1) {
          ptrs.push_back({ptr(a), ptr(exp_avg_unc[i]), out[i].data_ptr()});
          numels.push_back(a.numel());
          continue;
        }
        if (out[i].numel() == 0) continue;
        const int64_t rows = a.size(0), cols = a.size(1);
        const bool per_row = mean_dims[i] == 1;
        const int slot = mean.num_tensors++;
        mean.ipt[slot] = a.const_data_ptr();
        mean.unc[slot] = exp_avg_unc[i].const_data_ptr();
        mean.out[slot] = out[i].data_ptr();
        mean.inner[slot] = per_row ? cols : rows;
        mean.outer_stride[slot] = per_row ? cols : 1;
        mean.inner_stride[slot] = per_row ? 1 : cols;
        mean.first_block[slot] = mean_blocks;
        mean_blocks += out[i].numel();
        if (mean.num_tensors == kMaxMeanTensors) flush_mean();
      }
      flush_mean();
      const int a = sizeof(scalar_t);
      cuda::launch_over<TensorListMeta<3>>(ptrs, numels, {a, a, a}, [&](const TensorListMeta<3>& meta, int64_t blocks) {
        score_kernel<scalar_t><<<blocks, cuda::kBlockThreads, 0, stream>>>(meta);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(winnow, CUDA, m) {
  m.impl("importance_update_adalora", &importance_update_adalora_cuda);
  m.impl("importance_update_id3", &importance_update_id3_cuda);
  m.impl("importance_score", &importance_score_cuda);
}

}  // namespace winnow::importance
